"""The run directory: job output files, a GNU parallel joblog, JSON-lines records.

Lines are written as jobs end and flushed before the event loop next waits
(one write per file for all the jobs that ended in one turn of the loop, not
two per job), so a run that is killed leaves a truthful log of everything that
finished. Whole files (the plan, the summary) are written to a temp file and
renamed into place, one top-level key or item per line, each compact: the C
JSON encoder, never the slow indenting one, and a plan of a million jobs is
streamed, not built as one document first.

The joblog is byte for byte what GNU parallel's ``--joblog`` writes (its
``print_joblog``), because users hand it to ``parallel --retry-failed`` and
``--resume-failed``: one line per job, for its final attempt (every attempt is
in jobs.jsonl); newlines in the command as NUL bytes, tabs kept (parallel reads
the command as "the rest of the line"); ``%10.3f`` run time truncated to the
millisecond; ``:`` as the host of a local job; a job killed by us (timeout,
halt, Ctrl-C) as Exitval -1 with the signal sent, a job that died of a signal
on its own as Exitval 0 with that signal. A job that never started gets a line
too (start 0, Exitval -1): without one ``--retry-failed`` runs an empty command
in its place and calls it done.
"""
from __future__ import annotations

import json
import operator
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .flushing import flush_soon, forget
from .jsonfmt import boolean as _b, value as _v
from .plan import JobRef, Plan, PlanNode, PPar, PSeq, PSum, _node_json, job_json

JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


@dataclass(slots=True)   # not frozen: one is built per attempt, and a frozen one pays a setattr call per field
class JobRecord:
    """One attempt of a job. What the plan's Job says (task, label, arguments, where, command) is read
    from it when needed, not copied per attempt: a run that logs nothing never formats a label."""

    job: Any               # the plan's Job (cmflow.plan.Job)
    host: str
    attempt: int
    start: float
    end: float
    exit_status: int | None
    signal: int
    timed_out: bool
    connection_failed: bool
    stdout: str            # file of the job's stdout; "" when it printed nothing
    stderr: str
    stdout_bytes: int = 0
    value: Any = None
    error: str = ""
    killed: bool = False   # we killed it (halt now, Ctrl-C); timed_out says so for timeouts
    ref: str = ""          # Slurm's id of the attempt (JOBID.STEP, JOBID_TASK), if it ran under Slurm
    bytes_sent: int = 0        # inputs staged to the host (cmflow/files)
    bytes_fetched: int = 0     # outputs fetched from it, verified
    attempts: int = 0      # attempts allowed for the command's own failures (retries + 1); 0: not known
    _label: str | None = field(default=None, repr=False)

    @property
    def runtime(self) -> float:
        return max(self.end - self.start, 0.0)

    @property
    def seq(self) -> int:
        return self.job.id

    @property
    def task(self) -> str:
        return self.job.task

    @property
    def label(self) -> str:
        if self._label is None:
            self._label = self.job.label
        return self._label

    @property
    def args(self) -> list[Any]:
        return list(self.job.args)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.job.kwargs)

    @property
    def where(self) -> str:
        return self.job.where

    @property
    def command(self) -> str:
        return self.job.command


# jobs.jsonl's keys, in this order
_FIELDS = ("seq", "task", "label", "args", "kwargs", "where", "host", "attempt", "start", "end", "exit_status",
           "signal", "timed_out", "connection_failed", "command", "stdout", "stderr", "stdout_bytes", "value",
           "error", "killed", "ref", "bytes_sent", "bytes_fetched", "attempts")
_VALUES = operator.attrgetter(*_FIELDS)
_ENCODE = json.JSONEncoder(default=repr).encode   # made once: json.dumps(default=) makes one per call


def record_line(rec: JobRecord) -> str:
    """jobs.jsonl's line for an attempt: json.dumps of its fields (the keys in _FIELDS' order, then
    runtime; default=repr), formatted directly (cmflow/jsonfmt.py)."""
    job = rec.job
    args, kwargs, value = job.args, job.kwargs, rec.value
    try:
        return (f'{{"seq": {_v(job.id, _ENCODE)}, "task": {_v(job.task, _ENCODE)}, "label": {_v(rec.label, _ENCODE)}, '
                f'"args": {_v(args, _ENCODE, ", ")}, "kwargs": {_v(dict(kwargs), _ENCODE) if kwargs else "{}"}, '
                f'"where": {_v(job.where, _ENCODE)}, "host": {_v(rec.host, _ENCODE)}, '
                f'"attempt": {_v(rec.attempt, _ENCODE)}, "start": {_v(rec.start, _ENCODE)}, '
                f'"end": {_v(rec.end, _ENCODE)}, "exit_status": {_v(rec.exit_status, _ENCODE)}, '
                f'"signal": {_v(rec.signal, _ENCODE)}, "timed_out": {_b(rec.timed_out, _ENCODE)}, '
                f'"connection_failed": {_b(rec.connection_failed, _ENCODE)}, "command": {_v(job.command, _ENCODE)}, '
                f'"stdout": {_v(rec.stdout, _ENCODE)}, "stderr": {_v(rec.stderr, _ENCODE)}, '
                f'"stdout_bytes": {_v(rec.stdout_bytes, _ENCODE)}, "value": {_v(value, _ENCODE)}, '
                f'"error": {_v(rec.error, _ENCODE)}, "killed": {_b(rec.killed, _ENCODE)}, "ref": {_v(rec.ref, _ENCODE)}, '
                f'"bytes_sent": {_v(rec.bytes_sent, _ENCODE)}, "bytes_fetched": {_v(rec.bytes_fetched, _ENCODE)}, '
                f'"attempts": {_v(rec.attempts, _ENCODE)}, "runtime": {_v(round(rec.runtime, 6), _ENCODE)}}}')
    except ValueError:   # a value JSON cannot hold (a circular structure from a parse= callable)
        doc = dict(zip(_FIELDS, _VALUES(rec)))
        doc["runtime"] = round(rec.runtime, 6)
        doc["value"] = repr(value)
        return _ENCODE(doc)


def _join(folder: Path, name: str) -> Path:
    return folder / name


# a plain file name joined without parsing it again (pathlib's own fast path, where there is one)
_child = getattr(Path, "_make_child_relpath", _join)


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_atomic(path: Path, text: str | Iterable[str]) -> None:
    """Write a whole file or nothing: temp file in the same folder, then rename. ``text`` may come in pieces."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if isinstance(text, str):
                f.write(text)
            else:
                f.writelines(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class RunLog:
    """Owns one run directory. Not thread-safe; the executor's loop is its only writer."""

    def __init__(self, run_dir: Path, local_hosts: frozenset[str] | set[str] = frozenset()):
        self.dir = run_dir
        self.local_hosts = frozenset(local_hosts)
        self._pending: dict[int, JobRecord] = {}   # a job's last attempt while more may follow
        self._logged: set[int] = set()
        self.jobs_dir = run_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # a run directory used again: outputs of the earlier run must not pass for this one's
        for old in self.jobs_dir.glob("*.[0-9]*.[oe][ur][tr]"):
            old.unlink()
        self._joblog = open(run_dir / "joblog", "w", encoding="utf-8")
        self._joblog.write(JOBLOG_HEADER)
        self._joblog.flush()
        self._records = open(run_dir / "jobs.jsonl", "w", encoding="utf-8")

    def paths(self, seq: int, attempt: int) -> tuple[Path, Path]:
        # this runs for every attempt: two names joined onto the folder's parsed parts, nothing re-parsed
        stem = f"{seq}.{attempt}"
        return _child(self.jobs_dir, stem + ".out"), _child(self.jobs_dir, stem + ".err")

    def record(self, rec: JobRecord, final: bool = True) -> None:
        """One attempt: always a jobs.jsonl record; a joblog line when it is the job's last attempt."""
        if final:
            self._pending.pop(rec.seq, None)
            self._write_joblog(joblog_line(rec, rec.host in self.local_hosts))
            self._logged.add(rec.seq)
        else:
            self._pending[rec.seq] = rec
        self._records.write(record_line(rec) + "\n")
        flush_soon(self)

    def _write_joblog(self, line: str) -> None:
        self._joblog.write(line)
        flush_soon(self)

    def flush(self) -> None:
        for f in (self._joblog, self._records):
            if not f.closed:
                f.flush()

    def finish(self, jobs: Iterable[tuple[int, str]]) -> None:
        """At the end of a run: a line for each (seq, command) that has none yet.

        A job cut off between attempts gets its last attempt's line; one that never started a line of its own.
        """
        for seq, command in jobs:
            if seq in self._logged:
                continue
            rec = self._pending.pop(seq, None)
            self._write_joblog(joblog_line(rec, rec.host in self.local_hosts) if rec else
                               _joblog_join(seq, ":", "0.000", 0.0, 0, -1, 0, command))
            self._logged.add(seq)

    def write_json(self, name: str, doc: Any) -> None:
        write_atomic(self.dir / name, _json_lines(doc))

    def write_plan(self, plan: Plan) -> None:
        """plan.json: the flow, its jobs (one a line) and its structure, streamed."""
        def chunks() -> Iterator[str]:
            yield f'{{"flow": {json.dumps(plan.filename)},\n "jobs": [\n'
            for i, job in enumerate(plan.jobs):
                yield ("  " if not i else ",\n  ") + _job_line(job)
            yield '\n ],\n "root": '
            if plan.root is None:
                yield "null"
            else:
                yield from _node_chunks(plan.root)
            yield "\n}\n"
        write_atomic(self.dir / "plan.json", chunks())

    def close(self) -> None:
        forget(self)
        for f in (self._joblog, self._records):
            if not f.closed:
                f.close()


_PLAIN = (str, int, float, bool, type(None))


def _job_line(job: Any) -> str:
    """plan.json's line for a job: json.dumps(job_json(job), default=repr), formatted directly for a
    job without keyword arguments or files whose arguments are plain values (most jobs of a big plan)."""
    if job.kwargs or job.files or not all(type(a) in _PLAIN for a in job.args):
        return _ENCODE(job_json(job))
    return (f'{{"id": {_v(job.id, _ENCODE)}, "task": {_v(job.task, _ENCODE)}, "args": {_v(job.args, _ENCODE, ", ")}, '
            f'"kwargs": {{}}, "target": {_v(job.target, _ENCODE)}, "command": {_v(job.command, _ENCODE)}, '
            f'"where": {_v(job.where, _ENCODE)}}}')


def _json_lines(doc: Any) -> Iterator[str]:
    """JSON with one top-level key (or item) per line, each compact."""
    if isinstance(doc, dict) and doc:
        yield "{\n"
        yield ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, default=repr)}" for k, v in doc.items())
        yield "\n}\n"
    elif isinstance(doc, list) and doc:
        yield "[\n"
        yield ",\n".join(f"  {json.dumps(v, default=repr)}" for v in doc)
        yield "\n]\n"
    else:
        yield json.dumps(doc, default=repr) + "\n"


def _node_chunks(node: PlanNode) -> Iterator[str]:
    """``_node_json(node)`` as text, a wide node's items streamed one by one."""
    if type(node) is JobRef:   # most of a big plan: written as json.dumps({"job": ID}) would write it
        yield f'{{"job": {node.job.id}}}'
        return
    match node:
        case PSeq(items) | PPar(items) | PSum(items) if len(items) > 1000:
            yield f'{{"op": "{type(node).__name__[1:].lower()}", "items": ['
            for i, item in enumerate(items):
                if i:
                    yield ", "
                yield from _node_chunks(item)
            yield "]}"
        case _:
            yield json.dumps(_node_json(node), default=repr)


def joblog_line(rec: JobRecord, local: bool) -> str:
    """A job's line exactly as GNU parallel's print_joblog writes it."""
    if rec.connection_failed:
        exitval, sig = 255, 0                        # parallel's status for an ssh that failed
    elif rec.timed_out or rec.killed:
        exitval, sig = -1, rec.signal or 15          # parallel's kill(): -1, then the signal that ended it
    elif rec.exit_status is None:
        exitval, sig = 0, rec.signal                 # died of a signal: wait status >> 8 is 0
    else:
        exitval, sig = rec.exit_status, rec.signal
    # like parallel's --transferfile/--return: Send counts the files staged, Receive the output and files fetched
    return _joblog_join(rec.seq, ":" if local else rec.host, f"{rec.start:.3f}", rec.runtime,
                        rec.stdout_bytes + rec.bytes_fetched, exitval, sig, rec.command, rec.bytes_sent)


def _joblog_join(seq: int, host: str, start: str, runtime: float, received: int, exitval: int, sig: int,
                 command: str, sent: int = 0) -> str:
    # parallel truncates the run time to the millisecond, then pads it to 10 columns
    runtime_ms = int(runtime * 1000) / 1000
    return (f"{seq}\t{host}\t{start}\t{runtime_ms:10.3f}\t{sent}\t{received}\t{exitval}\t{sig}\t"
            f"{command.replace(chr(10), chr(0))}\n")


def read_joblog(path: Path) -> list[dict[str, str]]:
    """Parse a joblog the way GNU parallel does: TAB-separated, header first, the command is the rest of the
    line with NUL standing for newline. Only \\n ends a line (str.splitlines would also split at \\x1c, \\x85...)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t", len(header) - 1))) for line in lines[1:] if line]
    for row in rows:
        if "Command" in row:
            row["Command"] = row["Command"].replace("\0", "\n")
    return rows
