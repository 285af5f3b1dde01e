"""The scheduler: FIFO across eligibility classes, placement, global cap, down hosts, failover."""
from __future__ import annotations

import asyncio

import pytest

from cmflow.hosts import Host
from cmflow.scheduler import Closed, NoHost, Request, Scheduler


class Rec(Request):
    """A request that notes what it got."""

    __slots__ = ("name", "log")

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log

    def granted(self, host: str) -> None:
        self.log.append((self.name, host))

    def refused(self, error: Exception) -> None:
        self.log.append((self.name, type(error).__name__))


def hosts(**slots: int) -> list[Host]:
    return [Host(n, n, slots=s) for n, s in slots.items()]


def test_fifo_across_classes_no_branch_starves():
    s = Scheduler(hosts(a=1, b=1))
    everywhere, only_a = s.eligible(["a", "b"]), s.eligible(["a"])
    log: list = []
    s.request(Rec("x1", log), everywhere)
    s.request(Rec("x2", log), everywhere)
    assert log == [("x1", "a"), ("x2", "b")]
    s.request(Rec("pinned", log), only_a)      # waits for a
    s.request(Rec("x3", log), everywhere)       # came later: must not overtake it
    s.release("b")
    assert log[-1] == ("x3", "b")
    s.release("a")
    assert log[-1] == ("pinned", "a")


def test_a_freed_slot_goes_to_the_oldest_waiter_that_may_use_it():
    s = Scheduler(hosts(a=1, b=1))
    both, only_b = s.eligible(["a", "b"]), s.eligible(["b"])
    log: list = []
    s.request(Rec("r1", log), both)
    s.request(Rec("r2", log), both)
    s.request(Rec("wants_b", log), only_b)
    s.request(Rec("any", log), both)
    s.release("a")          # wants_b is older but cannot use a
    assert log[-1] == ("any", "a")
    s.release("b")
    assert log[-1] == ("wants_b", "b")


def test_global_cap_serves_the_oldest_waiter_anywhere():
    s = Scheduler(hosts(a=2, b=2), max_jobs=2)
    a, b = s.eligible(["a"]), s.eligible(["b"])
    log: list = []
    s.request(Rec("a1", log), a)
    s.request(Rec("a2", log), a)
    s.request(Rec("b1", log), b)   # b has free slots, but the cap holds it back
    s.request(Rec("a3", log), a)
    assert log == [("a1", "a"), ("a2", "a")]
    s.release("a")                 # the cap frees one: b1 is older than a3
    assert log[-1] == ("b1", "b")
    s.release("b")
    assert log[-1] == ("a3", "a")


def test_down_hosts_refuse_or_fall_back_to_avoided_hosts():
    s = Scheduler(hosts(a=1, b=1))
    both, only_b = s.eligible(["a", "b"]), s.eligible(["b"])
    log: list = []
    s.request(Rec("r1", log), both)
    s.request(Rec("r2", log), both)
    s.request(Rec("stuck", log), only_b)
    s.request(Rec("retry", log), both, frozenset({"a"}))   # failed on a: waits for b while b is up
    s.mark_down("b")
    assert ("stuck", "NoHost") in log
    s.release("a")
    assert log[-1] == ("retry", "a")   # b is gone: the host it avoided is better than nothing
    s.request(Rec("late", log), only_b)
    assert log[-1] == ("late", "NoHost")


def test_close_refuses_waiters_and_later_requests():
    s = Scheduler(hosts(a=1))
    c = s.eligible(["a"])
    log: list = []
    s.request(Rec("r1", log), c)
    s.request(Rec("r2", log), c)
    s.close()
    s.release("a")
    s.request(Rec("r3", log), c)
    assert log == [("r1", "a"), ("r2", "Closed"), ("r3", "Closed")]


def test_cancelled_waiters_are_skipped_and_acquire_works():
    async def go() -> None:
        s = Scheduler(hosts(a=1))
        first = await s.acquire(["a"])
        waiter = asyncio.ensure_future(s.acquire(["a"]))
        third = asyncio.ensure_future(s.acquire(["a"]))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        s.release(first)
        assert await third == "a"
        s.mark_down("a")
        with pytest.raises(NoHost):
            await s.acquire(["a"])
        s.close()
        with pytest.raises(Closed):
            await s.acquire(["a"])

    asyncio.run(go())


def test_rotates_over_hosts_of_a_class():
    s = Scheduler(hosts(a=2, b=2))
    c = s.eligible(["a", "b"])
    log: list = []
    for i in range(4):
        s.request(Rec(str(i), log), c)
    assert sorted(h for _, h in log) == ["a", "a", "b", "b"] and log[0][1] != log[1][1]

