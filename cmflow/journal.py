"""The durable journal of a run, and the content key of an invocation.

``journal.jsonl`` in the run directory gets one JSON line per event: a job
started (``start``), an attempt ended (``end``), a job reused from an earlier
run (``cached``), a job's output files fetched and verified (``fetched``).
Lines go to the kernel in one ``write()`` on an ``O_APPEND`` descriptor: a
start at once, with every line before it (a job's start is in the file before
the job can run), the other lines of a turn of the event loop together before
the loop next waits (cmflow/flushing.py). So a SIGKILL of cmflow loses only the
jobs still in flight; a torn last line (power cut, full disk) is skipped by the
reader, never fatal. No fsync per line: a crash of the whole
machine may lose the last few seconds (the page cache), a kill of cmflow never.

The key of an invocation is a sha256 over what decides its result:

- the task's name as the flow refers to it (``m.a``), the command string the def
  built (so any change to the def's output, its literal or run-time argument
  values, shows here), and those argument values themselves;
- the placement class (the ``@`` target or the task's ``hosts=``, never the host
  the job happened to run on) and the environment the inventory gives hosts of
  that class (``env:``, ``workdir:``);
- the fingerprint of each declared input file: size and mtime (nanoseconds), or
  with deep resume its sha256.

Not in the key (docs/resume.md says so too): anything the command reads that
is not declared (files it opens, the network, the time, programs' versions on
the hosts), the host's own state, and the task's options (timeout, retries,
parse: a value is re-read from the reused stdout with today's ``parse=``).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .flushing import flush_soon, forget
from .hosts import Host
from .jsonfmt import boolean as _b, string as _string, value as _v
from .plan import Job

JOURNAL = "journal.jsonl"
KEY_VERSION = "cmflow-key-1"
RUN_DIR = "$RUN"    # stands for the run's own directory in a key's input paths


# ------------------------------------------------------------------ the key

@dataclass(frozen=True)
class KeyParts:
    """What a key is made of, kept beside it so a changed key can be explained."""

    task: str
    args: str                  # canonical JSON of positional and keyword argument values
    command: str               # sha256 of the command string
    placement: str
    env: str                   # sha256 of the environments of the placement's hosts
    inputs: tuple[tuple[str, str], ...] = ()    # (path, fingerprint)

    def key(self) -> str:
        # _COMPACT([KEY_VERSION, task, args, command, placement, env, [list(i) for i in inputs]]), formatted
        # directly (every job has a key); the fields are strings (the dataclass says so; else the encoder)
        fields = (self.task, self.args, self.command, self.placement, self.env)
        if all(type(f) is str for f in fields):
            inputs = ",".join(f"[{_v(p, _COMPACT)},{_v(f, _COMPACT)}]" for p, f in self.inputs)
            text = f'["{KEY_VERSION}",{",".join(map(_string, fields))},[{inputs}]]'
        else:
            text = _COMPACT([KEY_VERSION, *fields, list(self.inputs)])
        return hashlib.sha256(text.encode()).hexdigest()

    def text(self) -> str:
        """``to_json()`` as the journal writes it (compact JSON), formatted directly."""
        inputs = ",".join(f"[{_v(p, _ENCODE)},{_v(f, _ENCODE)}]" for p, f in self.inputs)
        return (f'{{"task":{_v(self.task, _ENCODE)},"args":{_v(self.args, _ENCODE)},'
                f'"command":{_v(self.command, _ENCODE)},"placement":{_v(self.placement, _ENCODE)},'
                f'"env":{_v(self.env, _ENCODE)},"inputs":[{inputs}]}}')

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "args": self.args, "command": self.command, "placement": self.placement,
                "env": self.env, "inputs": [list(i) for i in self.inputs]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "KeyParts":
        return cls(doc["task"], doc["args"], doc["command"], doc["placement"], doc["env"],
                   tuple((p, f) for p, f in doc.get("inputs", ())))


# encoders made once: json.dumps with options builds a new encoder per call, and these run per job
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=repr).encode


_PLAIN = (str, int, float, type(None), bool)    # a value whose canonical JSON jsonfmt.value writes


def _canonical(value: Any) -> str:
    return _CANONICAL(value)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


class Keys:
    """Computes invocation keys for one run; input fingerprints are cached per path for the run."""

    def __init__(self, deep: bool = False, run_dir: Path | None = None):
        self.deep = deep
        # an input inside this run's directory (a Files argument: another job's fetched output) is keyed by
        # its place there: a resume adopts those files into its own, new run directory, and a job given
        # the same files must keep its key, or every job reducing files re-runs on every resume
        self._run = str(run_dir.resolve()) + os.sep if run_dir is not None else ""
        self._fingerprints: dict[str, str] = {}
        self._envs: dict[str | None, str] = {}   # placement -> hash of its hosts' environments

    def parts(self, job: Job, hosts: Sequence[Host], inputs: Iterable[str] = ()) -> KeyParts:
        """The key parts of a job that may run on ``hosts`` (the hosts its placement resolves to)."""
        env = self._envs.get(job.target)
        if env is None:
            classes = sorted({_canonical([sorted(h.env), h.workdir]) for h in hosts})
            env = self._envs[job.target] = _sha("\n".join(classes))
        args = job.args
        if not job.kwargs and all(type(a) in _PLAIN for a in args):   # most calls: t(1, "a")
            canonical = f'[[{",".join([_v(a, _CANONICAL) for a in args])}],[]]'
        else:
            canonical = _canonical([list(args), [list(kv) for kv in job.kwargs]])
        return KeyParts(job.task, canonical, _sha(job.command), job.target or "", env,
                        tuple((self._portable(p), self.fingerprint(p)) for p in inputs) if inputs else ())

    def _portable(self, path: str) -> str:
        return RUN_DIR + path[len(self._run) - 1:] if self._run and path.startswith(self._run) else path

    def fingerprint(self, path: str) -> str:
        """``size:mtime_ns``, or ``sha256:HEX`` when deep; ``missing`` if it does not exist."""
        got = self._fingerprints.get(path)
        if got is None:
            got = self._fingerprints[path] = _fingerprint(Path(path), self.deep)
        return got


def _fingerprint(path: Path, deep: bool) -> str:
    try:
        if path.is_dir():
            # a folder: its files' fingerprints, in name order
            inner = [f"{p.relative_to(path)}={_fingerprint(p, deep)}" for p in sorted(path.rglob("*")) if p.is_file()]
            return "dir:" + _sha("\n".join(inner))
        if deep:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return "sha256:" + h.hexdigest()
        st = path.stat()
        return f"{st.st_size}:{st.st_mtime_ns}"
    except FileNotFoundError:
        return "missing"


def job_inputs(job: Job) -> tuple[str, ...]:
    """The input files a job declares: local paths (``data:NAME`` records as written)."""
    return tuple(i.source for i in job.files.inputs) if job.files else ()


# -------------------------------------------------------------- the writer

_ENCODE = json.JSONEncoder(separators=(",", ":"), default=repr).encode


class Journal:
    """Appends events to ``journal.jsonl``: whole lines, one ``write()`` per loop turn, so lines never interleave."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / JOURNAL
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        # a torn line left by a killed writer must not glue onto our first line
        if self.path.stat().st_size and not _ends_with_newline(self.path):
            os.write(self._fd, b"\n")
        self._lines: list[str] = []

    def append(self, doc: dict[str, Any]) -> None:
        try:
            line = _ENCODE(doc)
        except ValueError:   # a value JSON cannot hold (a circular structure from a parse= callable)
            doc = {**doc, "value": repr(doc.get("value"))}
            line = _ENCODE(doc)
        self._lines.append(line)
        if len(self._lines) == 1:
            flush_soon(self)

    def flush(self) -> None:
        if not self._lines or self._fd < 0:
            return
        self._lines.append("")
        data = "\n".join(self._lines).encode("utf-8", "surrogateescape")
        self._lines.clear()
        while data:
            n = os.write(self._fd, data)
            data = data[n:]

    def _line(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) == 1:
            flush_soon(self)

    def started(self, seq: int, key: str, host: str, attempt: int, ready: float, start: float) -> None:
        """Written ahead: in the file (with every line before it) before the job may start, so a
        job that ran is never missing from a killed run's journal (a resume counts it in flight)."""
        # what append({"ev": "start", "seq": ..., ...}) writes, formatted directly (jsonfmt.py): every job has one
        self._line(f'{{"ev":"start","seq":{_v(seq, _ENCODE)},"key":{_v(key, _ENCODE)},"host":{_v(host, _ENCODE)},'
                   f'"attempt":{_v(attempt, _ENCODE)},"ready":{_v(round(ready, 6), _ENCODE)},'
                   f'"start":{_v(round(start, 6), _ENCODE)}}}')
        self.flush()

    def ended(self, doc: dict[str, Any]) -> None:
        self.append({"ev": "end", **doc})

    def ended_attempt(self, job: Job, key: str, parts: KeyParts, label: str, host: str, attempt: int,
                      times: tuple[float, float, float], ok: bool, final: bool, exit_: int | None, signal: int,
                      timed_out: bool, connection_failed: bool, error: str, stdout: str, stderr: str,
                      out_bytes: int, err_bytes: int, more: dict[str, Any]) -> None:
        """An attempt's end: ended() of these fields in this order (``times``: ready, start, end; ``more``:
        bytes moved and phases, when there are any), formatted directly, as every job writes one."""
        ready, start, end = times
        self._line(f'{{"ev":"end","seq":{_v(job.id, _ENCODE)},"key":{_v(key, _ENCODE)},"parts":{parts.text()},'
                   f'"task":{_v(job.task, _ENCODE)},"label":{_v(label, _ENCODE)},"where":{_v(job.where, _ENCODE)},'
                   f'"host":{_v(host, _ENCODE)},"attempt":{_v(attempt, _ENCODE)},"ready":{_v(round(ready, 6), _ENCODE)},'
                   f'"start":{_v(round(start, 6), _ENCODE)},"end":{_v(round(end, 6), _ENCODE)},'
                   f'"ok":{_b(ok, _ENCODE)},"final":{_b(final, _ENCODE)},"exit":{_v(exit_, _ENCODE)},'
                   f'"signal":{_v(signal, _ENCODE)},"timed_out":{_b(timed_out, _ENCODE)},'
                   f'"connection_failed":{_b(connection_failed, _ENCODE)},"error":{_v(error, _ENCODE)},'
                   f'"stdout":{_v(stdout, _ENCODE)},"stderr":{_v(stderr, _ENCODE)},'
                   f'"stdout_bytes":{_v(out_bytes, _ENCODE)},"stderr_bytes":{_v(err_bytes, _ENCODE)}'
                   + ("".join(f",{_string(k)}:{_ENCODE(x)}" for k, x in more.items()) if more else "") + "}")

    def cached(self, doc: dict[str, Any]) -> None:
        self.append({"ev": "cached", **doc})

    def fetched(self, seq: int, key: str, files: Sequence[dict[str, Any]]) -> None:
        """Outputs of a job copied back and verified: [{"path", "size", "sha256"}] relative to the run dir."""
        self.append({"ev": "fetched", "seq": seq, "key": key, "files": list(files)})

    def close(self) -> None:
        forget(self)
        self.flush()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


# -------------------------------------------------------------- the reader

def _whole_lines(path: Path) -> Iterator[bytes]:
    """A journal's lines up to the torn last line of a killed writer, if any; none if it is missing."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return
            yield raw


def _event(raw: bytes) -> dict[str, Any] | None:
    """One journal line decoded; None for a line that does not parse (a torn write) or is no event."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and "ev" in doc else None


def read_journal(path: Path) -> Iterator[dict[str, Any]]:
    """Every event of a journal in order; a line that does not parse (a torn write) is skipped."""
    for raw in _whole_lines(path):
        doc = _event(raw)
        if doc is not None:
            yield doc


_START = b'{"ev":"start","seq":'


def read_journal_lazily(path: Path) -> Iterator[dict[str, Any] | tuple[int, bytes]]:
    """read_journal's events, but a start line as Journal.started writes it comes undecoded, as
    (seq, line): nearly every start is followed by its end, which says all a reader wants, so
    decoding starts (half the journal) is mostly wasted. ``start_event(line)`` decodes one."""
    for raw in _whole_lines(path):
        if raw.startswith(_START):
            end = raw.find(b",", 20)
            seq = raw[20:end]
            if end > 20 and seq.isdigit() and (seq[0] != 48 or len(seq) == 1):   # JSON's own integers
                yield int(seq), raw
                continue
        doc = _event(raw)
        if doc is not None:
            yield doc


# a start line from read_journal_lazily, decoded (None where read_journal would skip it)
start_event = _event
