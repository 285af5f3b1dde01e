"""One flush per turn of the event loop for every run-directory log, not one per line.

A run writes a few lines per job to four files (jobs.jsonl, joblog,
journal.jsonl, events.jsonl). Each writer buffers its lines and asks for a
flush here; the first request in a turn of the loop schedules one callback
that flushes every writer that asked. That callback runs before the loop next
waits for I/O (``call_soon``), so a job that ended is in the files before
anything else can happen that a SIGKILL could interrupt after: a killed run
still has every job that ended. Outside a running loop a writer flushes at once.
"""
from __future__ import annotations

import asyncio
from typing import Protocol


class Writer(Protocol):
    def flush(self) -> None: ...


_due: dict[Writer, None] = {}    # writers with lines buffered in this turn of the loop (ordered set)
_loop: asyncio.AbstractEventLoop | None = None   # the loop whose call_soon will flush them


def flush_soon(writer: Writer) -> None:
    """Flush ``writer`` before the event loop next waits (at once when no loop runs). Idempotent per turn."""
    global _loop
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        writer.flush()
        return
    if loop is not _loop:   # first request in this turn (or a loop that ended before its callback ran)
        _loop = loop
        loop.call_soon(flush_all)
    _due[writer] = None


def forget(writer: Writer) -> None:
    """A writer that closes (and so flushes) itself."""
    _due.pop(writer, None)


def flush_all() -> None:
    """Flush every writer that asked (an error in one does not keep the others' lines back)."""
    global _loop
    _loop = None
    error: BaseException | None = None
    while _due:
        writer = next(iter(_due))
        del _due[writer]
        try:
            writer.flush()
        except BaseException as e:  # noqa: BLE001 - re-raised once the others are flushed
            error = error or e
    if error is not None:
        raise error
