"""Every process the transports start, so that a second Ctrl-C can end them all at once.

The first SIGINT/SIGTERM cancels the run: each transport ends its jobs in order
(slot servers kill job trees, Slurm steps are cancelled), every wait bounded.
A second one means "now": ``kill_all`` stops and SIGKILLs the process tree of
every child still running (an srun and its helper, a slot server and its job's
processes, an ssh client), the waits on them return at once, and the rest of
the shutdown only does what must not be skipped (``essential`` processes, such
as the ``scancel`` that releases an allocation, are left to finish).
"""
from __future__ import annotations

import asyncio
import os
import signal
import weakref
from typing import Any

from ..aio import within

# each with its event loop: a process of a loop that has ended is not ours to kill (its pid may be reused)
_live: "weakref.WeakKeyDictionary[asyncio.subprocess.Process, asyncio.AbstractEventLoop]" = \
    weakref.WeakKeyDictionary()
_hurry = False


async def spawn(*argv: str, essential: bool = False, **kw: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec`` in a session of its own, remembered for ``kill_all``."""
    proc = await asyncio.create_subprocess_exec(*argv, start_new_session=True, **kw)
    if not essential:
        _live[proc] = asyncio.get_running_loop()
    return proc


def reset() -> None:
    """A new run in this process: nothing hurries yet."""
    global _hurry
    _hurry = False


def hurrying() -> bool:
    """True once a second interrupt asked the run to end now: skip waits that are only courtesy."""
    return _hurry


def kill_all() -> int:
    """SIGKILL every remembered process that still runs, with all its descendants; how many."""
    global _hurry
    _hurry = True
    n = 0
    loop = asyncio.get_running_loop()
    for proc, its_loop in list(_live.items()):
        if its_loop is loop and proc.returncode is None:   # not reaped yet, so its pid is still its own
            kill_tree(proc.pid)
            n += 1
    return n


def kill_tree(pid: int) -> None:
    """Stop a process and its descendants (none can fork meanwhile), then SIGKILL them all."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            os.kill(p, signal.SIGSTOP)
        except OSError:
            continue
        seen.append(p)
        todo += _children(p)
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a child with its descendants and reap it. The whole tree: srun runs as two
    processes that both hold our pipes, and proc.wait() returns only once the pipes close."""
    if proc.returncode is None:
        if proc.pid is None:
            # a session over an ssh master's socket (mux.Session): no process of ours to kill;
            # ending it closes the channel and the remote slot server kills its job
            proc.kill()
        else:
            kill_tree(proc.pid)
        await proc.wait()


async def stderr_text(proc: asyncio.subprocess.Process) -> str:
    """What a dead process left on its stderr pipe, up to EOF (bounded: a grandchild may hold it)."""
    data = b""
    if proc.stderr:
        try:
            data = await within(proc.stderr.read(), 5)
        except (asyncio.TimeoutError, ConnectionError):
            pass
    return data.decode("utf-8", "replace")
