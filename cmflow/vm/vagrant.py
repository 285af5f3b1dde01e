"""The `vagrant` command line, run with argv lists in the cluster's folder.

Progress is streamed line by line (to the caller and to a log file) rather than captured, so a slow
`vagrant up` shows what it is doing; state comes from `--machine-readable` output, not from scraping
the human text.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from ..errors import CmflowError

INSTALL_HINT = ("install it from your distribution (Debian/Ubuntu: `apt install vagrant`) or from "
                "https://developer.hashicorp.com/vagrant/install")


class VmError(CmflowError):
    """Vagrant or a provider failed at run time: exit status 1."""

    exit_status = 1


class VmSetupError(CmflowError):
    """Something is missing or mis-set before anything could start: exit status 2."""


def vagrant_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "VAGRANT_CWD": str(directory), "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1", "VAGRANT_NO_COLOR": "1"}


class Vagrant:
    def __init__(self, directory: Path):
        self.directory = directory
        exe = shutil.which("vagrant")
        if exe is None:
            raise VmSetupError(f"vagrant is not installed: {INSTALL_HINT}")
        self.exe = exe

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([self.exe, *args], cwd=self.directory, env=vagrant_env(self.directory),
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise VmError(f"`vagrant {args[0]}` did not finish within {timeout:.0f} s") from None

    def stream(self, args: list[str], on_line: Callable[[str], None], log: Path) -> int:
        """Run vagrant, handing each output line to on_line and to the log; Ctrl-C reaches vagrant once,
        so it can stop what it started cleanly, and we wait for it."""
        with open(log, "a") as logf:
            proc = subprocess.Popen([self.exe, *args], cwd=self.directory, env=vagrant_env(self.directory),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace", start_new_session=True)
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    logf.write(line)
                    logf.flush()
                    on_line(line.rstrip("\n"))
                return proc.wait()
            except KeyboardInterrupt:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                raise

    def status(self) -> dict[str, str]:
        """Machine name -> state (running, stopped, not_created, ...), from `vagrant status --machine-readable`."""
        r = self.run("status", "--machine-readable")
        if r.returncode != 0:
            raise VmError("`vagrant status` failed: " + tail(r.stderr or r.stdout, 5))
        states: dict[str, str] = {}
        for line in r.stdout.splitlines():
            parts = line.split(",", 3)
            if len(parts) == 4 and parts[2] == "state" and parts[1]:
                states[parts[1]] = parts[3]
        return states

    def ssh_config(self, nodes: list[str]) -> dict[str, dict[str, str]]:
        """Each node's ssh settings as `vagrant ssh-config` gives them (keys lower-cased)."""
        r = self.run("ssh-config", *nodes)
        if r.returncode != 0:
            raise VmError("`vagrant ssh-config` failed: " + tail(r.stderr or r.stdout, 5))
        return parse_ssh_config(r.stdout)


def parse_ssh_config(text: str) -> dict[str, dict[str, str]]:
    hosts: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if key.lower() == "host":
            current = hosts.setdefault(value, {})
        elif current is not None:
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            current.setdefault(key.lower(), value)
    return hosts


def tail(text: str, n: int) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-n:]) if lines else "(no output)"
