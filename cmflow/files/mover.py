"""Stage a job's inputs into a work directory on its host, run it there, fetch its outputs verified.

One ``FileMover`` per run; the executor hands it a job attempt that declares
files (``attempt``) instead of calling the transport directly.

Over ssh almost nothing costs a new session. The job's own script (sent down
the slot's open shell) carries small inputs as base64 here-documents, creates
the work directory, links cached inputs, runs the command in a subshell there
and, after exit 0, prints each output's size and sha256 (and, when small, its
bytes in base64) on stdout after a random marker. The marker and what follows
are cut off the job's stdout here. Only large files take a helper session over
the master the transport already holds: an input uploaded once per host into a
content-addressed cache (``.cmflow/cache/<sha256>``, checked by hash on arrival
and on first use in a run, then hard-linked into each work directory), an
output streamed with ``cat``. Work directories are removed in batches, and only
after their outputs were verified here.

On this machine the same happens with file operations under the run directory.
"""
from __future__ import annotations

import asyncio
import base64
import glob
import hashlib
import os
import re
import secrets
import shlex
import shutil
import stat
import time
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Protocol

from ..transport import Helper, JobSpec, Outcome, Transport
from .spec import Input, JobFiles, Output, SpecError, check_relative
from .value import Files

INLINE_IN = 64 * 1024       # an input up to this size travels inside the job's script
INLINE_BUDGET = 96 * 1024   # ...and no more than this per job: the script is one argv string (Linux: 128 KiB)
INLINE_OUT = 1 << 20        # an output up to this size comes back on the job's stdout
_CHUNK = 1 << 20
REMOTE_ROOT = ".cmflow"     # under the host's workdir, else the remote home
STAGE_FAILED = 97           # exit status of a job whose inputs could not be placed


class Emit(Protocol):
    def __call__(self, state: str, sent: int = 0, fetched: int = 0) -> None: ...


@dataclass(frozen=True)
class FileInfo:
    name: str        # relative to the work directory (and to the job's results folder)
    path: str        # the local copy under results/
    size: int
    sha256: str


@dataclass(frozen=True)
class Moved:
    """What the data movement of one attempt came to."""

    files: Files | None = None          # fetched outputs in declared order; None when none are declared
    outputs: tuple[FileInfo, ...] = ()
    failure: str = ""                   # the job fails with this reason (missing output, full disk, ...)
    bytes_sent: int = 0
    bytes_fetched: int = 0
    kept: str = ""                      # a work directory left in place, "host:path"


class Lost(Exception):
    """A helper session died: the attempt fails over like a lost command."""


class JobFailure(Exception):
    """The attempt fails for a reason of its own (disk full, missing output)."""


# ------------------------------------------------------------------ hashing

def sha256_file(path: str | Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class _Digests:
    """size and sha256 of local files, computed once per (inode, size, mtime) in a run."""

    def __init__(self) -> None:
        self._memo: dict[tuple, tuple[int, str]] = {}

    async def of(self, path: str) -> tuple[int, str]:
        st = os.stat(path)
        key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        got = self._memo.get(key)
        if got is None:
            got = sha256_file(path) if st.st_size <= INLINE_IN else await asyncio.to_thread(sha256_file, path)
            self._memo[key] = got
        return got


# -------------------------------------------------------------- the mover

@dataclass(frozen=True)
class _Source:
    input: Input
    path: str      # local file
    size: int
    sha256: str


class FileMover:
    def __init__(self, run_dir: Path, keep_remote: bool = False, data_config: Any = None):
        self.run_dir = run_dir
        self.results = run_dir / "results"
        self.keep_remote = keep_remote
        self.data_config = data_config
        self.token = "CMFLOW_" + secrets.token_hex(16)
        self.run_key = f"{run_dir.resolve().name}-{secrets.token_hex(3)}"
        self._digests = _Digests()
        self._sides: dict[str, _Side] = {}
        self._data: dict[str, asyncio.Future[str]] = {}
        self._service: Any = None

    def side(self, transport: Transport) -> "_Side":
        side = self._sides.get(transport.host.name)
        if side is None:
            side = _ShellSide(self, transport) if hasattr(transport, "exec") else _LocalSide(self, transport)
            self._sides[transport.host.name] = side
        return side

    async def attempt(self, transport: Transport, spec: JobSpec, files: JobFiles, job_key: str,
                      emit: Emit) -> tuple[Outcome, Moved]:
        """Stage, run, fetch and verify one attempt of a job that declares files."""
        side = self.side(transport)
        start = time.time()
        emit("staging")
        try:
            sources = [await self._source(i) for i in files.inputs]
        except JobFailure as e:
            return Outcome(None, start=start, end=time.time()), Moved(failure=str(e))
        try:
            return await side.attempt(spec, files, sources, job_key, emit)
        except (OSError, JobFailure) as e:
            # a local disk that is full, a results folder that cannot be written: this job fails, the run goes on
            return Outcome(None, start=start, end=time.time()), Moved(failure=f"moving files failed: {e}")

    async def close(self) -> None:
        """Remove the work directories still queued for removal (before the transports close)."""
        for side in self._sides.values():
            await side.close()
        try:
            (self.results / ".partial").rmdir()
        except OSError:
            pass

    # ------------------------------------------------------------ sources
    async def _source(self, item: Input) -> _Source:
        path = await self._data_file(item.source[len("data:"):]) if item.is_data else item.source
        try:
            size, sha = await self._digests.of(path)
        except OSError as e:
            raise JobFailure(f"cannot read input {item.source}: {e.strerror}") from None
        return _Source(item, path, size, sha)

    async def _data_file(self, name: str) -> str:
        fut = self._data.get(name)
        if fut is None:
            fut = self._data[name] = asyncio.get_running_loop().create_future()
            try:
                fut.set_result(await asyncio.to_thread(self._download, name))
            except Exception as e:
                fut.set_exception(JobFailure(f"input data:{name}: {e}"))
        return await asyncio.shield(fut)

    def _data_service(self) -> Any:
        if self._service is None:
            from ..data.config import load_config
            from ..data.service import DataService

            self._service = DataService(self.data_config or load_config(None))
        return self._service

    def _download(self, name: str) -> str:
        folder = self.run_dir / "work" / ".data"
        folder.mkdir(parents=True, exist_ok=True)
        return str(self._data_service().get(name, folder / name, force=True))

    def publish(self, info: FileInfo, name: str) -> None:
        self._data_service().add(info.path, name=name, force=True)

    # ------------------------------------------------------------ results
    def partial_dir(self, job_key: str) -> Path:
        d = self.results / ".partial" / f"{job_key}.{secrets.token_hex(4)}"
        d.mkdir(parents=True)
        return d

    def commit(self, partial: Path, job_key: str, infos: list[FileInfo]) -> list[FileInfo]:
        """Move a verified attempt's files into results/<job>/ in one rename."""
        final = self.results / job_key
        if final.exists():
            shutil.rmtree(final)
        os.rename(partial, final)
        return [replace(i, path=str((final / i.name).resolve())) for i in infos]

    async def finish_outputs(self, files: JobFiles, partial: Path, job_key: str,
                             found: list[tuple[int, FileInfo]], missing: list[str], bad: list[str],
                             sent: int = 0, fetched: int = 0) -> Moved:
        """Check what came back against what was declared; commit to results/; publish."""
        if bad or missing:
            shutil.rmtree(partial, ignore_errors=True)
            why = []
            if bad:
                why.append("output " + ", ".join(f"'{b}'" for b in bad)
                           + " is a symlink or leaves the work directory; not fetched")
            if missing:
                why.append("declared output " + ", ".join(f"'{m}'" for m in missing)
                           + (" is" if len(missing) == 1 else " are") + " missing")
            return Moved(failure="; ".join(why), bytes_sent=sent, bytes_fetched=fetched)
        infos: list[FileInfo] = []
        seen: set[str] = set()
        for _, info in sorted(found, key=lambda p: p[0]):   # declared order; stable within one pattern
            if info.name not in seen:
                seen.add(info.name)
                infos.append(info)
        committed = await asyncio.to_thread(self.commit, partial, job_key, infos)
        by_name = {i.name: i for i in committed}
        for out in files.outputs:
            if out.publish:
                try:
                    await asyncio.to_thread(self.publish, by_name[out.pattern], out.publish)
                except Exception as e:
                    return Moved(failure=f"publishing '{out.pattern}' as data:{out.publish} failed: {e}",
                                 bytes_sent=sent, bytes_fetched=fetched)
        return Moved(Files(i.path for i in committed), tuple(committed), bytes_sent=sent, bytes_fetched=fetched)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:80]


class _Side(Protocol):
    async def attempt(self, spec: JobSpec, files: JobFiles, sources: list[_Source], job_key: str,
                      emit: Emit) -> tuple[Outcome, Moved]: ...

    async def close(self) -> None: ...


# ------------------------------------------------------------ this machine

class _LocalSide:
    """Work directories under the run directory; inputs hard-linked from a per-run cache."""

    def __init__(self, mover: FileMover, transport: Transport):
        self.mover = mover
        self.transport = transport
        self.work = mover.run_dir / "work"
        self.cache = self.work / ".cache"
        self._cached: dict[str, asyncio.Future[None]] = {}

    async def attempt(self, spec: JobSpec, files: JobFiles, sources: list[_Source], job_key: str,
                      emit: Emit) -> tuple[Outcome, Moved]:
        m = self.mover
        wd = self.work / f"{job_key}.{secrets.token_hex(3)}"
        start = time.time()
        try:
            wd.mkdir(parents=True)
            for s in sources:
                await self._place(s, wd)
        except OSError as e:
            shutil.rmtree(wd, ignore_errors=True)
            return Outcome(None, start=start, end=time.time()), \
                Moved(failure=f"cannot stage inputs in {wd}: {e.strerror or e}")
        emit("running")
        outcome = await self.transport.run(replace(spec, command=f"cd -- {shlex.quote(str(wd))} || exit 97\n"
                                                                 f"{spec.command}"))
        if not outcome.ok:
            return outcome, Moved(kept=str(wd))
        moved = Moved()
        if files.outputs:
            emit("fetching")
            partial, found, missing, bad = await asyncio.to_thread(self._fetch, files, wd, job_key)
            moved = await m.finish_outputs(files, partial, job_key, found, missing, bad,
                                           fetched=sum(i.size for _, i in found))
            if moved.failure:
                return outcome, replace(moved, kept=str(wd))
        if m.keep_remote:
            return outcome, replace(moved, kept=str(wd))
        await asyncio.to_thread(shutil.rmtree, wd, True)
        return outcome, moved

    async def _place(self, s: _Source, wd: Path) -> None:
        fut = self._cached.get(s.sha256)
        if fut is None:
            fut = self._cached[s.sha256] = asyncio.get_running_loop().create_future()
            try:
                await asyncio.to_thread(self._to_cache, s)
                fut.set_result(None)
            except OSError as e:
                fut.set_exception(e)
        await asyncio.shield(fut)
        dest = wd / s.input.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.cache / s.sha256, dest)
        except OSError:
            shutil.copyfile(self.cache / s.sha256, dest)

    def _to_cache(self, s: _Source) -> None:
        self.cache.mkdir(parents=True, exist_ok=True)
        target = self.cache / s.sha256
        if target.exists():
            return
        tmp = self.cache / f".{s.sha256}.{secrets.token_hex(3)}"
        shutil.copyfile(s.path, tmp)
        size, sha = sha256_file(tmp)
        if (size, sha) != (s.size, s.sha256):
            tmp.unlink()
            raise OSError(0, f"input {s.input.source} changed while it was being staged")
        os.chmod(tmp, 0o444)     # shared by every job that uses it: read only
        os.replace(tmp, target)

    def _fetch(self, files: JobFiles, wd: Path, job_key: str
               ) -> tuple[Path, list[tuple[int, FileInfo]], list[str], list[str]]:
        partial = self.mover.partial_dir(job_key)
        found: list[tuple[int, FileInfo]] = []
        missing: list[str] = []
        bad: list[str] = []
        real_wd = os.path.realpath(wd)
        for index, o in enumerate(files.outputs):
            names = sorted(glob.glob(o.pattern, root_dir=wd)) if o.is_glob else \
                ([o.pattern] if os.path.lexists(wd / o.pattern) else [])
            if not names:
                missing.append(o.pattern)
            for name in names:
                for rel in _walk(wd, name):
                    src = wd / rel
                    if os.path.islink(src) or not os.path.realpath(src).startswith(real_wd + os.sep):
                        bad.append(rel)
                    elif not any(rel == i.name for _, i in found):
                        found.append((index, _copy_verified(src, partial / rel, rel)))
        return partial, found, missing, bad

    async def close(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.cache, True)
        try:
            self.work.rmdir()   # gone unless a failed (or --keep-remote) job's work dir is kept in it
        except OSError:
            pass


def _walk(wd: Path, name: str) -> list[str]:
    full = wd / name
    if full.is_dir() and not full.is_symlink():
        return sorted(str(PurePosixPath(*p.relative_to(wd).parts)) for p in full.rglob("*")
                      if p.is_file() or p.is_symlink())
    return [name]


def _copy_verified(src: Path, dest: Path, name: str) -> FileInfo:
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    size = 0
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f, open(dest, "xb") as out:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
            out.write(chunk)
    got = sha256_file(dest)
    if got != (size, h.hexdigest()):
        raise OSError(0, f"copy of {name} does not match its source")
    return FileInfo(name, str(dest), size, got[1])


# ------------------------------------------------------------- over ssh

# Sent after the job's command when it exited 0: one line per output (F
# inline, R fetched with a helper, M missing, L a symlink or under one), F
# followed by base64 and ".". Only builtins but for wc, sha256sum, base64:
# the symlink check walks the path's folders with `[ -L ]`, no subshell.
_EMIT = r"""
__cmf_safe() {
  __cmf_p=; __cmf_q=$1
  while :; do
    case $__cmf_q in */*) ;; *) return 0;; esac
    __cmf_p=$__cmf_p${__cmf_q%%/*}; __cmf_q=${__cmf_q#*/}
    [ -L "$__cmf_p" ] && return 1
    __cmf_p=$__cmf_p/
  done
}
__cmf_file() {
  if [ -L "$1" ] || ! __cmf_safe "$1"; then printf 'L %s\n' "$1"; return; fi
  __cmf_s=$(wc -c < "$1") || { printf 'M %s\n' "$1"; return; }
  __cmf_h=$(sha256sum < "$1"); __cmf_h=${__cmf_h%% *}
  if [ $((__cmf_s)) -le __INLINE__ ]; then
    printf 'F %s %s %s %s\n' "$2" $((__cmf_s)) "$__cmf_h" "$1"; base64 < "$1"; printf '.\n'
  else printf 'R %s %s %s %s\n' "$2" $((__cmf_s)) "$__cmf_h" "$1"; fi
}
__cmf_out() {
  if [ -L "$1" ]; then printf 'L %s\n' "$1"
  elif [ -d "$1" ]; then find "./$1" \( -type f -o -type l \) -print | LC_ALL=C sort | while IFS= read -r __cmf_g; do __cmf_file "${__cmf_g#./}" "$2"; done
  elif [ -f "$1" ]; then __cmf_file "$1" "$2"
  else printf 'M %s\n' "$1"; fi
}
"""


def _as_shell_text(raw: bytes) -> str | None:
    """The bytes as one single-quoted shell word, if they can be (UTF-8 text without NUL), else None."""
    if b"\0" in raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "'" + text.replace("'", "'\\''") + "'"


def glob_word(pattern: str) -> str:
    """A pattern as a shell word: glob characters stay active, everything else is quoted."""
    parts = re.split(r"([*?]|\[[^]/]*\])", pattern)
    return "".join(p if i % 2 else (shlex.quote(p) if p else "") for i, p in enumerate(parts))


def _shell_base(workdir: str | None) -> str:
    """The folder (as a shell word) the slot shells start in: the host's workdir, else home."""
    if not workdir:
        return '"$HOME"'
    return '"$HOME"' + shlex.quote(workdir[1:]) if workdir.startswith("~") else shlex.quote(workdir)


class _ShellSide:
    """A host reached over ssh: the job's script stages and reports; helpers move large files."""

    def __init__(self, mover: FileMover, transport: Any):
        self.mover = mover
        self.transport = transport
        self.host = transport.host
        self.base = _shell_base(self.host.workdir)
        self.run_root = f"{REMOTE_ROOT}/work/{mover.run_key}"
        self._cached: dict[str, asyncio.Future[None]] = {}
        self._trash: list[str] = []
        self._used = False

    def where(self, wd: str) -> str:
        base = self.host.workdir or "~"
        return f"{self.host.name}:{base.rstrip('/')}/{wd}"

    async def _exec(self, script: str, stdin: int | None = None, stdout: int | None = None) -> Helper:
        h = await self.transport.exec(f"cd {self.base} || exit 97\n{script}", stdin=stdin, stdout=stdout)
        if h.exit_status is None:
            raise Lost(h.stderr.strip() or f"session to {self.host.name} lost")
        return h

    async def attempt(self, spec: JobSpec, files: JobFiles, sources: list[_Source], job_key: str,
                      emit: Emit) -> tuple[Outcome, Moved]:
        m = self.mover
        start = time.time()
        wd = f"{self.run_root}/{job_key}.{secrets.token_hex(3)}"
        self._used = True
        inline: list[_Source] = []
        budget = INLINE_BUDGET
        sent = 0
        try:
            for s in sources:
                if s.size <= INLINE_IN and s.size * 4 // 3 + 64 <= budget:
                    inline.append(s)
                    budget -= s.size * 4 // 3 + 64
                else:
                    sent += await self._ensure_cached(s)
        except Lost as e:
            return Outcome(None, start=start, end=time.time(), connection_failed=True,
                           message=f"staging to {self.host.name}: {e}"), Moved(bytes_sent=sent)
        except JobFailure as e:
            return Outcome(None, start=start, end=time.time()), Moved(failure=str(e), bytes_sent=sent)
        script, inline_bytes = self._script(spec.command, wd, files, sources, {id(s) for s in inline})
        sent += inline_bytes
        emit("running", sent)
        outcome = await self.transport.run(replace(spec, command=script))
        payload, size = _cut_payload(spec.stdout, m.token, outcome.stdout_bytes)
        outcome = replace(outcome, stdout_bytes=size)
        kept = self.where(wd)
        if payload is not None and payload.startswith(b"STAGE"):
            why = payload[5:].decode("utf-8", "replace").strip()
            return replace(outcome, exit_status=STAGE_FAILED), Moved(
                failure=f"cannot place inputs on {self.host.name}: {why} (is its disk full?)",
                bytes_sent=sent, kept=kept)
        if not outcome.ok:
            return outcome, Moved(bytes_sent=sent, kept=kept if not outcome.connection_failed else "")
        moved = Moved(bytes_sent=sent)
        if files.outputs:
            emit("fetching", sent)
            try:
                moved = await self._fetch(files, wd, job_key, payload, sent, emit)
            except Lost as e:
                return replace(outcome, connection_failed=True, exit_status=None,
                               message=f"fetching from {self.host.name}: {e}"), Moved(bytes_sent=sent)
            if moved.failure:
                return outcome, replace(moved, kept=kept)
        if m.keep_remote:
            return outcome, replace(moved, kept=kept)
        self._remove(wd)
        return outcome, moved

    # ------------------------------------------------------------ staging
    def _script(self, command: str, wd: str, files: JobFiles, sources: list[_Source], inline: set[int]
                ) -> tuple[str, int]:
        t = self.mover.token
        q = shlex.quote
        lines = []
        if self._trash:
            # work dirs verified since the last job here go now, in this job's own script: no session of their own
            batch, self._trash = self._trash, []
            lines.append("rm -rf -- " + " ".join(q(w) for w in batch))
        dirs = sorted({str(PurePosixPath(s.input.dest).parent) for s in sources} - {"."})
        lines += [f"__cmf_b=$PWD; mkdir -p -- {' '.join(q(p) for p in [wd, *(wd + '/' + d for d in dirs)])} "
                  f"&& cd -- {q(wd)} || "
                  f"{{ printf '\\n%s STAGE cannot create %s\\n' {t} {q(wd)}; exit {STAGE_FAILED}; }}",
                  f"__cmf_fail() {{ printf '\\n%s STAGE cannot write %s\\n' {t} \"$1\"; exit {STAGE_FAILED}; }}"]
        sent = 0
        for s in sources:
            dest = q(s.input.dest)
            if id(s) in inline:
                with open(s.path, "rb") as f:
                    raw = f.read()
                text = _as_shell_text(raw)
                if text is not None:   # printf is a builtin: no process for the common text input
                    sent += len(text.encode())
                    lines.append(f"printf %s {text} > {dest} || __cmf_fail {dest}")
                    continue
                data = base64.encodebytes(raw).decode()
                sent += len(data)
                lines.append(f"base64 -d > {dest} <<'CMFLOW_EOF' || __cmf_fail {dest}\n{data}CMFLOW_EOF")
            else:
                c = f'"$__cmf_b"/{REMOTE_ROOT}/cache/{s.sha256}'
                # `--`: an input may be named -x
                lines.append(f"ln -f -- {c} {dest} 2>/dev/null || cp -- {c} {dest} || __cmf_fail {dest}")
        lines.append(f"(\n{command}\n) </dev/null")
        if files.outputs:
            lines.append("__cmf_x=$?; [ $__cmf_x -eq 0 ] || exit $__cmf_x")
            lines.append(_EMIT.replace("__INLINE__", str(INLINE_OUT)))
            lines.append(f"printf '\\n%s FILES\\n' {t}")
            for i, o in enumerate(files.outputs):
                if o.is_glob:
                    lines.append(f'for __cmf_p in {glob_word(o.pattern)}; do __cmf_out "$__cmf_p" {i}; done')
                else:
                    lines.append(f"__cmf_out {q(o.pattern)} {i}")
            lines.append("exit 0")
        return "\n".join(lines) + "\n", sent

    async def _ensure_cached(self, s: _Source) -> int:
        """Put one input into the host's cache unless it is there; return the bytes sent."""
        fut = self._cached.get(s.sha256)
        if fut is not None:
            await asyncio.shield(fut)
            return 0
        fut = self._cached[s.sha256] = asyncio.get_running_loop().create_future()
        try:
            sent = await self._upload(s)
        except BaseException as e:
            del self._cached[s.sha256]   # the next job tries again (perhaps over a new master)
            fut.set_exception(e if isinstance(e, Exception) else Lost("cancelled"))
            fut.exception()
            raise
        fut.set_result(None)
        return sent

    async def _upload(self, s: _Source) -> int:
        f = f"{REMOTE_ROOT}/cache/{s.sha256}"
        # first use in this run: what is there must still hash to its name
        check = await self._exec(f'if [ -f {f} ]; then h=$(sha256sum < {f}); [ "${{h%% *}}" = {s.sha256} ] '
                                 f'&& {{ echo have; exit 0; }}; rm -f {f}; fi; echo need')
        if check.stdout.strip() == b"have":
            return 0
        script = (f"mkdir -p {REMOTE_ROOT}/cache && t=$(mktemp {REMOTE_ROOT}/cache/.up.XXXXXX) || exit 3\n"
                  f'cat > "$t" && h=$(sha256sum < "$t") && [ "${{h%% *}}" = {s.sha256} ] && chmod 444 "$t" '
                  f'&& mv -f "$t" {f} && exit 0\n'
                  f'rm -f "$t"; exit 3')
        fd = os.open(s.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            h = await self._exec(script, stdin=fd)
        finally:
            os.close(fd)
        if h.exit_status != 0:
            err = h.stderr.strip().splitlines()[-1] if h.stderr.strip() else "its hash did not match"
            raise JobFailure(f"cannot place input {s.input.source} on {self.host.name}: {err}")
        return s.size

    # ------------------------------------------------------------ fetching
    async def _fetch(self, files: JobFiles, wd: str, job_key: str, payload: bytes | None, sent: int,
                     emit: Emit) -> Moved:
        if payload is None or not payload.startswith(b"FILES\n"):
            return Moved(failure="the job's report of its outputs is missing (its stdout was cut short)",
                         bytes_sent=sent)
        partial = await asyncio.to_thread(self.mover.partial_dir, job_key)
        found: list[tuple[int, FileInfo]] = []
        missing: list[str] = []
        bad: list[str] = []
        fetched = 0
        try:
            for kind, index, size, sha, name, data in _entries(payload[6:]):
                if kind == "M":
                    missing.append(name)
                    continue
                try:
                    name = check_relative(name, "output")
                except SpecError:
                    kind = "L"
                if kind == "L":
                    bad.append(name)
                    continue
                if any(name == i.name for _, i in found):
                    continue   # named twice (a file and its folder): fetched once
                dest = partial / name
                await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
                if kind == "F":
                    assert data is not None
                    raw = base64.b64decode(data)
                    with open(dest, "xb") as out:
                        out.write(raw)
                else:
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
                    try:
                        h = await self._exec(f"cat -- {shlex.quote(wd + '/' + name)}", stdout=fd)
                    finally:
                        os.close(fd)
                    if h.exit_status != 0:
                        raise JobFailure(f"cannot read output '{name}' on {self.host.name}: {h.stderr.strip()}")
                got = await asyncio.to_thread(sha256_file, dest) if size > INLINE_IN else sha256_file(dest)
                if got != (size, sha):
                    raise JobFailure(f"output '{name}' arrived damaged: {got[0]} bytes sha256 {got[1][:12]}…, "
                                     f"sent {size} bytes sha256 {sha[:12]}…")
                fetched += size
                emit("fetching", sent, fetched)
                found.append((index, FileInfo(name, str(dest), size, sha)))
        except (JobFailure, ValueError, OSError) as e:
            shutil.rmtree(partial, ignore_errors=True)
            return Moved(failure=str(e) if isinstance(e, JobFailure) else f"bad output report: {e}",
                         bytes_sent=sent, bytes_fetched=fetched)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return await self.mover.finish_outputs(files, partial, job_key, found, missing, bad, sent, fetched)

    # ------------------------------------------------------------ cleanup
    def _remove(self, wd: str) -> None:
        # removed by the next job's script on this host, or by one helper when the run ends
        self._trash.append(wd)

    async def _sweep(self) -> None:
        while self._trash:
            batch, self._trash = self._trash, []
            try:
                await self._exec("rm -rf -- " + " ".join(shlex.quote(w) for w in batch))
            except Lost:
                return   # the host is gone; its work dirs with it, for all we can do

    async def close(self) -> None:
        await self._sweep()
        if self._used and not self.mover.keep_remote:
            try:   # the run's folder goes if no failed job's work dir is kept in it
                await self._exec(f"rmdir {shlex.quote(self.run_root)} {REMOTE_ROOT}/work 2>/dev/null; exit 0")
            except Lost:
                pass


def _cut_payload(stdout: Path, token: str, size: int) -> tuple[bytes | None, int]:
    """Split what the job script appended after the marker off the job's stdout file."""
    if not size:
        return None, 0
    marker = f"\n{token} ".encode()
    with open(stdout, "rb+") as f:
        window = 1 << 16
        while True:
            start = max(size - window, 0)
            f.seek(start)
            tail = f.read()
            i = tail.rfind(marker)
            if i >= 0 or start == 0:
                break
            window *= 4
        if i < 0:
            return None, size
        cut = start + i
        payload = tail[i + len(marker):]
        f.truncate(cut)
    if cut == 0:
        os.unlink(stdout)     # an empty output leaves no file
    return payload, cut


def _entries(body: bytes):
    """(kind, output index, size, sha256, name, base64 data) for each line of the outputs report."""
    lines = iter(body.split(b"\n"))
    for raw in lines:
        if not raw:
            continue
        line = raw.decode("utf-8", "surrogateescape")
        kind, _, rest = line.partition(" ")
        if kind in ("M", "L"):
            yield kind, -1, 0, "", rest, None
            continue
        if kind not in ("F", "R"):
            raise ValueError(f"unexpected line {line[:60]!r}")
        index, size, sha, name = rest.split(" ", 3)
        data = None
        if kind == "F":
            chunks = []
            for piece in lines:
                if piece == b".":
                    break
                chunks.append(piece)
            else:
                raise ValueError(f"output {name!r} cut short")
            data = b"".join(chunks)
        yield kind, int(index), int(size), sha, name, data
