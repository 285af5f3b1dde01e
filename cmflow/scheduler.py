"""Which ready job gets which host slot, and when; and which hosts are down.

Jobs that may run on the same hosts form one eligibility class (``Eligible``:
one per distinct target of a flow, interned by host set). Each class keeps
its requests in a FIFO and the hosts it may use that have a free slot in a
rotating free list, so granting a slot costs O(1) amortised in pending jobs
and hosts:

- a request whose class has a free host and nobody waiting is granted at once;
- a released slot on host H is offered to the classes containing H only, and
  goes to the oldest head among them (a global sequence number orders heads),
  so no branch starves and the queue is first come, first served;
- when the global cap (``--jobs N``) is what held everyone back, a release
  may serve any class: the oldest head among classes with waiters and a
  free host wins (a scan over classes, not over jobs or hosts).

The invariant that makes this enough: no waiting request could be granted
with what is free right now. Stale entries (a host whose slots were taken
by another class, a host marked down, a cancelled request) are dropped
lazily when they reach the front, each once.

A request is a small object, not a Task: the executor subclasses
``Request`` and is called back (``granted`` / ``refused``); ``acquire`` wraps
the same in a Future for coroutine callers. A worker that finishes a job calls
``handoff``: the oldest request that may use that very slot comes back to it
directly (no release, no grant, no new Task), else the slot is released.
"""
from __future__ import annotations

import asyncio
import heapq
from collections import deque
from typing import Iterable, Sequence

from .hosts import Host


class NoHost(Exception):
    """Every host the job may run on is down."""


class Closed(Exception):
    """The scheduler stopped handing out slots (halt policy)."""


class Request:
    """One job waiting for a slot. Subclass and override ``granted``/``refused``."""

    __slots__ = ("seq", "base", "cancelled")

    def __init__(self) -> None:
        self.seq = 0
        self.base: Eligible | None = None   # the class asked for (before avoiding hosts)
        self.cancelled = False

    def granted(self, host: str) -> None:
        raise NotImplementedError

    def refused(self, error: Exception) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop waiting; the entry is dropped when it reaches the front of its queue."""
        self.cancelled = True


class _FutureRequest(Request):
    __slots__ = ("future", "scheduler")

    def __init__(self, future: asyncio.Future, scheduler: "Scheduler") -> None:
        super().__init__()
        self.future = future
        self.scheduler = scheduler

    def granted(self, host: str) -> None:
        if self.future.done():   # cancelled before its waiter woke up: hand the slot back
            self.future.get_loop().call_soon(self.scheduler.release, host)
        else:
            self.future.set_result(host)

    def refused(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class Eligible:
    """An eligibility class: a set of hosts, its FIFO of requests, its free hosts."""

    __slots__ = ("names", "members", "waiters", "free", "queued", "alive")

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.members = frozenset(names)
        self.waiters: deque[Request] = deque()
        self.free: deque[str] = deque()     # hosts that had a free slot when offered; each at most once
        self.queued: set[str] = set()       # which hosts are in self.free
        self.alive = len(names)             # hosts not marked down

    def head(self) -> Request | None:
        waiters = self.waiters
        while waiters and waiters[0].cancelled:
            waiters.popleft()
        return waiters[0] if waiters else None

    def offer(self, name: str) -> None:
        if name not in self.queued:
            self.queued.add(name)
            self.free.append(name)


class Scheduler:
    def __init__(self, hosts: Sequence[Host], max_jobs: int | None = None):
        self.hosts = hosts
        self.max_jobs = max_jobs
        self.free: dict[str, int] = {h.name: h.slots for h in hosts}
        self.down: set[str] = set()
        self.closed = False
        self._global_free = max_jobs if max_jobs else sum(self.free.values())
        self._classes: dict[frozenset[str], Eligible] = {}
        self._classes_of: dict[str, list[Eligible]] = {h.name: [] for h in hosts}
        self._active: dict[Eligible, None] = {}     # classes that may have waiters (ordered set)
        self._seq = 0

    @property
    def busy(self) -> dict[str, int]:
        return {h.name: h.slots - self.free[h.name] for h in self.hosts}

    # ------------------------------------------------------------ classes
    def eligible(self, names: Iterable[str]) -> Eligible:
        """The class of jobs that may run on these hosts (one object per host set)."""
        names = tuple(dict.fromkeys(names))
        key = frozenset(names)
        c = self._classes.get(key)
        if c is None:
            c = self._classes[key] = Eligible(names)
            for n in names:
                self._classes_of[n].append(c)
                if n in self.down:
                    c.alive -= 1
                elif self.free[n] > 0:
                    c.offer(n)
        return c

    def _class_for(self, base: Eligible, avoid: frozenset[str]) -> Eligible:
        """Hosts that just failed a job are used only if nothing else that may run it is up."""
        if not avoid:
            return base
        others = [n for n in base.names if n not in avoid and n not in self.down]
        return self.eligible(others) if others else base

    def _take_from(self, c: Eligible) -> str | None:
        """A free host of the class, rotating among them; None if there is none."""
        free, free_slots, down = c.free, self.free, self.down
        while free:
            name = free[0]
            if free_slots[name] > 0 and name not in down:
                if free_slots[name] > 1:
                    free.rotate(-1)          # round robin: spread jobs over the class's hosts
                else:
                    free.popleft()
                    c.queued.discard(name)
                return name
            free.popleft()
            c.queued.discard(name)
        return None

    def _has_free(self, c: Eligible) -> bool:
        free, free_slots, down = c.free, self.free, self.down
        while free:
            name = free[0]
            if free_slots[name] > 0 and name not in down:
                return True
            free.popleft()
            c.queued.discard(name)
        return False

    # ------------------------------------------------------------ requests
    def request(self, req: Request, base: Eligible, avoid: frozenset[str] = frozenset()) -> None:
        """Queue a request; it is granted (maybe at once) or refused through its callbacks."""
        if self.closed:
            req.refused(Closed())
            return
        if not base.alive:
            req.refused(NoHost())
            return
        c = self._class_for(base, avoid) if avoid else base
        req.base = base
        if self._global_free > 0 and c.head() is None:
            name = self._take_from(c)
            if name is not None:
                self._grant(req, name)
                return
        self._seq += 1
        req.seq = self._seq
        c.waiters.append(req)
        self._active[c] = None

    async def acquire(self, eligible: Iterable[str] | Eligible, avoid: frozenset[str] = frozenset()) -> str:
        """Wait for a free slot on one of the eligible hosts; return the host's name."""
        base = eligible if isinstance(eligible, Eligible) else self.eligible(eligible)
        req = _FutureRequest(asyncio.get_running_loop().create_future(), self)
        self.request(req, base, avoid)
        try:
            return await req.future
        except asyncio.CancelledError:
            req.cancel()
            if req.future.done() and not req.future.cancelled() and req.future.exception() is None:
                self.release(req.future.result())   # granted just as we were cancelled
            raise

    def _grant(self, req: Request, name: str) -> None:
        self.free[name] -= 1
        self._global_free -= 1
        req.granted(name)

    def release(self, name: str) -> None:
        """A job on host ``name`` ended: its slot goes to the oldest request that may use it."""
        capped = self._global_free <= 0
        self.free[name] += 1
        self._global_free += 1
        if name in self.down:
            return
        classes = self._classes_of[name]
        for c in classes:
            c.offer(name)
        if not self.closed:
            # the global cap held everyone back: any class may be served now
            self._dispatch(list(self._active) if capped else classes)

    def handoff(self, name: str) -> Request | None:
        """A job on host ``name`` ended: return the oldest request that may use this very slot, which
        keeps it (the caller runs that job next), or release the slot and return None."""
        if self.closed or name in self.down:
            self.release(name)
            return None
        if self._global_free <= 0:
            # the cap is what holds requests back: the oldest one anywhere that could run now,
            # on this slot or on a free one, is next
            best = self._oldest(list(self._active), name)
        else:
            best = self._oldest(self._classes_of[name], name)
        if best is None or name not in best.members:
            self.release(name)   # hands the slot (or the cap's share) to whoever may use it
            return None
        return best.waiters.popleft()

    def _oldest(self, classes: Iterable[Eligible], holding: str | None) -> Eligible | None:
        """The class whose head request is the oldest that could be granted (``holding``: a slot that is
        about to be free counts as free)."""
        best: Eligible | None = None
        best_seq = 0
        for c in classes:
            head = c.head()
            if head is None:
                self._active.pop(c, None)
            elif (best is None or head.seq < best_seq) and \
                    ((holding is not None and holding in c.members) or self._has_free(c)):
                best, best_seq = c, head.seq
        return best

    def _dispatch(self, classes: Iterable[Eligible]) -> None:
        while self._global_free > 0:
            best = self._oldest(classes, None)
            if best is None:
                return
            req = best.waiters.popleft()
            name = self._take_from(best)
            assert name is not None
            self._grant(req, name)

    def mark_down(self, name: str) -> None:
        """Start nothing more on this host; requests that have nowhere left to go are refused."""
        if name in self.down:
            return
        self.down.add(name)
        for c in self._classes_of[name]:
            c.alive -= 1
            if c.alive == 0:
                self._strand(c)

    def _strand(self, c: Eligible) -> None:
        """Every host of c is down: its requests fall back to the hosts they avoided, or fail."""
        waiters, c.waiters = c.waiters, deque()
        self._active.pop(c, None)
        for req in waiters:
            if req.cancelled:
                continue
            base = req.base
            if base is not None and base is not c and base.alive:
                # keep FIFO order: merge by sequence number into the class it came from (rare)
                base.waiters = deque(heapq.merge(base.waiters, [req], key=lambda r: r.seq))
                self._active[base] = None
                if base.head() is req and self._global_free > 0 and self._has_free(base):
                    base.waiters.popleft()
                    self._grant(req, self._take_from(base))   # type: ignore[arg-type]
            else:
                req.refused(NoHost())

    def close(self) -> None:
        """Start nothing new: every request, present and future, is refused with Closed."""
        self.closed = True
        for c in list(self._active):
            waiters, c.waiters = c.waiters, deque()
            for req in waiters:
                if not req.cancelled:
                    req.refused(Closed())
        self._active.clear()
