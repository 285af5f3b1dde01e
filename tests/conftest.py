"""Shared fixtures: a CLI runner, flow files in a temp folder, real sshd hosts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sshhosts import SshdHosts, have_sshd  # noqa: E402


def cmflow(*args: str, cwd: str | Path | None = None, env: dict | None = None, timeout: float = 120,
           input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real command line in a child process."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "cmflow", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=timeout, input=input)


@pytest.fixture
def cli():
    return cmflow


@pytest.fixture
def flowdir(tmp_path: Path):
    """A folder to write flows and task modules into; returns a writer."""
    def write(name: str, text: str) -> Path:
        p = tmp_path / name
        p.write_text(text)
        return p
    write.path = tmp_path  # type: ignore[attr-defined]
    return write


@pytest.fixture(scope="session")
def sshd_hosts(tmp_path_factory):
    if not have_sshd():
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    hosts = SshdHosts(Path(tmp_path_factory.mktemp("sshd")), n=3, slots=2).start()
    yield hosts
    hosts.stop()
