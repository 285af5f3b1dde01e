"""The run directory: job output files, a GNU parallel joblog, JSON-lines records.

Lines are written as jobs end and flushed at once, so a run that is killed
leaves a truthful log of everything that finished. Whole files (the plan, the
summary) are written to a temp file and renamed into place.
"""
from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

JOBLOG_HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"


@dataclass(frozen=True)
class JobRecord:
    seq: int
    task: str
    label: str
    args: Any
    kwargs: Any
    where: str
    host: str
    attempt: int
    start: float
    end: float
    exit_status: int | None
    signal: int
    timed_out: bool
    connection_failed: bool
    command: str
    stdout: str            # file of the job's stdout; "" when it printed nothing
    stderr: str
    stdout_bytes: int = 0
    value: Any = None
    error: str = ""
    bytes_sent: int = 0        # inputs staged to the host (cmflow/files)
    bytes_fetched: int = 0     # outputs fetched from it, verified

    @property
    def runtime(self) -> float:
        return max(self.end - self.start, 0.0)


_FIELDS = tuple(f.name for f in fields(JobRecord))


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or nothing: temp file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class RunLog:
    """Owns one run directory. Not thread-safe; the executor's loop is its only writer."""

    def __init__(self, run_dir: Path):
        self.dir = run_dir
        self.jobs_dir = run_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        # a run directory used again: outputs of the earlier run must not pass for this one's
        for old in self.jobs_dir.glob("*.[0-9]*.[oe][ur][tr]"):
            old.unlink()
        self._joblog = open(run_dir / "joblog", "w", encoding="utf-8")
        self._joblog.write(JOBLOG_HEADER)
        self._joblog.flush()
        self._records = open(run_dir / "jobs.jsonl", "w", encoding="utf-8")

    def paths(self, seq: int, attempt: int) -> tuple[Path, Path]:
        stem = self.jobs_dir / f"{seq}.{attempt}"
        return Path(f"{stem}.out"), Path(f"{stem}.err")

    def record(self, rec: JobRecord) -> None:
        exitval = rec.exit_status if rec.exit_status is not None else (255 if rec.connection_failed else -1)
        # GNU parallel puts the command on one line; so must we
        command = rec.command.replace("\n", " ").replace("\t", " ")
        self._joblog.write(f"{rec.seq}\t{rec.host}\t{rec.start:.3f}\t{rec.runtime:.3f}\t{rec.bytes_sent}\t"
                           f"{rec.stdout_bytes + rec.bytes_fetched}\t"
                           f"{exitval}\t{rec.signal}\t{command}\n")
        self._joblog.flush()
        doc = {f: getattr(rec, f) for f in _FIELDS}   # not asdict(): it deep-copies every value
        doc["runtime"] = round(rec.runtime, 6)
        try:
            line = json.dumps(doc, default=repr)
        except ValueError:
            doc["value"] = repr(rec.value)
            line = json.dumps(doc, default=repr)
        self._records.write(line + "\n")
        self._records.flush()

    def write_json(self, name: str, doc: Any) -> None:
        write_atomic(self.dir / name, json.dumps(doc, indent=2, default=repr) + "\n")

    def close(self) -> None:
        for f in (self._joblog, self._records):
            if not f.closed:
                f.close()


def read_joblog(path: Path) -> list[dict[str, str]]:
    """Parse a joblog the way GNU parallel's own tools do: TAB-separated, header first."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t", len(header) - 1))) for line in lines[1:] if line]
