"""Run directory -> one self-contained HTML report, and trace.tsv.

Reads files only (see data.py); never imports the executor, so it works on a
run that is still going, was killed, or ended long ago.
"""
from __future__ import annotations

import json
import os
import sys
from itertools import chain
from pathlib import Path
from typing import Any, Iterator

from ..runlog import write_atomic
from ..rundir import read_json
from .trace import Unexpected, _esc, trace_lines
from .data import CACHED, FAILED, OK, RETRIED, RUNNING, RunData, critical_path, host_figures, load_run

__all__ = ["write_report", "write_trace", "report_doc", "load_run"]

# Above this many jobs the end of a run writes trace.tsv only: the page is made for up to 100 000
# (see report_doc), and its data for a million would take more memory than the run itself
# (`cmflow report` still writes it on demand).
REPORT_MAX_JOBS = 100_000
STATE_CODES = {OK: 0, FAILED: 1, RETRIED: 2, RUNNING: 3, CACHED: 4}
VALUE_CHARS = 400


def _r(t: float, t0: float) -> float:
    return round(t - t0, 3)


def report_doc(data: RunData) -> dict[str, Any]:
    """The report's data as compact rows (the page reads it once; columns keep 100 000 jobs small)."""
    t0 = data.start
    hosts = [h["name"] for h in data.hosts]
    host_idx = {h: i for i, h in enumerate(hosts)}
    for a in data.attempts:
        if a.host not in host_idx:
            host_idx[a.host] = len(hosts)
            hosts.append(a.host)
    slots = {h["name"]: int(h.get("slots") or 1) for h in data.hosts}
    tasks: dict[str, int] = {}
    job_index: dict[int, int] = {}
    jobs = []
    for i, (seq, j) in enumerate(sorted(data.jobs.items())):
        job_index[seq] = i
        last = j.last
        first = j.attempts[0] if j.attempts else None
        wait = round(max(first.start - first.ready, 0.0), 3) if first and first.ready else None
        run = round(sum(max(a.end - a.start, 0.0) for a in j.attempts), 3) if j.attempts else None
        jobs.append([seq, j.label, tasks.setdefault(j.task, len(tasks)), j.state, last.host if last else "",
                     len(j.attempts), wait, run, last.exit if last else None,
                     (last.error if last else "") if j.state != OK else "", j.command, j.where])
    attempts = []
    phases = []
    for k, a in enumerate(data.attempts):
        attempts.append([job_index[a.seq], host_idx[a.host], a.lane, _r(a.ready, t0) if a.ready else None,
                         _r(a.start, t0), _r(a.end, t0), STATE_CODES[a.state], a.exit, a.attempt, a.stderr,
                         a.error])
        for name, span in a.phases.items():
            if name != "running" and isinstance(span, list) and len(span) == 2:
                phases.append([k, name, _r(span[0], t0), _r(span[1], t0)])
    lanes: dict[str, int] = {}
    for a in data.attempts:
        lanes[a.host] = max(lanes.get(a.host, 0), a.lane + 1)
    s = data.summary or {}
    value = json.dumps(s.get("value"), default=repr) if "value" in s else ""
    counts = {st: 0 for st in ("ok", "failed", "cached", "running", "not run")}
    for j in data.jobs.values():
        counts[j.state] = counts.get(j.state, 0) + 1
    return {
        "summary": {
            "flow": data.meta.get("flow") or "", "argv": data.meta.get("argv") or [], "run": data.dir.name,
            "start": data.start, "end": data.end, "wall": round(data.wall, 3),
            "state": "running" if data.running else ("killed" if data.summary is None else
                                                      "cancelled" if s.get("cancelled") else
                                                      "ok" if s.get("ok") else "failed"),
            "jobs": len(data.jobs), "counts": counts, "attempts": len(data.attempts),
            "hosts_used": sorted({a.host for a in data.attempts}),
            "value": value if len(value) <= VALUE_CHARS else value[:VALUE_CHARS - 1] + "…",
            "failures": s.get("failures", []), "resumed_from": data.meta.get("resumed_from"),
        },
        "hosts": [[h, slots.get(h, 1), max(lanes.get(h, 0), slots.get(h, 1) if h in slots else 0)] for h in hosts],
        "tasks": list(tasks),
        "jobs": jobs,
        "attempts": attempts,
        "phases": phases,
        "hostFigures": host_figures(data),
        "critical": [job_index[s] for s in critical_path(data) if s in job_index],
        "plan": data.plan_root,
    }


def write_report(run_dir: Path, out: Path | None = None) -> Path:
    out = out or run_dir / "report.html"
    _write_page(out, report_doc(load_run(run_dir)))
    return out


def _write_page(out: Path, doc: dict[str, Any]) -> None:
    from .html import render   # not imported by runs with --no-report

    write_atomic(out, render(doc))
    os.chmod(out, 0o644)   # a report is made to be shared (the temp file it was written as is private)


TRACE_COLUMNS = ("Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal", "Task", "Key",
                 "State", "Attempts", "Ready", "Wait", "Staging", "Running", "Fetching", "BytesSent", "BytesFetched",
                 "Command")


def write_trace(run_dir: Path, data: RunData | None = None) -> Path:
    """trace.tsv: one row per job (its last attempt), the joblog's columns and more; the command last,
    with tab and newline written as \\t and \\n. Without ``data``, in one pass over the journal that
    keeps no object per job (trace.py), unless the run directory needs the whole reader."""
    out = run_dir / "trace.tsv"
    if data is None:
        rows = trace_lines(run_dir)
        if rows is not None:
            try:
                write_atomic(out, chain(["\t".join(TRACE_COLUMNS) + "\n"], rows))
                return out
            except Unexpected:
                pass    # plan.json's jobs out of order: the reference reader below
        data = load_run(run_dir, full=False)
    write_atomic(out, _trace_lines(data))
    return out


def _trace_lines(data: RunData) -> Iterator[str]:
    yield "\t".join(TRACE_COLUMNS) + "\n"
    for seq in sorted(data.jobs):
        j = data.jobs[seq]
        a = j.last
        if a is None:
            yield "\t".join([str(seq), "", "0.000", "0.000", "0", "0", "-1", "0", j.task, j.key, j.state,
                             "0", "", "", "", "", "", "0", "0", _esc(j.command)]) + "\n"
            continue
        first = j.attempts[0]
        stage = a.phases.get("staging")
        fetch = a.phases.get("fetching")
        run = a.phases.get("running") or [a.start, a.end]

        def span(p: Any) -> str:
            return f"{p[1] - p[0]:.3f}" if isinstance(p, list) and len(p) == 2 else ""

        exitval = a.exit if a.exit is not None else -1
        yield "\t".join([
            str(seq), a.host, f"{a.start:.3f}", f"{max(a.end - a.start, 0):.3f}", str(sum(x.sent for x in j.attempts)),
            str(a.out_bytes), str(exitval), str(a.signal), j.task, j.key, j.state, str(len(j.attempts)),
            f"{first.ready:.3f}" if first.ready else "", f"{max(first.start - first.ready, 0):.3f}" if first.ready else "",
            span(stage), span(run), span(fetch), str(sum(x.sent for x in j.attempts)),
            str(sum(x.fetched for x in j.attempts)), _esc(j.command)]) + "\n"


def finish_run(run_dir: Path, report: bool = True) -> None:
    """At the end of every run: trace.tsv, and report.html unless the user said --no-report
    or the run has more than REPORT_MAX_JOBS jobs (then a line on stderr says so)."""
    jobs = int((read_json(run_dir / "run.json") or {}).get("jobs") or 0)
    if report and jobs > REPORT_MAX_JOBS:
        sys.stderr.write(f"cmflow: report.html not written at the end of a run of {jobs} jobs (more than "
                         f"{REPORT_MAX_JOBS}); `cmflow report {run_dir}` writes it\n")
        report = False
    if not report:   # the trace alone: streamed, whatever the run's size
        write_trace(run_dir)
        return
    data = load_run(run_dir)
    write_trace(run_dir, data)
    _write_page(run_dir / "report.html", report_doc(data))
