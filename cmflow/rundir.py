"""Run directories seen from outside: find them, read them, tell whether one still runs.

Everything here reads files only (``run.json``, ``summary.json``, ``plan.json``,
``hosts.json``, ``journal.jsonl``, ``jobs.jsonl``), so ``cmflow report``,
``cmflow status`` and ``cmflow runs`` work on a run that is going on in another
process or ended long ago, and never import the executor.

A running controller holds an exclusive ``flock`` on ``RUN_DIR/lock`` for its
whole life; the kernel drops it when the process dies, even by SIGKILL, so
"still running" is never a stale pid file.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .journal import JOURNAL, read_journal

RUNS_ROOT = Path("runs")
LATEST = "latest"
SESSION = "session.json"


# ------------------------------------------------------------------ writing side (the controller)

class RunLock:
    """Held by the process that runs in a directory; released by the kernel if it dies."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RunBusy(run_dir, _lock_pid(self.path)) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)   # closing drops the flock
            self._fd = -1


class RunBusy(Exception):
    def __init__(self, run_dir: Path, pid: int | None):
        super().__init__(f"run {run_dir} is still running{f' (pid {pid})' if pid else ''}")
        self.run_dir, self.pid = run_dir, pid


def _lock_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_running(run_dir: Path) -> bool:
    try:
        fd = os.open(run_dir / "lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def point_latest(run_dir: Path) -> None:
    """Make ``<runs root>/latest`` a relative symlink to run_dir (atomically), when run_dir sits in a
    folder named ``runs`` (a run dir chosen elsewhere with --run-dir leaves its folder alone)."""
    parent, target = run_dir.parent, run_dir.name
    if is_session_dir(parent):              # an evaluation of a REPL session: runs/latest -> repl-ID/0003
        parent, target = parent.parent, f"{parent.name}/{run_dir.name}"
    if parent.name != RUNS_ROOT.name:
        return
    tmp = parent / f".{LATEST}.{os.getpid()}"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, parent / LATEST)


# ------------------------------------------------------------------ reading side

@dataclass
class RunInfo:
    dir: Path
    meta: dict[str, Any] = field(default_factory=dict)       # run.json
    summary: dict[str, Any] | None = None                   # summary.json, None while running or if killed
    running: bool = False

    @property
    def id(self) -> str:
        # an evaluation of a REPL session is named session/evaluation
        return f"{self.dir.parent.name}/{self.dir.name}" if is_session_dir(self.dir.parent) else self.dir.name

    @property
    def flow(self) -> str:
        return str(self.meta.get("flow") or "")

    @property
    def started(self) -> float:
        return float(self.meta.get("started") or _mtime(self.dir))

    @property
    def state(self) -> str:
        if self.running:
            return "running"
        if self.summary is None:
            return "killed"
        if self.summary.get("cancelled"):
            return "cancelled"
        return "ok" if self.summary.get("ok") else "failed"

    @property
    def wall(self) -> float | None:
        if self.summary and self.summary.get("ended"):
            return float(self.summary["ended"]) - self.started
        return None


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and any(
        (path / n).exists() for n in ("run.json", "plan.json", JOURNAL, "joblog"))


def is_session_dir(path: Path) -> bool:
    """A REPL session's folder: one per session, each evaluation a run directory inside it."""
    return (path / SESSION).is_file()


def read_run(run_dir: Path) -> RunInfo:
    return RunInfo(run_dir, read_json(run_dir / "run.json") or {}, read_json(run_dir / "summary.json"),
                   is_running(run_dir))


def list_runs(root: Path = RUNS_ROOT) -> list[RunInfo]:
    """Every run directory under root, oldest first."""
    if not root.is_dir():
        return []
    runs = []
    for p in root.iterdir():
        if is_run_dir(p):
            runs.append(read_run(p))
        elif is_session_dir(p) and not p.is_symlink():
            runs += [read_run(c) for c in p.iterdir() if is_run_dir(c)]
    return sorted(runs, key=lambda r: (r.started, r.id))


def latest_run(root: Path = RUNS_ROOT, flow: str | None = None) -> Path | None:
    """The newest run (of ``flow``, an absolute path, when given); ``root/latest`` if it points at one."""
    if flow is None:
        link = root / LATEST
        if link.is_symlink() and is_run_dir(link.resolve()):
            return link.resolve()
    runs = [r for r in list_runs(root) if flow is None or r.flow == flow]
    return runs[-1].dir if runs else None


def journal_counts(run_dir: Path) -> dict[str, int]:
    """Jobs by final state from the journal: ok, failed, cached, running (started, not ended)."""
    state: dict[int, str] = {}
    for ev in read_journal(run_dir / JOURNAL):
        seq = ev.get("seq")
        match ev["ev"]:
            case "start":
                state[seq] = "running"
            case "end":
                if ev.get("ok"):
                    state[seq] = "ok"
                elif ev.get("final", True):
                    state[seq] = "failed"
                else:
                    state[seq] = "retrying"
            case "cached":
                state[seq] = "cached"
    counts = {"ok": 0, "failed": 0, "cached": 0, "running": 0, "retrying": 0}
    for s in state.values():
        counts[s] += 1
    return counts


def remove_runs(runs: list[RunInfo]) -> Iterator[RunInfo]:
    """Delete run directories (never a running one); yields each removed."""
    for r in runs:
        if r.running or is_running(r.dir):
            continue
        shutil.rmtree(r.dir, ignore_errors=True)
        parent = r.dir.parent
        if is_session_dir(parent) and not is_running(parent) and not any(is_run_dir(c) for c in parent.iterdir()):
            shutil.rmtree(parent, ignore_errors=True)   # a REPL session with no evaluation left
        yield r


def select_for_clean(runs: list[RunInfo], keep: int | None, older_than_days: float | None,
                     now: float | None = None) -> list[RunInfo]:
    """Runs that ``runs clean`` removes: beyond the newest ``keep``, and/or older than the given age.
    With both, a run goes only if both say so. Running runs and the newest run always stay."""
    now = time.time() if now is None else now
    if not runs:
        return []
    newest = runs[-1]
    chosen = []
    for i, r in enumerate(runs):
        beyond_keep = keep is None or i < len(runs) - keep
        old = older_than_days is None or now - r.started > older_than_days * 86400
        if beyond_keep and old and r is not newest and not r.running:
            chosen.append(r)
    return chosen
