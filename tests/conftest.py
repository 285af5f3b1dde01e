"""Shared fixtures: a CLI runner, flow files in a temp folder, real sshd hosts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


def world_dir(prefix: str) -> Path:
    """A folder the remote test user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o777)
    return d


@pytest.fixture
def shared(request):
    """A folder both the tests and the remote jobs (another user) can write."""
    d = world_dir("cmflow-shared-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_hosts():
    if not have_sshd():
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    base = world_dir("cmflow-sshd-")
    hosts = SshdHosts(base, n=3, slots=2).start()
    yield hosts
    hosts.stop()
    shutil.rmtree(base, ignore_errors=True)


def need_tool(command: str, package: str) -> str:
    """The path of a real tool a test checks cmflow against (GNU parallel, dot, clush...).

    Missing on a developer's machine: the test is skipped, saying what to install.
    Missing in CI (.ci/run installs it): the test fails, so a broken install cannot pass as green.
    """
    path = shutil.which(command)
    if path is None:
        message = f"{command} not installed (install {package}; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
