"""The one interface through which the executor reaches a host.

A transport starts a command on its host, sends the command's stdout and
stderr to the files it is given (an empty output leaves no file), and
reports how the command ended. It tells
a connection failure (the host could not be reached, the session died) apart
from the command's own failure, and on timeout or cancellation it kills the
command's whole process tree, wherever that runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..hosts import Host


# JobSpec and Outcome: one of each per attempt, so slotted and not frozen (a frozen dataclass
# pays a setattr call per field: a tenth of the scheduling cost per job, bench/scheduling.py).
# Treat them as values all the same: make a new one (dataclasses.replace), never change one.
@dataclass(slots=True)
class JobSpec:
    seq: int
    command: str
    stdout: Path
    stderr: Path
    timeout: float | None = None
    detach: bool = False         # processes left running after the main one ends are not killed


@dataclass(slots=True)
class Outcome:
    exit_status: int | None      # None when the command did not exit normally
    signal: int = 0              # the signal that ended it, if any
    start: float = 0.0           # epoch seconds
    end: float = 0.0
    timed_out: bool = False
    connection_failed: bool = False
    message: str = ""            # why, when the transport could not run the command
    stdout_bytes: int = 0        # an output of 0 bytes has no file
    stderr_bytes: int = 0
    ref: str = ""                # the batch system's id of this attempt (Slurm: JOBID.STEP or JOBID_TASK)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0 and not self.timed_out and not self.connection_failed


@dataclass(frozen=True)
class Helper:
    """How a helper script (a transport's ``exec``) ended: exit_status None if the connection failed."""

    exit_status: int | None
    stdout: bytes = b""
    stderr: str = ""


class Transport(Protocol):
    host: Host

    async def run(self, spec: JobSpec) -> Outcome:
        """Run one job to its end. On cancellation: kill its process tree, then re-raise."""
        ...

    async def aclose(self) -> None:
        """Release connections and processes; idempotent."""
        ...


class RemoteShell(Protocol):
    """What a remote transport offers the data movement (cmflow/files) besides running jobs."""

    host: Host

    async def exec(self, script: str, stdin: int | None = None, stdout: int | None = None) -> Helper:
        """Run a short sh script on the host over the connection already held."""
        ...


class ConnectionLost(Exception):
    """Raised inside transports when a session dies; surfaces as Outcome.connection_failed."""
