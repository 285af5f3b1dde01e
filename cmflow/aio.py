"""asyncio helpers that keep cancellation honest."""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """``await aw``, for at most ``timeout`` seconds (then TimeoutError); None waits as long as it takes.

    Use this, never ``asyncio.wait_for``: on Python 3.11, when the waiting task is
    cancelled just as ``aw`` completes, wait_for returns the result and the
    cancellation is lost (CPython gh-86296, fixed in 3.12). A Ctrl-C that reached
    a job's task in that moment was forgotten: the job ran on, and the run waited
    for it with its event loop idle. ``asyncio.timeout`` delivers the cancellation.
    """
    async with asyncio.timeout(timeout):
        return await aw
