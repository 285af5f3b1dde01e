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


class _Counts:
    def __init__(self, total: int, inventory: Inventory):
        self.total = total
        self.done = self.failed = self.running = self.cached = 0
        self.busy = {h.name: 0 for h in inventory.hosts}
        self.slots = {h.name: h.slots for h in inventory.hosts}
        self.down: set[str] = set()
        self.started = time.monotonic()

    def cache(self) -> None:
        self.cached += 1
        self.done += 1

    def start(self, host: str) -> None:
        self.running += 1
        self.busy[host] += 1

    def end(self, rec: JobRecord, final: bool, ok: bool) -> None:
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


def _of(rec: JobRecord) -> str:
    return f"{rec.attempt}/{rec.attempts}" if rec.attempts and not rec.connection_failed else str(rec.attempt)


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
            nxt = f"attempt {rec.attempt + 1}" + (f"/{rec.attempts}" if rec.attempts and not rec.connection_failed
                                                  else "")
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
        t.add_row(f"[bold]{c.done}[/]/{c.total} done" + (f" ({c.cached} cached)" if c.cached else ""),
                  f"{c.running} running",
                  f"[red]{c.failed} failed[/]" if c.failed else "0 failed", f"ETA {c.eta()}")
        hosts = Table.grid(padding=(0, 2))
        for name, busy in list(c.busy.items())[:24]:
            state = "[red]down[/]" if name in c.down else f"{busy}/{c.slots[name]}"
            hosts.add_row(name, "█" * busy + "·" * (c.slots[name] - busy) if c.slots[name] <= 32 else "", state)
        outer = Table.grid()
        outer.add_row(t)
        outer.add_row(hosts)
        return outer

    def job_cached(self, job: Job) -> None:
        self.c.cache()

    def job_started(self, job: Job, host: str, attempt: int) -> None:
        self.c.start(host)

    def job_ended(self, rec: JobRecord, final: bool, ok: bool) -> None:
        self.c.end(rec, final, ok)
        if final and not ok:
            self.console.print(f"[red]failed[/] #{rec.seq} {rec.label} on {rec.host}: {rec.error}")

    def host_down(self, host: str, reason: str) -> None:
        self.c.down.add(host)
        self.console.print(f"[red]host {host} marked down[/]: {reason}")

    def close(self) -> None:
        self.live.stop()
