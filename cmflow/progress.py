"""What a run shows while it runs: a live display on a terminal, plain lines elsewhere.

Both are executor observers; events flow one way, executor to display.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from .hosts import Inventory
from .plan import Job
from .runlog import JobRecord
from .status import human_bytes


class _Counts:
    def __init__(self, total: int, inventory: Inventory):
        self.total = total
        self.done = self.failed = self.running = self.cached = 0
        self.busy = {h.name: 0 for h in inventory.hosts}
        self.slots = {h.name: h.slots for h in inventory.hosts}
        self.down: set[str] = set()
        self.started = time.monotonic()
        # jobs with files: (job, attempt) -> (host, staging | running | fetching); bytes moved per host
        self.phase: dict[tuple[int, int], tuple[str, str]] = {}
        self.sent = {h.name: 0 for h in inventory.hosts}
        self.fetched = {h.name: 0 for h in inventory.hosts}

    def cache(self) -> None:
        self.cached += 1
        self.done += 1

    def start(self, host: str) -> None:
        self.running += 1
        self.busy[host] += 1

    def files(self, job: Job, host: str, attempt: int, state: str) -> None:
        self.phase[(job.id, attempt)] = (host, state)

    def in_phase(self, state: str, host: str | None = None) -> int:
        return sum(1 for h, s in self.phase.values() if s == state and (host is None or h == host))

    def end(self, rec: JobRecord, final: bool, ok: bool) -> None:
        if self.phase.pop((rec.seq, rec.attempt), None) is not None:
            self.sent[rec.host] = self.sent.get(rec.host, 0) + rec.bytes_sent
            self.fetched[rec.host] = self.fetched.get(rec.host, 0) + rec.bytes_fetched
        self.running -= 1
        self.busy[rec.host] -= 1
        if final:
            self.done += 1
            self.failed += not ok

    def eta(self) -> str:
        elapsed = time.monotonic() - self.started
        ran = self.done - self.cached    # reused results took no time: they must not speed up the ETA
        if not ran or self.done >= self.total:
            return "-"
        return f"{elapsed / ran * (self.total - self.done):.0f}s"


def _of(rec: JobRecord, attempt: int | None = None) -> str:
    """`attempt` (default the record's) of the attempts the user allowed; past them (a connection lost
    does not use up --retries: failover gives more) the number alone, never "attempt 2/1"."""
    n = rec.attempt if attempt is None else attempt
    return f"{n}/{rec.attempts}" if rec.attempts and not rec.connection_failed and n <= rec.attempts else str(n)


class PlainProgress:
    """One line per finished job (and per host marked down), for logs and pipes."""

    def __init__(self, total: int, inventory: Inventory, stream: TextIO = sys.stderr):
        self.c = _Counts(total, inventory)
        self.stream = stream

    def job_cached(self, job: Job) -> None:
        self.c.cache()
        self.stream.write(f"[{self.c.done}/{self.c.total}] cached #{job.id} {job.label}\n")
        self.stream.flush()

    def job_started(self, job: Job, host: str, attempt: int) -> None:
        self.c.start(host)

    def job_ended(self, rec: JobRecord, final: bool, ok: bool) -> None:
        self.c.end(rec, final, ok)
        why = f" ({rec.error})" if rec.error else ""
        if not final and not ok:
            # the attempt that comes next, counted as the user set it: --retries 2 is attempts 1/3..3/3
            nxt = f"attempt {_of(rec, rec.attempt + 1)}"
            self.stream.write(f"[{self.c.done}/{self.c.total}] retry {rec.label}: attempt {_of(rec)} on {rec.host} "
                              f"{rec.runtime:.2f}s{why}; {nxt} next\n")
        else:
            tries = f", attempt {_of(rec)}" if rec.attempt > 1 else ""
            self.stream.write(f"[{self.c.done}/{self.c.total}] {'ok' if ok else 'FAILED'} #{rec.seq} {rec.label} "
                              f"on {rec.host} {rec.runtime:.2f}s{tries}{why}\n")
        self.stream.flush()

    def host_down(self, host: str, reason: str) -> None:
        self.c.down.add(host)
        self.stream.write(f"host {host} marked down: {reason}\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class LiveProgress:
    """A rich live display: done / running / failed / total, busy slots per host, ETA."""

    def __init__(self, total: int, inventory: Inventory, stream: TextIO = sys.stderr):
        from rich.console import Console
        from rich.live import Live

        self.c = _Counts(total, inventory)
        self.console = Console(file=stream)
        self.live = Live(self._render(), console=self.console, refresh_per_second=8, transient=True,
                         get_renderable=self._render)
        self.live.start()

    def _render(self):
        from rich.table import Table

        c = self.c
        t = Table.grid(padding=(0, 2))
        staging, fetching = c.in_phase("staging"), c.in_phase("fetching")
        moving = [f"{staging} staging", f"{fetching} fetching"] if c.phase or any(c.sent.values()) else []
        t.add_row(f"[bold]{c.done}[/]/{c.total} done" + (f" ({c.cached} cached)" if c.cached else ""),
                  *moving, f"{c.running - staging - fetching} running",
                  f"[red]{c.failed} failed[/]" if c.failed else "0 failed", f"ETA {c.eta()}")
        hosts = Table.grid(padding=(0, 2))
        for name, busy in list(c.busy.items())[:24]:
            state = "[red]down[/]" if name in c.down else f"{busy}/{c.slots[name]}"
            # ↑ staging, ↓ fetching, █ running, · free
            up, down = c.in_phase("staging", name), c.in_phase("fetching", name)
            bar = "↑" * up + "↓" * down + "█" * max(busy - up - down, 0) + "·" * (c.slots[name] - busy)
            extra = [f"sent {human_bytes(c.sent[name])}, fetched {human_bytes(c.fetched[name])}"] if moving else []
            hosts.add_row(name, bar if c.slots[name] <= 32 else "", state, *extra)
        outer = Table.grid()
        outer.add_row(t)
        outer.add_row(hosts)
        return outer

    def job_cached(self, job: Job) -> None:
        self.c.cache()

    def job_started(self, job: Job, host: str, attempt: int) -> None:
        self.c.start(host)

    def job_files(self, job: Job, host: str, attempt: int, state: str, sent: int, fetched: int) -> None:
        self.c.files(job, host, attempt, state)

    def job_ended(self, rec: JobRecord, final: bool, ok: bool) -> None:
        self.c.end(rec, final, ok)
        if final and not ok:
            self.console.print(f"[red]failed[/] #{rec.seq} {rec.label} on {rec.host}: {rec.error}")

    def host_down(self, host: str, reason: str) -> None:
        self.c.down.add(host)
        self.console.print(f"[red]host {host} marked down[/]: {reason}")

    def close(self) -> None:
        self.live.stop()
