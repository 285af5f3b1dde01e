"""A run directory read into the figures a report shows (no executor involved).

Sources: run.json, summary.json, plan.json, hosts.json and the journal. Every
attempt is an ``end`` event of the journal; a ``start`` without an ``end`` is a
job that was running when the run stopped (or still runs). An ``end`` event may
carry ``phases`` ({"staging": [t0, t1], "fetching": [t0, t1], ...}, epoch
seconds) and ``bytes_sent`` / ``bytes_fetched``; the report draws and counts
them when present.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..journal import JOURNAL, read_journal_lazily, start_event
from ..rundir import is_running, read_json

OK, FAILED, RETRIED, CACHED, RUNNING = "ok", "failed", "retried", "cached", "running"
PHASES = ("staging", "running", "fetching")
TAIL_FILES = 2000      # stderr tails read for at most this many failed attempts (a report must open fast)


@dataclass(slots=True)     # slots: a run of a million jobs reads a million of them
class Attempt:
    seq: int
    host: str
    attempt: int
    ready: float
    start: float
    end: float
    state: str                      # ok | failed | retried (failed, tried again) | running
    exit: int | None = None
    signal: int = 0
    error: str = ""
    out_bytes: int = 0
    err_bytes: int = 0
    sent: int = 0
    fetched: int = 0
    stderr: str = ""                # path relative to the run dir
    phases: dict[str, list[float]] = field(default_factory=dict)     # read only (often the shared empty one)
    lane: int = 0


@dataclass(slots=True)
class JobInfo:
    seq: int
    task: str
    label: str
    command: str
    where: str
    key: str = ""
    state: str = "not run"          # ok | failed | cached | running | not run
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def last(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


@dataclass
class RunData:
    dir: Path
    meta: dict[str, Any]
    summary: dict[str, Any] | None
    hosts: list[dict[str, Any]]
    plan_root: Any
    jobs: dict[int, JobInfo]
    attempts: list[Attempt]
    start: float
    end: float
    running: bool

    @property
    def wall(self) -> float:
        return max(self.end - self.start, 0.0)


def _label(job: dict[str, Any]) -> str:
    args = [repr(a) if not isinstance(a, str) else f'"{a}"' for a in job.get("args", [])]
    args += [f"{k}={v!r}" for k, v in (job.get("kwargs") or {}).items()]
    text = f"{job['task']}({', '.join(args)})" if args else job["task"]
    return f"{text} @ {job['target']}" if job.get("target") else text


_NO_PHASES: dict[str, list[float]] = {}


def _plan_jobs(path: Path) -> Iterator[dict[str, Any]]:
    """plan.json's jobs, a line at a time as RunLog.write_plan writes them (else read whole)."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.readline().startswith('{"flow": ') and f.readline() == ' "jobs": [\n':
                for line in f:
                    if not line.startswith("  {"):
                        return
                    yield json.loads(line.rstrip().rstrip(","))
                return
    except (OSError, ValueError):
        pass
    yield from (read_json(path) or {}).get("jobs", [])


def _plan_labels(path: Path, jobs: dict[int, JobInfo]) -> None:
    """The plan's label for every job the journal gave none (one that did not run): a second reading
    of plan.json, for these only, as most jobs get theirs from their end in the journal."""
    for j in _plan_jobs(path):
        job = jobs.get(j.get("id"))
        if job is not None and not job.label:
            job.label = _label(j)


def _read_plan(path: Path, full: bool) -> tuple[dict[int, JobInfo], Any]:
    """plan.json's jobs and its root. RunLog.write_plan writes one job a line: those are read a
    line at a time (a plan of a million jobs is never decoded whole), the root only when ``full``.
    Any other layout (an older run) is read whole. Labels are left to load_run (see _plan_labels)."""
    same: dict[str, str] = {}   # one string for the many jobs of a generator that share it

    def info(j: dict[str, Any]) -> JobInfo:
        task, command, where = j["task"], j.get("command", ""), j.get("where", "")
        return JobInfo(j["id"], same.setdefault(task, task), "",
                       same.setdefault(command, command), same.setdefault(where, where))

    try:
        with open(path, encoding="utf-8") as f:
            if f.readline().startswith('{"flow": ') and f.readline() == ' "jobs": [\n':
                jobs: dict[int, JobInfo] = {}
                for line in f:
                    if line.startswith("  {"):
                        job = info(json.loads(line.rstrip().rstrip(",")))
                        jobs[job.seq] = job
                    elif line.startswith(" ],"):
                        break
                    elif line.strip():
                        raise ValueError(line[:40])
                root = f.readline()
                if root.startswith(' "root": '):
                    return jobs, json.loads(root[9:]) if full else None
    except (OSError, ValueError, KeyError, TypeError):
        pass
    plan = read_json(path) or {}
    return {j["id"]: info(j) for j in plan.get("jobs", [])}, plan.get("root") if full else None


def load_run(run_dir: Path, full: bool = True) -> RunData:
    """``full``: also the plan's structure and each job's label (what report.html shows; trace.tsv
    needs neither)."""
    meta = read_json(run_dir / "run.json") or {}
    summary = read_json(run_dir / "summary.json")
    jobs, plan_root = _read_plan(run_dir / "plan.json", full)
    hosts = read_json(run_dir / "hosts.json") or []
    intern = sys.intern
    open_: dict[int, dict[str, Any]] = {}
    # a start as read, not decoded yet: its effect (state running, its key) is taken only if no
    # event of the job follows it (a job in flight at the end), or one that needs it
    unread: dict[int, bytes] = {}

    def started(job: JobInfo, ev: dict[str, Any]) -> None:
        open_[job.seq] = ev
        job.state = RUNNING
        job.key = ev.get("key", job.key)

    def read_start(job: JobInfo) -> None:
        ev = start_event(unread.pop(job.seq))
        if ev is not None:
            started(job, ev)

    # a run-time call (a def given other jobs' values) is a job numbered after the plan's: known from
    # the journal only, which gives its task, label and command with its end
    planned = max(jobs, default=0)
    deferred: list[JobInfo] = []

    def run_time_call(seq: Any) -> JobInfo | None:
        if type(seq) is not int or seq <= planned:
            return None
        job = jobs[seq] = JobInfo(seq, "", "", "", "")
        deferred.append(job)
        return job

    attempts: list[Attempt] = []
    for ev in read_journal_lazily(run_dir / JOURNAL):
        if type(ev) is tuple:
            seq, raw = ev
            job = jobs.get(seq) or run_time_call(seq)
            if job is not None:
                if seq in unread:
                    read_start(job)
                unread[seq] = raw
            continue
        seq = ev.get("seq")
        kind = ev["ev"]
        job = jobs.get(seq)
        if job is None:
            job = run_time_call(seq) if kind in ("start", "end", "cached") else None
            if job is None:
                continue
        if seq > planned and kind in ("end", "cached"):
            job.task = ev.get("task") or job.task
            job.command = ev.get("command") or job.command
            job.where = ev.get("where") or job.where
        if seq in unread and (kind == "start" or kind == "cached" or (kind == "end" and "key" not in ev)):
            read_start(job)
        if kind == "start":
            started(job, ev)
        elif kind == "end":
            unread.pop(seq, None)
            open_.pop(seq, None)
            ok = bool(ev.get("ok"))
            final = ev.get("final", True)
            a = Attempt(seq, intern(str(ev.get("host", ""))), int(ev.get("attempt") or 0), float(ev.get("ready") or 0),
                        float(ev.get("start") or 0), float(ev.get("end") or 0),
                        OK if ok else (FAILED if final else RETRIED), ev.get("exit"), int(ev.get("signal") or 0),
                        str(ev.get("error") or ""), int(ev.get("stdout_bytes") or 0),
                        int(ev.get("stderr_bytes") or 0), int(ev.get("bytes_sent") or 0),
                        int(ev.get("bytes_fetched") or 0), str(ev.get("stderr") or "") if not ok else "", dict(ev.get("phases") or _NO_PHASES) or _NO_PHASES)
            spans = [v for v in a.phases.values() if isinstance(v, list) and len(v) == 2]
            if spans:   # the bar covers staging before the command and fetching after it
                a.start = min([a.start, *(v[0] for v in spans)])
                a.end = max([a.end, *(v[1] for v in spans)])
            job.attempts.append(a)
            attempts.append(a)
            if full:
                job.label = ev.get("label") or job.label
            job.key = ev.get("key", job.key)
            job.state = OK if ok else (FAILED if final else RUNNING)
        elif kind == "cached":
            job.state = CACHED
            job.key = ev.get("key", job.key)
            if full:
                job.label = ev.get("label") or job.label
    for seq in list(unread):
        read_start(jobs[seq])
    if full and not all(j.label for j in jobs.values()):
        _plan_labels(run_dir / "plan.json", jobs)
        for job in deferred:   # in flight when the run stopped: its start says no more
            job.label = job.label or job.task or f"run-time call #{job.seq}"
    running = is_running(run_dir)
    now = float((summary or {}).get("ended") or 0) or (time.time() if running else 0.0)
    for seq, ev in open_.items():
        a = Attempt(seq, str(ev.get("host", "")), int(ev.get("attempt") or 0), float(ev.get("ready") or 0),
                    float(ev.get("start") or 0), 0.0, RUNNING, error="running" if running else "in flight when the run stopped")
        jobs[seq].attempts.append(a)
        attempts.append(a)
    start = float(meta.get("started") or (summary or {}).get("started") or
                  min((a.ready or a.start for a in attempts), default=0.0))
    end = now or max((a.end for a in attempts), default=start)
    for a in attempts:
        if a.state == RUNNING:
            a.end = max(end, a.start)
    if full:   # lanes and stderr tails are the page's; trace.tsv needs neither (nor a sort of every attempt)
        _assign_lanes(attempts, {h["name"]: int(h.get("slots") or 1) for h in hosts})
        _read_tails(run_dir, attempts)
    return RunData(run_dir, meta, summary, hosts, plan_root, jobs, attempts, start, end, running)


def _assign_lanes(attempts: list[Attempt], slots: dict[str, int]) -> None:
    """Give each attempt a slot lane on its host: the first lane free at its start (greedy interval colouring
    reproduces the slots a host had, since it never ran more at once)."""
    by_host: dict[str, list[Attempt]] = {}
    for a in attempts:
        by_host.setdefault(a.host, []).append(a)
    for host, items in by_host.items():
        free_at: list[float] = [0.0] * max(slots.get(host, 1), 1)
        for a in sorted(items, key=lambda x: (x.start, x.end)):
            lane = next((i for i, t in enumerate(free_at) if t <= a.start + 0.0005), None)
            if lane is None:   # clock rounding: more at once than slots; give it a lane of its own
                lane = len(free_at)
                free_at.append(0.0)
            free_at[lane] = a.end
            a.lane = lane


def _read_tails(run_dir: Path, attempts: list[Attempt], lines: int = 8, limit: int = 4096) -> None:
    n = 0
    for a in attempts:
        if a.state in (OK, RUNNING) or not a.stderr or n >= TAIL_FILES:
            continue
        n += 1
        try:
            with open(run_dir / a.stderr, "rb") as f:
                f.seek(max(a.err_bytes - limit, 0))
                text = f.read(limit).decode("utf-8", "replace")
            a.stderr = "\n".join(text.rstrip().splitlines()[-lines:])
        except OSError:
            a.stderr = ""
    for a in attempts:
        if a.state in (OK, RUNNING):
            a.stderr = ""


# ------------------------------------------------------------------ derived figures

def host_figures(data: RunData) -> list[dict[str, Any]]:
    slots = {h["name"]: int(h.get("slots") or 1) for h in data.hosts}
    rows: dict[str, dict[str, Any]] = {}
    for h in data.hosts:
        rows[h["name"]] = {"host": h["name"], "slots": slots[h["name"]], "jobs": 0, "busy": 0.0, "failures": 0,
                           "bytes": 0}
    for a in data.attempts:
        r = rows.setdefault(a.host, {"host": a.host, "slots": slots.get(a.host, 1), "jobs": 0, "busy": 0.0,
                                     "failures": 0, "bytes": 0})
        r["jobs"] += 1
        r["busy"] += max(a.end - a.start, 0.0)
        r["failures"] += a.state in (FAILED, RETRIED)
        r["bytes"] += a.out_bytes + a.err_bytes + a.sent + a.fetched
    wall = data.wall or 1e-9
    out = []
    for r in rows.values():
        if r["jobs"] == 0 and not any(h["name"] == r["host"] for h in data.hosts):
            continue
        r["busy_pct"] = round(100.0 * r["busy"] / (r["slots"] * wall), 1)
        r["busy"] = round(r["busy"], 3)
        out.append(r)
    return out


def _operands(node: dict[str, Any]) -> list[dict[str, Any]]:
    # a deferred call or a local function ("op": "call" / "local") waits for its inputs
    return node.get("items") or node.get("inputs") or []


def critical_path(data: RunData) -> list[int]:
    """The chain of jobs that decided the run's end: every step of a Seq, the latest-finishing operand of a
    Par or Sum. Jobs that did not run in this run (cached, never started) count as finishing at once."""
    root = data.plan_root
    if root is None:
        return []

    def finish(seq: int) -> float:
        last = data.jobs[seq].last if seq in data.jobs else None
        return last.end if last else 0.0

    memo: dict[int, tuple[float, list[int]]] = {}

    def walk(node: dict[str, Any]) -> tuple[float, list[int]]:
        key = id(node)
        if key in memo:
            return memo[key]
        if "job" in node:
            got = (finish(node["job"]), [node["job"]])
        elif node["op"] == "seq":
            path: list[int] = []
            end = 0.0
            for item in _operands(node):
                e, p = walk(item)
                path += p
                end = max(end, e)
            got = (end, path)
        else:
            got = max((walk(item) for item in _operands(node)), key=lambda t: t[0], default=(0.0, []))
        memo[key] = got
        return got

    seen: set[int] = set()
    return [s for s in walk(root)[1] if not (s in seen or seen.add(s))]
