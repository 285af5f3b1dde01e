"""cmflow's joblog read by the real GNU parallel (apt `parallel`), the format's own tool.

A flow with failures of every kind (exit codes, a signal, a timeout, a multi-line
command, a tab, a step that never started) is run by cmflow; then
``parallel --retry-failed`` and ``parallel --resume-failed`` on its joblog must
re-run exactly the failed commands, and cmflow's lines must be the ones parallel
itself writes for the same commands.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from cmflow import api
from cmflow.executor import RunOptions
from cmflow.hosts import parse_inventory
from cmflow.runlog import read_joblog

from conftest import need_tool

# name -> (command, fails?); every command first appends its name to $LOG
# the timed-out job sleeps only while STOP is absent, so the re-runs need no timeout
JOBS = {
    "ok": ("echo ok >> LOG; echo fine", False),
    "code": ("echo code >> LOG; exit 3", True),
    "sig": ("echo sig >> LOG; kill -9 $$", True),
    "slow": ("echo slow >> LOG; [ -e STOP ] || sleep 60", True),
    "multi": ("#!/bin/bash\n echo multi >> LOG; exit 3", True),
    "tab": ("printf 'a\tb\\n'; echo tab >> LOG; exit 5", True),
    "tabok": ("printf 'x\ty'; echo tabok >> LOG", False),
    "multiok": ("echo multiok >> LOG\ntrue\n", False),
    "after": ("echo after >> LOG", True),     # never starts: the step before it failed
}


def _parallel() -> str:
    path = need_tool("parallel", "parallel")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    if "GNU parallel" not in version:
        pytest.skip("parallel is not GNU parallel (moreutils?)")
    return path


def _ran(d: Path) -> list[str]:
    log = d / "LOG"
    names = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return sorted(names)


@pytest.fixture
def cmflow_joblog(tmp_path):
    """Run the flow with cmflow once; return (folder, joblog text, {name: seq})."""
    d = tmp_path
    tasks = ["from cmflow import task"]
    for name, (command, _) in JOBS.items():
        deco = "@task(timeout=1)\n" if name == "slow" else ""
        tasks.append(f"{deco}def {name}(): return {command!r}")
    (d / "tk.py").write_text("\n".join(tasks) + "\n")
    par = " | ".join(n for n in JOBS if n != "after")
    (d / "f.flow").write_text(f"from tk import *\n({par}); after\n")
    inv = parse_inventory("hosts:\n  here: {local: true, slots: 8}\n", "inv.yaml")
    cwd = os.getcwd()
    os.chdir(d)       # the commands write LOG relative to the working directory
    try:
        plan, _ = api.load(str(d / "f.flow"), inv=inv)
        run = api.run_sync(plan, inv, RunOptions(), d / "run")
    finally:
        os.chdir(cwd)
    assert not run.result.ok
    assert _ran(d) == sorted(n for n in JOBS if n != "after")
    seqs = {j.task: j.id for j in plan.jobs}
    return d, (d / "run" / "joblog").read_text(), seqs


def _parallel_env() -> dict:
    # the commands are POSIX sh, as cmflow runs them; parallel runs them with $SHELL
    return {**os.environ, "SHELL": "/bin/sh", "PARALLEL_HOME": "/nonexistent-parallel-home"}


def _lines(joblog_text: str) -> list[list[str]]:
    return [line.split("\t", 8) for line in joblog_text.split("\n")[1:] if line]


def test_joblog_lines_are_what_parallel_writes(cmflow_joblog):
    """Field by field against parallel's own joblog of the same commands (all but the run's timing)."""
    parallel = _parallel()
    d, text, seqs = cmflow_joblog
    (d / "STOP").unlink(missing_ok=True)
    ours = {row[8]: row for row in _lines(text)}
    assert len(_lines(text)) == len(JOBS)           # one line per job, the never-started one included
    # parallel's reference: the same commands (the timed-out one in a run of its own with --timeout 1)
    started = [c for n, (c, _) in JOBS.items() if n not in ("slow", "after")]
    (d / "cmds").write_bytes(b"\0".join(c.encode() for c in started) + b"\0")
    subprocess.run([parallel, "--null", "-a", "cmds", "--joblog", "pj", "-j8"], cwd=d, env=_parallel_env(),
                   capture_output=True, check=False)
    subprocess.run([parallel, "--timeout", "1", "--joblog", "+pj", ":::", JOBS["slow"][0]], cwd=d,
                   env=_parallel_env(), capture_output=True, check=False)
    theirs_text = (d / "pj").read_text()
    assert theirs_text.split("\n")[0] == text.split("\n")[0]    # the header
    theirs = {row[8]: row for row in _lines(theirs_text)}
    for name, (command, _) in JOBS.items():
        if name == "after":
            continue
        written = command.replace("\n", "\0")
        assert written in ours, f"{name}: command not written as parallel writes it"
        mine, ref = ours[written], theirs[written]
        # Host, Send, Receive, Exitval, Signal
        assert [mine[1], *mine[4:8]] == [ref[1], *ref[4:8]], name
        for row in (mine, ref):
            assert re.fullmatch(r"\d+\.\d{3}", row[2]) and re.fullmatch(r" *\d+\.\d{3}", row[3]) \
                and len(row[3]) >= 10, row
    after = ours[JOBS["after"][0]]
    assert after[0] == str(seqs["after"]) and after[6] == "-1" and after[2] == "0.000"


def test_parallel_retry_failed_reruns_exactly_the_failed_commands(cmflow_joblog):
    parallel = _parallel()
    d, text, seqs = cmflow_joblog
    (d / "STOP").touch()
    (d / "J").write_text(text)
    r = subprocess.run([parallel, "--retry-failed", "--joblog", "J", "-j8"], cwd=d, env=_parallel_env(),
                       capture_output=True, text=True)
    failed = sorted(n for n, (_, fails) in JOBS.items() if fails)
    assert _ran(d) == failed, r.stderr
    # the re-run commands are the very commands cmflow ran, multi-line and tab included
    again = {int(row[0]): row[8] for row in _lines((d / "J").read_text())[len(JOBS):]}
    assert again == {seqs[n]: JOBS[n][0].replace("\n", "\0") for n in failed}


def test_parallel_resume_failed_reruns_exactly_the_failed_commands(cmflow_joblog):
    parallel = _parallel()
    d, text, seqs = cmflow_joblog
    (d / "STOP").touch()
    (d / "J").write_text(text)
    # the same commands in the same order (seq = job id) as the input parallel resumes
    by_seq = sorted((seq, JOBS[name][0]) for name, seq in seqs.items())
    assert [s for s, _ in by_seq] == list(range(1, len(JOBS) + 1))
    (d / "cmds").write_bytes(b"".join(c.encode() + b"\0" for _, c in by_seq))
    r = subprocess.run([parallel, "--resume-failed", "--joblog", "J", "--null", "-a", "cmds", "-j8"], cwd=d,
                       env=_parallel_env(), capture_output=True, text=True)
    assert _ran(d) == sorted(n for n, (_, fails) in JOBS.items() if fails), r.stderr
    rows = read_joblog(d / "J")
    assert {r["Command"] for r in rows} == {c for c, _ in JOBS.values()}   # read back with newlines restored
