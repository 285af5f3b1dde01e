"""trace.tsv of a big run in one pass over its journal, in memory that does not grow with the run.

``data.load_run`` keeps an Attempt and a JobInfo per job (~650 B a job: 650 MB for a million,
on top of the run's own peak). Here a job's row is made as soon as its last event is read
(an ``end`` that is OK or final, or ``cached``), written to a spill file, and only its place
there is kept (16 B a job); jobs still open when the journal ends (running, killed in flight,
waiting for a retry) are few and kept whole. A second pass over plan.json, a job a line in id
order, writes the rows in seq order with their task and command. The rows are exactly
report.__init__._trace_lines's, which stays the reference for anything this pass does not
expect (an older plan.json, a journal reused by two runs): then it answers None.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any, Iterator

from ..journal import JOURNAL, read_journal_lazily, start_event
from ..rundir import is_running, read_json
from .data import CACHED, FAILED, OK, RUNNING

CHUNK = 4096     # rows per write


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _span(p: Any) -> str:
    return f"{p[1] - p[0]:.3f}" if isinstance(p, list) and len(p) == 2 else ""


class _Open:
    """A job whose last event is not its last word yet (a start, or an attempt that will be retried)."""

    __slots__ = ("key", "state", "n", "ready0", "start0", "sent", "fetched", "last", "start_ev", "unread", "call")

    def __init__(self) -> None:
        self.key = ""
        self.state = "not run"
        self.n = 0                                  # attempts ended (and, at the end, the one in flight)
        self.ready0 = self.start0 = 0.0             # the first attempt's
        self.sent = self.fetched = 0                # summed over attempts
        self.last: tuple | None = None              # (host, start, end, out_bytes, exit, signal, phases)
        self.start_ev: dict[str, Any] | None = None   # the attempt in flight
        self.unread: bytes | None = None      # its start line, not decoded yet (as load_run, see there)
        self.call: tuple[str, str] | None = None    # a run-time call's task and command (the plan has neither)

    def started(self, ev: dict[str, Any]) -> None:
        self.key = ev.get("key", self.key)
        self.start_ev = ev
        self.state = RUNNING

    def read_start(self) -> None:
        ev = start_event(self.unread or b"")
        self.unread = None
        if ev is not None:
            self.started(ev)

    def attempt(self, host: str, ready: float, start: float, end: float, out: int, exit_: Any, sig: int,
                sent: int, fetched: int, phases: dict[str, Any]) -> None:
        if not self.n:
            self.ready0, self.start0 = ready, start
        self.n += 1
        self.sent += sent
        self.fetched += fetched
        self.last = (host, start, end, out, exit_, sig, phases)

    def row(self) -> tuple[str, str]:
        """The row around its task (from the plan): the columns before it, and those after it up to
        the command."""
        if self.last is None:
            return "\t0.000\t0.000\t0\t0\t-1\t0", f"{self.key}\t{self.state}\t0\t\t\t\t\t\t0\t0"
        host, start, end, out, exit_, sig, phases = self.last
        run = phases.get("running") or [start, end]
        ready = f"{self.ready0:.3f}" if self.ready0 else ""
        wait = f"{max(self.start0 - self.ready0, 0):.3f}" if self.ready0 else ""
        return (f"{host}\t{start:.3f}\t{max(end - start, 0):.3f}\t{self.sent}\t{out}\t"
                f"{exit_ if exit_ is not None else -1}\t{sig}",
                f"{self.key}\t{self.state}\t{self.n}\t{ready}\t{wait}\t{_span(phases.get('staging'))}\t"
                f"{_span(run)}\t{_span(phases.get('fetching'))}\t{self.sent}\t{self.fetched}")


class _Spill:
    """Rows kept on disk by seq: their two halves' bytes, and where they are."""

    def __init__(self, run_dir: Path, jobs: int):
        self.file = tempfile.TemporaryFile(dir=run_dir, prefix=".trace.")
        self.at = array("q", [-1]) * (jobs + 1)
        self.len1 = array("i", [0]) * (jobs + 1)
        self.len2 = array("i", [0]) * (jobs + 1)
        self.last = jobs     # the highest seq put: run-time calls are numbered after the plan's jobs
        self._buf: list[bytes] = []
        self._pos = 0
        self._fd = -1

    def put(self, seq: int, halves: tuple[str, str]) -> None:
        if seq >= len(self.at):   # a run-time call beyond the plan's jobs
            more = max(seq + 1 - len(self.at), len(self.at) // 2)
            self.at.extend(array("q", [-1]) * more)
            self.len1.extend(array("i", [0]) * more)
            self.len2.extend(array("i", [0]) * more)
        self.last = max(self.last, seq)
        a, b = (h.encode("utf-8", "surrogateescape") for h in halves)
        self.at[seq], self.len1[seq], self.len2[seq] = self._pos, len(a), len(b)
        self._buf += (a, b)
        self._pos += len(a) + len(b)
        if len(self._buf) >= 2 * CHUNK:
            self.file.writelines(self._buf)
            self._buf.clear()

    def get(self, seq: int) -> tuple[str, str] | None:
        # read back a row at a time (pread), not through a mapping of the file: mapped pages would
        # count in the process's resident set (~100 MB at a million jobs)
        at = self.at[seq] if seq < len(self.at) else -1
        if at < 0:
            return None
        n1 = self.len1[seq]
        data = os.pread(self._fd, n1 + self.len2[seq], at)
        return data[:n1].decode("utf-8", "surrogateescape"), data[n1:].decode("utf-8", "surrogateescape")

    def done_writing(self) -> None:
        self.file.writelines(self._buf)
        self._buf.clear()
        self.file.flush()
        self._fd = self.file.fileno()


class Unexpected(Exception):
    """The run directory is not what this pass assumes; the reference reader takes over."""


def trace_lines(run_dir: Path) -> Iterator[str] | None:
    """trace.tsv's lines after the header, or None when only load_run can tell (see the module doc)."""
    meta = read_json(run_dir / "run.json") or {}
    jobs = meta.get("jobs")
    if not isinstance(jobs, int) or jobs < 0 or not _streamable_plan(run_dir / "plan.json"):
        return None
    spill = _Spill(run_dir, jobs)
    try:
        open_ = _read_events(run_dir, jobs, spill)
    except Unexpected:
        spill.file.close()
        return None
    for seq, job in open_.items():
        spill.put(seq, _row(seq, job, jobs))
    return _merge(run_dir / "plan.json", spill, jobs)


def _row(seq: int, job: _Open, jobs: int) -> tuple[str, str]:
    """A job's row halves; a run-time call's carry its task and command, which the plan has not."""
    halves = job.row()
    if seq <= jobs:
        return halves
    task, command = job.call or ("", "")
    return f"{halves[0]}\t{task}", f"{halves[1]}\t{_esc(command)}"


def _streamable_plan(path: Path) -> bool:
    """plan.json as RunLog.write_plan writes it: the flow, then one job a line."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().startswith('{"flow": ') and f.readline() == ' "jobs": [\n'
    except (OSError, UnicodeDecodeError):
        return False


def _read_events(run_dir: Path, jobs: int, spill: _Spill) -> dict[int, _Open]:
    """One pass over the journal: every finished job's row spilled; the jobs still open returned,
    their attempt in flight (if any) ended at the run's end, as load_run does."""
    open_: dict[int, _Open] = {}
    done = bytearray(jobs + 1)      # grows past the plan's jobs for run-time calls
    last_end = 0.0             # the latest end of any attempt (one in flight counts as 0.0, as in load_run)
    for ev in read_journal_lazily(run_dir / JOURNAL):
        if type(ev) is tuple:
            seq, raw = ev
            kind = "start"
        else:
            seq = ev.get("seq")
            kind = ev["ev"]
        if type(seq) is not int or seq <= 0 or kind not in ("start", "end", "cached"):
            continue           # not a job's event
        if seq >= len(done):   # a run-time call, numbered after the plan's jobs
            done.extend(bytes(max(seq + 1 - len(done), len(done) // 2)))
        if done[seq]:
            raise Unexpected(seq)     # a job that goes on after its last word: two runs in one journal
        job = open_.get(seq)
        if job is None:
            job = open_[seq] = _Open()
        if job.unread is not None and (kind != "end" or "key" not in ev):
            job.read_start()
        if kind == "start":
            if type(ev) is tuple:
                job.unread = raw
            else:
                job.started(ev)
            continue
        job.unread = None
        job.key = ev.get("key", job.key)
        if seq > jobs:
            job.call = (ev.get("task") or "", ev.get("command") or "")
        if kind == "cached":
            job.state = CACHED
        else:
            job.start_ev = None
            ok = bool(ev.get("ok"))
            final = ev.get("final", True)
            ready, start, end = float(ev.get("ready") or 0), float(ev.get("start") or 0), float(ev.get("end") or 0)
            phases = ev.get("phases") or {}
            if type(phases) is not dict:
                phases = dict(phases)
            spans = [v for v in phases.values() if isinstance(v, list) and len(v) == 2]
            if spans:   # as load_run: the attempt covers staging before the command and fetching after it
                start = min([start, *(v[0] for v in spans)])
                end = max([end, *(v[1] for v in spans)])
            job.attempt(str(ev.get("host", "")), ready, start, end, int(ev.get("stdout_bytes") or 0), ev.get("exit"),
                        int(ev.get("signal") or 0), int(ev.get("bytes_sent") or 0),
                        int(ev.get("bytes_fetched") or 0), phases)
            last_end = max(last_end, end)
            if not ok and not final:
                job.state = RUNNING     # to be tried again
                continue
            job.state = OK if ok else FAILED
        spill.put(seq, _row(seq, job, jobs))
        done[seq] = 1
        del open_[seq]
    for job in open_.values():
        if job.unread is not None:
            job.read_start()
    # the attempts in flight end when the run ended (or now, if it still runs), as in load_run
    in_flight = [job for job in open_.values() if job.start_ev is not None]
    if in_flight:
        summary = read_json(run_dir / "summary.json") or {}
        end = float(summary.get("ended") or 0) or (time.time() if is_running(run_dir) else 0.0) or last_end
        for job in in_flight:
            ev = job.start_ev
            start = float(ev.get("start") or 0)
            job.attempt(str(ev.get("host", "")), float(ev.get("ready") or 0), start, max(end, start), 0, None, 0,
                        0, 0, {})
    return open_


def _merge(plan: Path, spill: _Spill, jobs: int) -> Iterator[str]:
    """The rows in the plan's order (ids ascending, as write_plan writes them), task and command from
    plan.json a line at a time. Raises Unexpected (while the file is being written) if the plan
    is not in that order."""
    spill.done_writing()

    def rows() -> Iterator[str]:
        try:
            out: list[str] = []
            prev = 0
            with open(plan, encoding="utf-8") as f:
                f.readline(), f.readline()
                for line in f:
                    if not line.startswith("  {"):
                        break
                    j = json.loads(line.rstrip().rstrip(","))
                    seq = j["id"]
                    if type(seq) is not int or not prev < seq <= jobs:
                        raise Unexpected(seq)
                    prev = seq
                    got = spill.get(seq) or _Open().row()
                    out.append(f"{seq}\t{got[0]}\t{j['task']}\t{got[1]}\t{_esc(j.get('command', ''))}\n")
                    if len(out) >= CHUNK:
                        yield "".join(out)
                        out.clear()
            for seq in range(jobs + 1, spill.last + 1):   # the run-time calls, after the plan's jobs
                got = spill.get(seq)
                if got is not None:
                    out.append(f"{seq}\t{got[0]}\t{got[1]}\n")
                    if len(out) >= CHUNK:
                        yield "".join(out)
                        out.clear()
            yield "".join(out)
        finally:
            spill.file.close()

    return rows()
