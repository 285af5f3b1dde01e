"""A job's processes: its own outputs, none outlives it, whatever it does and however the run is stopped.

Local and over ssh (real loopback sshds). Survivors are counted by a marker in
their argv (procs.py), so a process that escaped its parent is still found.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, cmflow
from procs import SHAPES, kill_survivors, marked, stop_run, wait_until
from sshhosts import have_sshd

needs_sshd = pytest.mark.skipif(not have_sshd(), reason="openssh-server not installed (.ci/run installs it)")


def local_inventory(folder: Path, slots: int) -> Path:
    inv = folder / "local.yaml"
    inv.write_text(f"hosts:\n  here: {{local: true, slots: {slots}}}\n")
    return inv


def ssh_inventory(folder: Path, sshd_hosts, slots: int) -> Path:
    inv = folder / "ssh.yaml"
    inv.write_text(f"ssh_config: {sshd_hosts.ssh_config}\nhosts:\n  h1: {{slots: {slots}}}\n")
    return inv


@pytest.fixture(params=["local", pytest.param("ssh", marks=needs_sshd)])
def inventory(request, tmp_path):
    """An inventory of one host with 8 slots, local or over ssh."""
    def make(slots: int = 8) -> Path:
        if request.param == "local":
            return local_inventory(tmp_path, slots)
        return ssh_inventory(tmp_path, request.getfixturevalue("sshd_hosts"), slots)
    make.kind = request.param  # type: ignore[attr-defined]
    return make


def test_a_leftover_cannot_write_into_the_next_job(inventory, tmp_path):
    """Issue 8.1: `a ; b ; a + b` on one slot gave 73 over ssh (a's background printf landed in b)."""
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        def a(): return "(sleep 0.5; printf 7) & echo 1"
        def b(): return "sleep 1; echo 2"
        '''))
    (tmp_path / "f.flow").write_text("from tk import *\na ; b ; a + b\n")
    r = cmflow("run", "f.flow", "-q", "--hosts", str(inventory(1)), "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "3"
    assert (tmp_path / "run" / "jobs" / "2.1.out").read_bytes() == b"2\n"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["timeout", "SIGINT", "SIGTERM"])
def test_no_process_of_any_shape_survives(inventory, tmp_path, how):
    """Issue 8.2: eight job shapes (setsid, double fork, nohup, TERM trap, leftovers) at once,
    stopped by a timeout, Ctrl-C or SIGTERM: none of their processes survives. ~4 s each."""
    trial = stop_run(tmp_path, inventory(8), how)
    kill_survivors(trial.survivors)
    print(f"orphans[{inventory.kind}, {how}] = {len(trial.survivors)}")
    assert trial.survivors == [], f"{len(trial.survivors)} survivor(s) after {how}"
    assert trial.returncode == {"timeout": 1, "SIGINT": 130, "SIGTERM": 143}[how], trial.stderr
    if how == "timeout":
        records = [json.loads(line) for line in (tmp_path / "run-timeout" / "jobs.jsonl").read_text().splitlines()]
        assert sorted(r["seq"] for r in records) == list(range(1, len(SHAPES) + 1))
        assert [r["value"] for r in records if not r["timed_out"]] == [7]   # the one that ended by itself


@pytest.mark.slow
def test_sigkilled_cmflow_leaves_nothing_behind(inventory, tmp_path):
    """Issue 8.3: cmflow SIGKILLed mid-run: its jobs end within a grace (the slot servers see their
    stdin close), masters go, no cmf-* folder stays in $TMPDIR, and the job that ended is on record. ~8 s."""
    tmp = Path(tempfile.mkdtemp(prefix="cmfk-", dir="/tmp"))   # short: ssh's ControlPath must fit a socket name
    try:
        check_sigkill(tmp_path, tmp, inventory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_sigkill(tmp_path: Path, tmp: Path, inventory) -> None:
    trial = stop_run(tmp_path, inventory(8), "SIGKILL", env={"TMPDIR": str(tmp)})
    kill_survivors(trial.survivors)
    print(f"orphans[{inventory.kind}, SIGKILL] = {len(trial.survivors)}")
    assert trial.survivors == []
    assert wait_until(lambda: not any(tmp.iterdir()), timeout=10), list(tmp.iterdir())
    # the masters (ssh -f daemons, our grandchildren) have ControlPaths under tmp
    assert wait_until(lambda: not marked(str(tmp)), timeout=15), "an ssh master outlived cmflow"
    records = [json.loads(line) for line in (tmp_path / "run-SIGKILL" / "jobs.jsonl").read_text().splitlines()]
    assert [(r["seq"], r["value"]) for r in records] == [(7, 7)]


def test_leftovers_end_with_their_job_and_shutdown_is_prompt(inventory, tmp_path):
    """Issues 8.2 and 8.6: children left running after the job's main process exits are ended
    at once, so they hold no output and closing the slots does not wait for them."""
    (tmp_path / "tk.py").write_text('def j(i): return f"sleep 3600.{i}424242 & echo {i}"\n')
    (tmp_path / "f.flow").write_text("from tk import j\n" + " + ".join(f"j({i})" for i in range(1, 13)) + "\n")
    r = cmflow("run", "f.flow", "-q", "--hosts", str(inventory(12)), "--run-dir", "run", cwd=tmp_path,
               timeout=40)   # today's main: 5 s per slot, one slot after another, over ssh
    left = marked("424242")
    kill_survivors(left)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(sum(range(1, 13)))
    assert left == []


def test_detached_task_keeps_its_daemon(inventory, tmp_path):
    """@task(detach=True): what the job leaves running after it ends is not killed (a daemon)."""
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        from cmflow import task
        @task(detach=True)
        def daemon(): return "sleep 3600.5151515 >/dev/null 2>&1 & echo started"
        '''))
    (tmp_path / "f.flow").write_text("from tk import *\ndaemon\n")
    r = cmflow("run", "f.flow", "-q", "--hosts", str(inventory(1)), "--run-dir", "run", cwd=tmp_path)
    left = marked("3600.5151515")
    kill_survivors(left)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "started"
    assert len(left) == 1
