"""Talk to an OpenSSH ControlMaster over its socket, without starting an ssh process.

``ssh -O exit`` costs a fork, an exec and ssh's own start-up (config parsing)
per master; at close time that is one process per host, hundreds with hundreds
of hosts. The control protocol is small and versioned (OpenSSH's PROTOCOL.mux,
version 4 since OpenSSH 5.x): each message is a uint32 length, then a uint32
type and its fields. Both sides start with a hello.
"""
from __future__ import annotations

import asyncio
import struct

from ..aio import within

MUX_MSG_HELLO = 0x00000001
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_TERMINATE = 0x10000005
MUX_S_OK = 0x80000001
MUX_S_ALIVE = 0x80000005
VERSION = 4
_MSG = struct.Struct(">III")      # length (8), type, one uint32 (version or request id)


async def terminate(path: str, timeout: float = 5.0) -> bool:
    """Ask the master on `path` to exit now (as ``ssh -O exit``); True once it has closed the socket.

    False if no master listens there (already gone) or it did not answer in time.
    """
    try:
        reader, writer = await within(asyncio.open_unix_connection(path), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(_MSG.pack(8, MUX_MSG_HELLO, VERSION) + _MSG.pack(8, MUX_C_TERMINATE, 1))
        # the master's hello, its answer to the request, then EOF when it exits
        await within(reader.read(-1), timeout)
        return True
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


async def master_pid(path: str, timeout: float = 5.0) -> int | None:
    """The pid of the master on `path` (as ``ssh -O check``), None if none answers."""
    try:
        reader, writer = await within(asyncio.open_unix_connection(path), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(_MSG.pack(8, MUX_MSG_HELLO, VERSION) + _MSG.pack(8, MUX_C_ALIVE_CHECK, 1))
        while True:
            length = struct.unpack(">I", await within(reader.readexactly(4), timeout))[0]
            body = await within(reader.readexactly(length), timeout)
            kind = struct.unpack(">I", body[:4])[0]
            if kind == MUX_S_ALIVE:      # type, request id, pid
                return struct.unpack(">I", body[8:12])[0]
            if kind != MUX_MSG_HELLO:
                return None
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
