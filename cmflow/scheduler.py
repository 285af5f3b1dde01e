"""Which ready job gets which host slot, and when; and which hosts are down.

Waiters are served first come, first served: a freed slot goes to the oldest
waiter that may use that host, so no branch of a flow starves. A global cap
(``--jobs N``) bounds the jobs running at once across all hosts.
"""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .hosts import Host


class NoHost(Exception):
    """Every host the job may run on is down."""


class Closed(Exception):
    """The scheduler stopped handing out slots (halt policy)."""


@dataclass(eq=False)   # identity: removing one from the queue must not compare fields
class _Waiter:
    eligible: tuple[str, ...]
    future: asyncio.Future
    avoid: frozenset[str] = frozenset()


@dataclass
class Scheduler:
    hosts: Sequence[Host]
    max_jobs: int | None = None
    free: dict[str, int] = field(init=False)
    down: set[str] = field(default_factory=set, init=False)
    closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.free = {h.name: h.slots for h in self.hosts}
        self._global_free = self.max_jobs if self.max_jobs else sum(self.free.values())
        self._waiters: deque[_Waiter] = deque()

    @property
    def busy(self) -> dict[str, int]:
        return {h.name: h.slots - self.free[h.name] for h in self.hosts}

    def _pick(self, eligible: Iterable[str], avoid: frozenset[str]) -> str | None:
        if self._global_free <= 0:
            return None
        best, best_free, fallback = None, 0, None
        for name in eligible:
            n = self.free[name]
            if n <= 0 or name in self.down:
                continue
            if name in avoid:
                fallback = fallback or name
                continue
            if n > best_free:
                best, best_free = name, n
        # a host that just failed this job is used only if nothing else is free
        return best or (fallback if not self._others_alive(eligible, avoid) else None)

    def _others_alive(self, eligible: Iterable[str], avoid: frozenset[str]) -> bool:
        return any(n not in self.down and n not in avoid for n in eligible)

    def _take(self, name: str) -> str:
        self.free[name] -= 1
        self._global_free -= 1
        return name

    async def acquire(self, eligible: tuple[str, ...], avoid: frozenset[str] = frozenset()) -> str:
        """Wait for a free slot on one of the eligible hosts; return the host's name."""
        if self.closed:
            raise Closed()
        if all(n in self.down for n in eligible):
            raise NoHost()
        if not self._waiters:
            name = self._pick(eligible, avoid)
            if name is not None:
                return self._take(name)
        waiter = _Waiter(eligible, asyncio.get_running_loop().create_future(), avoid)
        self._waiters.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(waiter.future.result())  # granted just as we were cancelled
            elif not waiter.future.done():
                self._waiters.remove(waiter)          # granted waiters were removed by _dispatch
            raise

    def release(self, name: str) -> None:
        self.free[name] += 1
        self._global_free += 1
        self._dispatch()

    def _dispatch(self) -> None:
        for waiter in list(self._waiters):
            if self._global_free <= 0 or not any(n > 0 for n in self.free.values()):
                return   # nothing free anywhere: the rest of the queue waits (keeps release O(1) when busy)
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            if all(n in self.down for n in waiter.eligible):
                self._waiters.remove(waiter)
                waiter.future.set_exception(NoHost())
                continue
            name = self._pick(waiter.eligible, waiter.avoid)
            if name is not None:
                self._waiters.remove(waiter)
                waiter.future.set_result(self._take(name))

    def mark_down(self, name: str) -> None:
        self.down.add(name)
        self._dispatch()

    def close(self) -> None:
        """Start nothing new: every waiter, present and future, gets Closed."""
        self.closed = True
        while self._waiters:
            w = self._waiters.popleft()
            if not w.future.done():
                w.future.set_exception(Closed())
