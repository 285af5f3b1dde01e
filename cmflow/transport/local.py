"""Local transport: one slot server (server.py) per slot, a child of cmflow.

Each slot is a long-lived ``python3 -I -S`` running the slot server, in its
own session (a Ctrl-C in the terminal reaches cmflow only, which then ends
the jobs in order). A job costs a line down an open pipe and one spawn of
``/bin/sh -c`` by the server, not a fork of cmflow. The server is a child
subreaper: it ends everything a job started, whatever the job did to escape
(see server.py), and ends the running job when cmflow goes away (its stdin
closes), even if cmflow was SIGKILLed.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

from . import ConnectionLost
from .slots import SlotTransport, boot_argv, spawn_slot


class LocalTransport(SlotTransport):
    async def _start(self) -> tuple[asyncio.subprocess.Process, int, Any]:
        try:
            proc, out_fd = await spawn_slot(*boot_argv(sys.executable))
        except OSError as e:
            raise ConnectionLost(f"cannot start a slot server ({sys.executable}): {e.strerror}") from None
        return proc, out_fd, None
