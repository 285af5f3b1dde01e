"""Cancellation is never lost (cmflow/aio.py), and a second Ctrl-C kills what is left (transport/procs.py)."""
from __future__ import annotations

import asyncio
import os
import select
import re
import subprocess

import pytest

from cmflow.aio import within
from cmflow.transport import procs

from conftest import ROOT


def test_a_cancel_that_arrives_as_the_wait_ends_is_delivered():
    """The Ctrl-C hang of issue 16: the awaited thing completes in the same loop turn as the
    task's cancellation; asyncio.wait_for (3.11) returned its result and dropped the cancel."""

    async def main() -> None:
        done = asyncio.get_running_loop().create_future()
        waiter = asyncio.create_task(within(done, 60))
        await asyncio.sleep(0)          # the waiter now waits on `done`
        done.set_result("ready")
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(main())


def test_within_times_out_and_passes_results():
    async def main() -> None:
        assert await within(asyncio.sleep(0, "x"), 5) == "x"
        assert await within(asyncio.sleep(0, "y"), None) == "y"
        with pytest.raises(TimeoutError):
            await within(asyncio.sleep(60), 0.01)

    asyncio.run(main())


def test_no_asyncio_wait_for_in_cmflow():
    """Every bounded wait goes through within(): a new wait_for would bring the lost cancel back."""
    uses = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "cmflow").rglob("*.py")
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"\bwait_for\(", line) and not line.lstrip().startswith("#")]
    assert uses == []


def test_kill_all_ends_every_spawned_tree_but_not_essential_ones():
    async def main() -> None:
        procs.reset()
        tree = await procs.spawn("sh", "-c", "sleep 300 & sleep 300 & wait", stdout=subprocess.PIPE)
        keep = await procs.spawn("sleep", "300", essential=True)
        while len(procs._children(tree.pid)) < 2:   # both sleeps started
            await asyncio.sleep(0.01)
        kids = procs._children(tree.pid)
        assert procs.kill_all() == 1 and procs.hurrying()
        assert await tree.wait() == -9          # returns: the grandchildren held its stdout, and are gone
        for k in kids:
            # its stdout closes while it exits, a moment before it is a zombie: await its exit (a pidfd
            # becomes readable then), bounded; a grandchild kill_all missed would run its 300 s
            try:
                fd = os.pidfd_open(k)
            except ProcessLookupError:
                continue
            try:
                assert select.select([fd], [], [], 30)[0], f"pid {k} still runs"
            finally:
                os.close(fd)
        assert keep.returncode is None
        keep.kill()
        await keep.wait()
        procs.reset()
        assert not procs.hurrying()

    asyncio.run(main())
