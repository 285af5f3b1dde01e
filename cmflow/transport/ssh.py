"""ssh transport: the system OpenSSH client, persistent remote shells, one master per 8 slots.

Why it is fast: a new ssh connection costs ~200 ms of CPU; a job sent down a
shell that is already open costs well under a millisecond. So each host gets
``ceil(slots / SESSIONS_PER_MASTER)`` ControlMaster connections, and each slot
one long-lived ``sh`` session multiplexed over a master. A job goes down the
slot's stdin as

    sh -c '<command>' </dev/null; printf '\\n<TOKEN> %d\\n' "$?"; printf '\\n<TOKEN>\\n' >&2

and its stdout and stderr are copied to the run directory up to the framing
lines. TOKEN is 128 random bits per transport: a job cannot print it by
accident, and it appears in no process's argv (``printf`` is a shell builtin).

Limits of a stock sshd: ``MaxSessions 10`` channels per connection (we use at
most 8 slots per master, leaving room for the kill helper) and ``MaxStartups
10:30:100`` unauthenticated connections (masters of one host are opened one
at a time).

Remote cleanup: without a pty sshd does not pass a hangup on, so killing the
local client leaves the job running. Each slot shell reports its pid when it
starts; to kill a job we open a short session over the master that stops and
kills every descendant of that shell (found with POSIX ``ps``), leaving the
slot shell itself ready for the next job.
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from ..hosts import Host
from . import ConnectionLost, Helper, JobSpec, Outcome
from .output import StreamedOutput

SESSIONS_PER_MASTER = 8
CONNECT_TIMEOUT = 10
KILL_WAIT = 10.0          # seconds to wait for a killed job's framing line
_CHUNK = 1 << 16

# Kill every descendant of the slot shell $1: stop them all first (twice, to
# catch children forked meanwhile) so none can fork again, then TERM, wake,
# and KILL what is left. POSIX sh and ps only.
KILL_SCRIPT = r"""
s=$1
tree() { ps -A -o pid= -o ppid= | { all=$(cat); walk() { for k in $(printf '%s\n' "$all" | while read -r p pp; do [ "$pp" = "$1" ] && echo "$p"; done); do echo "$k"; walk "$k"; done; }; walk "$s"; }; }
p=$(tree); [ -n "$p" ] && kill -STOP $p 2>/dev/null
p=$(tree); [ -n "$p" ] || exit 0
kill -STOP $p 2>/dev/null; kill -TERM $p 2>/dev/null; kill -CONT $p 2>/dev/null
i=0; while [ $i -lt 10 ]; do p=$(tree); [ -n "$p" ] || exit 0; sleep 0.1; i=$((i+1)); done
kill -KILL $p 2>/dev/null; exit 0
"""


def classify_ssh_error(stderr: str, host: Host) -> str:
    """One line that says why ssh could not connect, with the fix where there is one."""
    text = stderr.strip()
    low = text.lower()
    if "host key verification failed" in low or "no ed25519 host key is known" in low or \
            "host key for" in low and "not known" in low or "remote host identification has changed" in low:
        changed = "changed" in low
        return (f"host key of {host.name} {'has CHANGED' if changed else 'is not known'}; check it, then run "
                f"`cmflow hosts trust {host.name}`")
    if "permission denied" in low:
        return f"authentication failed for {host.user + '@' if host.user else ''}{host.hostname}"
    if "timed out" in low:
        return f"connection to {host.hostname} timed out"
    if "connection refused" in low:
        return f"connection to {host.hostname} refused"
    if "could not resolve" in low:
        return f"cannot resolve host name {host.hostname}"
    last = text.splitlines()[-1] if text else "ssh exited with status 255"
    return last


class WorkdirError(Exception):
    """The slot shell could not enter the host's workdir: the job fails, the host is not down."""


def workdir_word(wd: str) -> str:
    """The workdir as one shell word: quoted, with a leading ``~`` or ``~user`` left for the shell."""
    m = re.fullmatch(r"~([A-Za-z0-9_][A-Za-z0-9_.\-]*)?(/.*)?", wd, re.S)
    if m is None:
        return shlex.quote(wd)
    rest = (m[2] or "/")[1:]
    head = f"~{m[1]}/" if m[1] else '"$HOME"/'
    return head + (shlex.quote(rest) if rest else "")


def ssh_base_argv(host: Host, ssh_config: str | None, connect_timeout: float = CONNECT_TIMEOUT) -> list[str]:
    """ssh options for a host: the inventory's settings, never a shell; host keys stay strict."""
    argv = ["ssh"]
    ssh_config = host.ssh_config or ssh_config     # an included inventory's hosts keep their own config
    if ssh_config:
        argv += ["-F", ssh_config]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout)}",
             "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3", "-T"]
    if host.port:
        argv += ["-p", str(host.port)]
    if host.user:
        argv += ["-l", host.user]
    if host.identity:
        argv += ["-i", host.identity, "-o", "IdentitiesOnly=yes"]
    for opt in host.ssh_options:
        argv += ["-o", opt]
    return argv


@dataclass(eq=False)
class _Slot:
    proc: asyncio.subprocess.Process
    pid: int                 # the remote slot shell's pid
    master: int              # index of the master connection it rides on
    path: str                # that master's ControlPath


class SshTransport:
    def __init__(self, host: Host, ssh_config: str | None = None, connect_timeout: float = CONNECT_TIMEOUT):
        self.host = host
        self.base = ssh_base_argv(host, ssh_config, connect_timeout)
        self.token = "CMFLOW_" + secrets.token_hex(16)
        self._out_marker = ("\n" + self.token + " ").encode()
        self._err_marker = ("\n" + self.token + "\n").encode()
        self._dir: str | None = None
        self._n_masters = max(1, -(-host.slots // SESSIONS_PER_MASTER))
        self._masters: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._paths: list[str] = []
        self._sessions: Counter[int] = Counter()
        self._master_lock = asyncio.Lock()   # one new connection at a time per host (MaxStartups)
        self._idle: list[_Slot] = []
        self._all: set[_Slot] = set()
        self._closed = False
        self._helper_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------ connections
    def _new_control_path(self, index: int) -> str:
        if self._dir is None:
            # short and private: unix socket paths are limited to ~107 bytes
            self._dir = tempfile.mkdtemp(prefix="cmf-")
        # a fresh path per (re)connection: a dead master's stale socket never blocks a new one
        path = os.path.join(self._dir, f"m{index}.{len(self._paths)}")
        self._paths.append(path)
        return path

    def _mux(self, path: str) -> list[str]:
        return ["-o", "ControlMaster=no", "-o", f"ControlPath={path}"]

    async def _master(self, index: int) -> str:
        entry = self._masters.get(index)
        if entry is not None and (not entry[1].done() or entry[1].exception() is None):
            await asyncio.shield(entry[1])
            return entry[0]
        path = self._new_control_path(index)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._masters[index] = (path, fut)
        try:
            async with self._master_lock:
                await self._start_master(path)
        except BaseException as e:
            fut.set_exception(e if isinstance(e, Exception) else ConnectionLost("cancelled"))
            fut.exception()  # mark retrieved
            raise
        fut.set_result(None)
        return path

    def _forget_master(self, index: int, path: str) -> None:
        if self._masters.get(index, ("",))[0] == path:
            del self._masters[index]

    async def _start_master(self, path: str) -> None:
        # -f: fork to the background once authenticated, so our child's exit is
        # the "ready" signal; ControlPersist bounds an orphan's life if we die.
        argv = [*self.base, "-o", "ControlMaster=yes", "-o", f"ControlPath={path}", "-o", "ControlPersist=60",
                "-N", "-f", "--", self.host.hostname]
        try:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise ConnectionLost("no ssh client on this machine (install openssh-client)") from None
        try:
            _, err = await proc.communicate()
        except BaseException:
            await _kill(proc)   # cancelled while connecting: no half-made master left behind
            raise
        if proc.returncode != 0:
            raise ConnectionLost(classify_ssh_error(err.decode("utf-8", "replace"), self.host))

    async def _open_slot(self) -> _Slot:
        # the master with the fewest sessions; never more than 8 on one connection
        index = min(range(self._n_masters), key=lambda i: self._sessions[i])
        self._sessions[index] += 1
        path = ""
        proc: asyncio.subprocess.Process | None = None
        try:
            path = await self._master(index)
            init = self._init_script()
            proc = await asyncio.create_subprocess_exec(
                *self.base, *self._mux(path), "--", self.host.hostname, "sh",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True, limit=_CHUNK)
            assert proc.stdin and proc.stdout
            proc.stdin.write(init.encode())
            try:
                line = await proc.stdout.readline()
            except (ConnectionError, asyncio.LimitOverrunError):
                line = b""
            parts = line.decode("utf-8", "replace").split()
            if len(parts) == 2 and parts[0] == self.token and parts[1] == "cd-failed":
                why = (await _drain(proc)).strip().splitlines()
                raise WorkdirError(f"cannot enter workdir {self.host.workdir!r} on {self.host.name}"
                                   + (f": {why[-1][:200]}" if why else ""))
            if len(parts) != 2 or parts[0] != self.token:
                err = await _drain(proc)
                raise ConnectionLost(classify_ssh_error(err, self.host) if err else
                                     f"remote shell on {self.host.name} did not start")
            slot = _Slot(proc, int(parts[1]), index, path)
            self._all.add(slot)
            return slot
        except BaseException as e:
            self._sessions[index] -= 1
            if path and not isinstance(e, asyncio.CancelledError):
                self._forget_master(index, path)
            if proc is not None and proc.returncode is None:
                await asyncio.shield(_kill(proc))
            raise

    def _init_script(self) -> str:
        lines = []
        for k, v in self.host.env:
            lines.append(f"export {k}={shlex.quote(v)}")
        if self.host.workdir:
            # the workdir is never a shell word of its own: only its quoted form reaches
            # the shell; a failure is reported on the framing line, not as ssh's error
            lines.append(f"cd -- {workdir_word(self.host.workdir)} || "
                         f"{{ printf '%s cd-failed\\n' {self.token}; exit 97; }}")
        lines.append(f"printf '%s %s\\n' {self.token} $$")
        return "\n".join(lines) + "\n"

    async def _discard(self, slot: _Slot) -> None:
        if slot in self._all:
            self._all.discard(slot)
            self._sessions[slot.master] -= 1
        await _kill(slot.proc)

    # ------------------------------------------------------------------ jobs
    async def run(self, spec: JobSpec) -> Outcome:
        start = time.time()
        try:
            slot = self._idle.pop() if self._idle else await self._open_slot()
        except WorkdirError as e:
            return Outcome(None, start=start, end=time.time(), message=str(e))
        except ConnectionLost as e:
            return Outcome(None, start=start, end=time.time(), connection_failed=True, message=str(e))
        start = time.time()  # the job's own time starts once it has a session
        proc = slot.proc
        assert proc.stdin and proc.stdout and proc.stderr
        script = (f"sh -c {shlex.quote(spec.command)} </dev/null; printf '\\n%s %d\\n' {self.token} \"$?\"; "
                  f"printf '\\n%s\\n' {self.token} >&2\n")
        out, err = StreamedOutput(spec.stdout), StreamedOutput(spec.stderr)
        reusable = False
        try:
            proc.stdin.write(script.encode())
            waiting = asyncio.ensure_future(self._collect(proc, out, err))
            try:
                status = await asyncio.wait_for(asyncio.shield(waiting), spec.timeout)
            except asyncio.TimeoutError:
                await self._kill_remote(slot)
                try:
                    await asyncio.wait_for(waiting, KILL_WAIT)
                    reusable = True
                except (asyncio.TimeoutError, ConnectionLost, ConnectionError):
                    pass
                return Outcome(None, 9, start, time.time(), timed_out=True, stdout_bytes=out.close(),
                               stderr_bytes=err.close())
            except BaseException:
                waiting.cancel()
                raise
            reusable = True
            return Outcome(status, 0, start, time.time(), stdout_bytes=out.close(), stderr_bytes=err.close())
        except (ConnectionLost, ConnectionError, BrokenPipeError) as e:
            self._forget_master(slot.master, slot.path)
            msg = await _drain(proc) if proc.returncode is not None or isinstance(e, ConnectionLost) else ""
            return Outcome(None, start=start, end=time.time(), connection_failed=True,
                           message=f"session to {self.host.name} lost" + (f": {msg.strip()}" if msg.strip() else ""))
        except asyncio.CancelledError:
            # halt now / Ctrl-C: the remote tree must go too, not only our client
            await asyncio.shield(self._kill_remote_quietly(slot))
            raise
        finally:
            out.close()
            err.close()
            if reusable and not self._closed:
                self._idle.append(slot)
            else:
                await asyncio.shield(self._discard(slot))

    async def _collect(self, proc: asyncio.subprocess.Process, out: _Sink, err: _Sink) -> int:
        assert proc.stdout and proc.stderr
        status_line, _ = await asyncio.gather(_pump(proc.stdout, self._out_marker, out, want_line=True),
                                              _pump(proc.stderr, self._err_marker, err, want_line=False))
        return int(status_line)

    # --------------------------------------------------------------- helpers
    async def exec(self, script: str, stdin: int | None = None, stdout: int | None = None) -> Helper:
        """Run a short ``sh`` script on the host over an existing master (no new authentication).

        For data movement (cmflow/files): ``stdin``/``stdout`` may be file descriptors, so a file
        streams through the session without passing through Python. One helper at a time per
        host: a master carries 8 slot sessions, one helper and one kill session (MaxSessions 10).
        """
        if self._helper_lock is None:
            self._helper_lock = asyncio.Lock()
        async with self._helper_lock:
            try:
                path = await self._master(0)
            except ConnectionLost as e:
                return Helper(None, b"", str(e))
            proc = await asyncio.create_subprocess_exec(
                *self.base, *self._mux(path), self.host.hostname, f"sh -c {shlex.quote(script)}",
                stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=stdout if stdout is not None else asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
            try:
                out, err = await proc.communicate()
            except BaseException:
                await asyncio.shield(_kill(proc))
                raise
            text = err.decode("utf-8", "replace")
            if proc.returncode == 255:   # ssh's own failure: the session or the master is gone
                self._forget_master(0, path)
                return Helper(None, out or b"", classify_ssh_error(text, self.host) if text.strip()
                              else f"session to {self.host.name} lost")
            return Helper(proc.returncode, out or b"", text)

    async def _kill_remote(self, slot: _Slot) -> None:
        argv = [*self.base, *self._mux(slot.path), "--", self.host.hostname,
                f"sh -c {shlex.quote(KILL_SCRIPT)} cmflow-kill {slot.pid}"]
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            await asyncio.wait_for(proc.wait(), KILL_WAIT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()

    async def _kill_remote_quietly(self, slot: _Slot) -> None:
        try:
            await self._kill_remote(slot)
        except Exception:
            pass  # nothing more we can do for a dead connection

    async def aclose(self) -> None:
        self._closed = True
        for slot in list(self._all):
            if slot.proc.stdin and not slot.proc.stdin.is_closing():
                slot.proc.stdin.close()   # the remote sh exits at end of input
        for slot in list(self._all):
            try:
                await asyncio.wait_for(slot.proc.wait(), 5)
            except asyncio.TimeoutError:
                pass
            await self._discard(slot)
        self._idle.clear()
        for path in self._paths:
            if os.path.exists(path):
                proc = await asyncio.create_subprocess_exec(
                    "ssh", "-o", f"ControlPath={path}", "-O", "exit", "--", self.host.hostname,
                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL)
                await proc.wait()
        self._masters.clear()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class _Sink(Protocol):
    def write(self, data: bytes) -> int: ...


async def _pump(reader: asyncio.StreamReader, marker: bytes, sink: _Sink, want_line: bool) -> bytes:
    """Copy a stream to sink up to the framing marker; return what follows it on its line."""
    buf = b""
    keep = len(marker) - 1
    while True:
        chunk = await reader.read(_CHUNK)
        if not chunk:
            raise ConnectionLost("session closed")
        buf += chunk
        i = buf.find(marker)
        if i >= 0:
            sink.write(buf[:i])
            rest = buf[i + len(marker):]
            if not want_line:
                return b""
            while b"\n" not in rest:
                more = await reader.read(_CHUNK)
                if not more:
                    raise ConnectionLost("session closed")
                rest += more
            return rest.split(b"\n", 1)[0]
        if len(buf) > keep:
            sink.write(buf[:-keep] if keep else buf)
            buf = buf[-keep:] if keep else b""


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        await proc.wait()


async def _drain(proc: asyncio.subprocess.Process) -> str:
    """What ssh said on stderr before it died (after the framing, nothing else writes there)."""
    await _kill(proc)
    data = b""
    if proc.stderr:
        try:
            data = await asyncio.wait_for(proc.stderr.read(), 5)   # what is buffered, up to EOF
        except (asyncio.TimeoutError, ConnectionError):
            pass
    return data.decode("utf-8", "replace")
