"""The plain-``sh`` slot framing of the first ssh transport, kept for Slurm's step slots (slurm.py).

A job goes down a slot shell's stdin as ``sh -c CMD; printf TOKEN STATUS`` and its
output is read from the shell's stdout and stderr up to the framing lines. It
cannot keep a job's leftovers out of later jobs' output; ssh and local slots use
the slot server (server.py, slots.py) instead.
"""
from __future__ import annotations

import asyncio
from typing import Protocol

from ..aio import within
from . import ConnectionLost, procs

_CHUNK = 1 << 16


class _Sink(Protocol):
    def write(self, data: bytes) -> int: ...


async def _pump(reader: asyncio.StreamReader, marker: bytes, sink: _Sink, want_line: bool) -> bytes:
    """Copy a stream to sink up to the framing marker; return what follows it on its line."""
    buf = b""
    keep = len(marker) - 1
    while True:
        chunk = await reader.read(_CHUNK)
        if not chunk:
            raise ConnectionLost("session closed")
        buf += chunk
        i = buf.find(marker)
        if i >= 0:
            sink.write(buf[:i])
            rest = buf[i + len(marker):]
            if not want_line:
                return b""
            while b"\n" not in rest:
                more = await reader.read(_CHUNK)
                if not more:
                    raise ConnectionLost("session closed")
                rest += more
            return rest.split(b"\n", 1)[0]
        if len(buf) > keep:
            sink.write(buf[:-keep] if keep else buf)
            buf = buf[-keep:] if keep else b""


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a child with its descendants and reap it. The whole tree: srun runs as two
    processes that both hold our pipes, and proc.wait() returns only once the pipes close."""
    if proc.returncode is None:
        procs.kill_tree(proc.pid)
        await proc.wait()


async def _drain(proc: asyncio.subprocess.Process) -> str:
    """What ssh said on stderr before it died (after the framing, nothing else writes there)."""
    await _kill(proc)
    return await stderr_text(proc)


async def stderr_text(proc: asyncio.subprocess.Process) -> str:
    """What a dead process left on its stderr pipe, up to EOF (bounded: a grandchild may hold it)."""
    data = b""
    if proc.stderr:
        try:
            data = await within(proc.stderr.read(), 5)
        except (asyncio.TimeoutError, ConnectionError):
            pass
    return data.decode("utf-8", "replace")
