"""Job shapes that try to outlive their job, and a count of what survives (tests and bench/orphans.py).

Every process a shape starts carries a marker in its argv (``sleep 3600.<M><k>``),
so survivors are counted by scanning /proc for it, whoever their parent is now
and whichever user runs them (the ssh hosts are loopback sshds on this machine).
"""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the eight shapes of issue 8 item 2; S is a sleep whose argv carries the marker
SHAPES = [
    "S",
    "(S; true) & wait",
    "S & S",
    "setsid S & wait",
    "nohup S & wait",
    "(setsid S &); S",
    "S >/dev/null & echo 7",           # ends at once; its child must not outlive it
    "sh -c 'trap \"\" TERM INT HUP; S'",
]
ENDS_AT_ONCE = {6}                      # index of the shape whose main process exits by itself


def marked(marker: str) -> list[int]:
    """Pids of live processes (zombies excluded) whose argv contains marker."""
    needle = marker.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle not in f.read():
                    continue
            with open(f"/proc/{name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(name))
    return found


def running_sleeps(marker: str) -> set[int]:
    """Which shapes have their marked sleep running (argv starts with 'sleep')."""
    seen = set()
    for pid in marked(marker):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"sleep") and len(argv) > 1 and argv[1].startswith(f"3600.{marker}".encode()):
            seen.add(int(argv[1].decode()[len(f"3600.{marker}"):]))
    return seen


def wait_until(cond, timeout: float = 60.0, step: float = 0.05) -> bool:
    """Poll for an event we cannot be told about (processes appearing on another host)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def write_shapes(folder: Path, marker: str) -> Path:
    lines = []
    for k, shape in enumerate(SHAPES):
        lines.append(f"def s{k}(): return {shape.replace('S', f'sleep 3600.{marker}{k}')!r}")
    (folder / "shapes.py").write_text("\n".join(lines) + "\n")
    flow = folder / "shapes.flow"
    flow.write_text("from shapes import *\n" + " | ".join(f"s{k}" for k in range(len(SHAPES))) + "\n")
    return flow


@dataclass
class Trial:
    how: str              # timeout | SIGINT | SIGTERM | SIGKILL
    returncode: int
    survivors: list[int]
    stderr: str


def stop_run(folder: Path, inventory: Path, how: str, env: dict | None = None) -> Trial:
    """Run the eight shapes at once, stop the run `how`, and count what is left of them."""
    marker = secrets.token_hex(3)
    marker = str(int(marker, 16)).zfill(8)          # digits: it is part of sleep's number
    flow = write_shapes(folder, marker)
    argv = [sys.executable, "-m", "cmflow", "run", str(flow), "-q", "--hosts", str(inventory),
            "--run-dir", str(folder / f"run-{how}")]
    if how == "timeout":
        argv += ["--timeout", "3"]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "CMFLOW_KILL_GRACE": "1", **(env or {})}
    proc = subprocess.Popen(argv, cwd=folder, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        if how != "timeout":
            wanted = set(range(len(SHAPES))) - ENDS_AT_ONCE
            if not wait_until(lambda: wanted <= running_sleeps(marker) or proc.poll() is not None):
                raise AssertionError(f"the shapes never all ran: {sorted(running_sleeps(marker))}")
            if how == "SIGKILL":
                # the shape that ends at once must have ended *for cmflow* before the kill: its record
                # in the run directory is that event (written as the job ends, not at exit)
                records = folder / f"run-{how}" / "jobs.jsonl"
                if not wait_until(lambda: records.exists() and records.stat().st_size > 0 or proc.poll() is not None):
                    raise AssertionError("no job record was written while the run went on")
            proc.send_signal(getattr(signal, how))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if how == "SIGKILL":
        # the slot servers notice their controller is gone; give them their grace and a little more
        wait_until(lambda: not marked(marker), timeout=20)
    return Trial(how, proc.returncode, marked(marker), err)


def kill_survivors(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
