"""The status of a calculation, from its run directory alone.

While a run goes, ``StatusLog`` (an executor observer) appends one JSON line
per state change to ``events.jsonl``, flushed before the event loop next waits
(cmflow/flushing.py: one write for all the lines of a turn): a job started on a host,
its files staging / running / fetching, its end with the bytes sent and
fetched. ``read_status`` folds those lines (and ``summary.json`` once the run
has ended) into per-host figures, so ``cmflow status`` works from another
terminal while the run goes, or long after, and never talks to the executor.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .errors import UsageError
from .flushing import flush_soon, forget
from .jsonfmt import boolean as _b, value as _v
from .rundir import is_running

EVENTS = "events.jsonl"
_DUMPS = json.dumps
_OK, _CACHED = "ok", "cached"    # a job's final word in read_status, when it needs no more
STATES = ("waiting", "staging", "running", "fetching", "done", "failed")


class StatusLog:
    """Executor observer: one line per event in ``RUN_DIR/events.jsonl``, flushed once per loop turn."""

    def __init__(self, run_dir: Path, total: int, slots: dict[str, int]):
        self._f = open(run_dir / EVENTS, "w", encoding="utf-8")
        self._write({"e": "run", "jobs": total, "hosts": slots, "pid": os.getpid()})

    def _write(self, doc: dict) -> None:
        if self._f.closed:
            return
        doc["t"] = round(time.time(), 3)
        self._f.write(json.dumps(doc) + "\n")
        flush_soon(self)

    def flush(self) -> None:
        if not self._f.closed:
            self._f.flush()

    def _line(self, line: str) -> None:
        if not self._f.closed:
            self._f.write(line)
            flush_soon(self)

    # the two lines of every job: json.dumps of the dict _write would write, formatted directly (jsonfmt.py)
    def job_started(self, job: Any, host: str, attempt: int) -> None:
        self._line(f'{{"e": "start", "job": {_v(job.id, _DUMPS)}, "host": {_v(host, _DUMPS)}, '
                   f'"attempt": {_v(attempt, _DUMPS)}, "files": {"true" if job.files else "false"}, '
                   f'"t": {_v(round(time.time(), 3), _DUMPS)}}}\n')

    def job_cached(self, job: Any) -> None:
        self._write({"e": "cached", "job": job.id, "label": job.label})

    def job_files(self, job: Any, host: str, attempt: int, state: str, sent: int, fetched: int) -> None:
        self._write({"e": "files", "job": job.id, "host": host, "attempt": attempt, "state": state,
                     "sent": sent, "fetched": fetched})

    def job_ended(self, rec: Any, final: bool, ok: bool) -> None:
        self._line(f'{{"e": "end", "job": {_v(rec.seq, _DUMPS)}, "host": {_v(rec.host, _DUMPS)}, '
                   f'"attempt": {_v(rec.attempt, _DUMPS)}, "ok": {_b(ok, _DUMPS)}, "final": {_b(final, _DUMPS)}, '
                   f'"label": {_v(rec.label, _DUMPS)}, "error": {_v(rec.error, _DUMPS)}, '
                   f'"sent": {_v(rec.bytes_sent, _DUMPS)}, "fetched": {_v(rec.bytes_fetched, _DUMPS)}, '
                   f'"t": {_v(round(time.time(), 3), _DUMPS)}}}\n')

    def host_down(self, host: str, reason: str) -> None:
        self._write({"e": "down", "host": host, "reason": reason})

    def close(self) -> None:
        forget(self)
        if not self._f.closed:
            self._f.close()


@dataclass
class HostStatus:
    slots: int = 0
    staging: int = 0
    running: int = 0
    fetching: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    bytes_sent: int = 0
    bytes_fetched: int = 0
    down: str = ""


@dataclass
class Status:
    run_dir: str
    finished: bool
    ok: bool | None
    total: int
    waiting: int
    done: int
    failed: int
    cached: int
    elapsed: float
    eta: float | None
    hosts: dict[str, HostStatus] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    killed: bool = False      # not finished, and no cmflow runs in it any more (SIGKILL, a crash)

    def to_json(self) -> dict:
        return asdict(self)


def latest_run() -> Path:
    """The newest run under ./runs (``runs/latest`` when it points at one)."""
    from .rundir import latest_run as newest

    found = newest()
    if found is None:
        raise UsageError("no run directory under runs/ (give one: cmflow status RUN_DIR)")
    return found


def read_status(run_dir: Path, now: float | None = None) -> Status:
    events = run_dir / EVENTS
    if not events.is_file():
        raise UsageError(f"{run_dir}: not a run directory with status (no {EVENTS})")
    # asked before summary.json is read: a run writes its summary before it lets go of its lock, so a
    # run seen not running here and without a summary below was stopped, not finished
    alive = is_running(run_dir)
    total, started = 0, None
    hosts: dict[str, HostStatus] = {}
    live: dict[tuple[int, int], tuple[str, str, int, int]] = {}   # (job, attempt) -> host, state, sent, fetched
    # each job's final word: _OK, _CACHED or (a failure) what `failures` shows of it; a run of a
    # million jobs must not keep a million events
    ended: dict[int, Any] = {}
    with open(events, encoding="utf-8") as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue   # a line being written right now
            kind = ev.get("e")
            if kind == "run":
                total, started = ev.get("jobs", 0), ev.get("t")
                for name, slots in ev.get("hosts", {}).items():
                    hosts[name] = HostStatus(slots=slots)
                continue
            host = hosts.setdefault(ev["host"], HostStatus()) if "host" in ev else HostStatus()
            key = (ev.get("job"), ev.get("attempt"))
            if kind == "start":
                live[key] = (ev["host"], "staging" if ev.get("files") else "running", 0, 0)
            elif kind == "files" and key in live:
                live[key] = (ev["host"], ev["state"], ev.get("sent", 0), ev.get("fetched", 0))
            elif kind == "end":
                live.pop(key, None)
                host.bytes_sent += ev.get("sent", 0)
                host.bytes_fetched += ev.get("fetched", 0)
                if ev.get("final"):
                    ended[ev["job"]] = _OK if ev.get("ok") else (ev["job"], ev.get("label"), ev.get("host"),
                                                                 ev.get("error"))
                    if ev.get("ok"):
                        host.done += 1
                    else:
                        host.failed += 1
                else:
                    host.retried += 1
            elif kind == "cached":   # reused from an earlier run (--resume): done, on no host
                ended[ev["job"]] = _CACHED
                continue
            elif kind == "down":
                host.down = ev.get("reason", "down")
    for name, state, sent, fetched in live.values():
        h = hosts.setdefault(name, HostStatus())
        setattr(h, state, getattr(h, state) + 1)
        h.bytes_sent += sent
        h.bytes_fetched += fetched
    summary = _summary(run_dir)
    finished = summary is not None
    killed = not finished and not alive
    now = now or time.time()
    end = os.stat(events).st_mtime if finished or killed else now
    elapsed = max(end - (started or end), 0.0)
    done = sum(1 for e in ended.values() if e is _OK or e is _CACHED)
    failed = len(ended) - done
    waiting = 0 if finished else max(total - len(ended) - len({k[0] for k in live}), 0)
    total = max(total, len(ended) + len({k[0] for k in live}))   # a deferred call equal to a planned job
    remaining = total - len(ended)
    eta = None
    if not finished and not killed and ended and remaining > 0:
        eta = elapsed / len(ended) * remaining
    failures = [{"job": e[0], "task": e[1], "host": e[2], "reason": e[3]} for e in ended.values() if type(e) is tuple]
    cached = sum(1 for e in ended.values() if e is _CACHED)
    return Status(str(run_dir), finished, summary.get("ok") if summary else None, total, waiting, done, failed,
                  cached, round(elapsed, 3), round(eta, 1) if eta is not None else None, hosts, failures,
                  killed)


def _summary(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def render_text(st: Status) -> str:
    if st.finished:
        state = "finished " + ("ok" if st.ok else "with failures")
    elif st.killed:
        in_flight = sum(h.staging + h.running + h.fetching for h in st.hosts.values())
        state = f"killed ({in_flight} in flight when it stopped; --resume finishes it)"
    else:
        state = "running"
    eta = f", ETA {st.eta:.0f}s" if st.eta is not None else ""
    reused = f" ({st.cached} reused)" if st.cached else ""
    lines = [f"{st.run_dir}: {state}, {st.done}/{st.total} done{reused}, {st.failed} failed, {st.waiting} waiting, "
             f"{st.elapsed:.1f}s{eta}"]
    head = ("host", "slots", "staging", "running", "fetching", "done", "failed", "sent", "fetched")
    rows = [head]
    for name, h in st.hosts.items():
        rows.append((name + (" (down)" if h.down else ""), str(h.slots), str(h.staging), str(h.running),
                     str(h.fetching), str(h.done), str(h.failed), human_bytes(h.bytes_sent),
                     human_bytes(h.bytes_fetched)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if st.failures:
        lines.append("failed:")
        for f in st.failures:
            lines.append(f"  #{f['job']} {f['task']} on {f['host']}: {f['reason']}")
    return "\n".join(lines) + "\n"


def show(run_dir: str | None, fmt: str = "text", watch: bool = False, out: TextIO | None = None,
         interval: float = 1.0) -> int:
    """``cmflow status``: print once, or refresh until the run ends (``--watch``)."""
    import sys

    out = out or sys.stdout
    if fmt not in ("text", "json"):
        raise UsageError(f"--format for status must be text or json, not {fmt!r}")
    path = Path(run_dir) if run_dir else latest_run()
    if not path.is_dir():
        raise UsageError(f"no such run directory: {path}")
    while True:
        st = read_status(path)
        text = json.dumps(st.to_json()) + "\n" if fmt == "json" else render_text(st)
        if watch and out.isatty():
            out.write("\x1b[H\x1b[2J")
        out.write(text)
        out.flush()
        if not watch or st.finished or st.killed:
            return 0
        time.sleep(interval)
