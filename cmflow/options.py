"""A run's options: what ``cmflow run`` and the API pass to the executor.

Apart from executor.py so that a run can start its ssh connections before the
executor and the run log are imported (api.run_sync)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Halt = Literal["never", "soon", "now"]


@dataclass(frozen=True)
class RunOptions:
    jobs: int | None = None          # global cap on jobs at once
    timeout: float | None = None     # default per-job timeout, seconds
    retries: int = 0                 # default re-runs after a command failure
    halt: Halt = "never"
    deep: bool = False               # keys hash input files' content, not size and mtime
    keep_remote: bool = False        # keep every job's work directory on its host
    fanout: int = 64                 # ssh connections being opened at once, across all hosts
