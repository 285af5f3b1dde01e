"""Running flows with real local processes: values, concurrency, slots, failure, halt, signals, logs."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cmflow import api
from cmflow.executor import RunOptions, read_value
from cmflow.hosts import parse_inventory
from cmflow.journal import read_journal
from cmflow.runlog import read_joblog

from conftest import ROOT, cmflow
from procs import kill_survivors, marked


def alive(pid: int) -> bool:
    """True if pid is a live process (a zombie that nobody reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def local_inv(slots: int = 4, extra: str = ""):
    return parse_inventory(f"hosts:\n  here: {{local: true, slots: {slots}}}\n{extra}", "inv.yaml")


def run_flow(flowdir, tasks: str, flow: str, inv=None, **opts):
    flowdir("tk.py", textwrap.dedent(tasks))
    path = flowdir("f.flow", textwrap.dedent(flow))
    inv = inv or local_inv()
    plan, _ = api.load(str(path), inv=inv)
    run = api.run_sync(plan, inv, RunOptions(**opts), flowdir.path / "run")
    return run


# the joblog rounds times to milliseconds; a job that starts the moment another
# ends may appear to overlap it by up to 1 ms
ROUNDING = 0.0011


def peak_per_host(joblog: Path, by=lambda host: host) -> dict[str, int]:
    """From jobs.jsonl beside the joblog: it names local hosts (the joblog says ':' as parallel does)."""
    events = []
    for line in (joblog.parent / "jobs.jsonl").read_text().splitlines():
        r = json.loads(line)
        start, end = round(r["start"], 3), round(r["end"], 3)
        events += [(start, 1, by(r["host"])), (end - ROUNDING, -1, by(r["host"]))]
    peak: dict[str, int] = {}
    cur: dict[str, int] = {}
    for _, delta, host in sorted(events, key=lambda e: (e[0], e[1])):
        cur[host] = cur.get(host, 0) + delta
        peak[host] = max(peak.get(host, 0), cur[host])
    return peak


def test_seed_flow_runs_four_jobs_and_adds(tmp_path):
    r = cmflow("run", str(ROOT / "flows" / "seed.flow"), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cmds = ["nproc", "awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo", "getconf PAGESIZE",
            "getconf LONG_BIT"]
    expected = sum(int(subprocess.run(["sh", "-c", c], capture_output=True, text=True).stdout) for c in cmds)
    assert r.stdout.strip() == str(expected)
    rows = read_joblog(tmp_path / "run" / "joblog")
    assert sorted(int(x["Seq"]) for x in rows) == [1, 2, 3, 4]


def test_joblog_and_counts_hold_only_jobs_the_flow_runs(flowdir):
    """A sub-flow bound but only run placed elsewhere, or not at all, leaves no never-started line in the
    joblog (GNU parallel's --retry-failed would run it) and no job the counts wait for."""
    inv = local_inv(extra="  there: {local: true}\n")
    run = run_flow(flowdir, "def t(n): return f'echo {n}'\n",
                   "from tk import t\nunused = t(1)\nsetup = t(2) | t(3)\nsetup @ there ; t(4)\n", inv=inv)
    assert run.result.ok and run.result.value == 4 and run.result.jobs_run == 3
    rows = read_joblog(run.run_dir / "joblog")
    assert sorted(r["Command"] for r in rows) == ["echo 2", "echo 3", "echo 4"]
    assert json.loads((run.run_dir / "summary.json").read_text())["jobs"] == 3


def test_par_runs_concurrently(flowdir):
    # each job can only finish if the other runs at the same time (they meet at two FIFOs)
    d = flowdir.path
    os.mkfifo(d / "ab")
    os.mkfifo(d / "ba")
    run = run_flow(flowdir, f'''
        def a(): return "echo a > {d}/ab; cat {d}/ba"
        def b(): return "cat {d}/ab; echo b > {d}/ba"
        ''', "from tk import *\na | b\n", timeout=20)
    assert run.result.ok and run.result.value == ["b", "a"]


def test_seq_waits(flowdir):
    d = flowdir.path
    run = run_flow(flowdir, f'''
        def first(): return "echo 1 > {d}/tmp && mv {d}/tmp {d}/first.done"
        def second(): return "cat {d}/first.done"
        ''', "from tk import *\nfirst ; second\n")
    assert run.result.ok and run.result.value == 1


def test_slots_and_global_cap_honoured(flowdir):
    inv = parse_inventory("hosts:\n  one: {local: true, slots: 1}\n  three: {local: true, slots: 3}\n", "i.yaml")
    run = run_flow(flowdir, '''
        def j(i): return f"sleep 0.05; echo {i}"
        ''', "from tk import j\n" + " | ".join(f"j({i})" for i in range(16)) + "\n", inv=inv)
    assert run.result.ok and run.result.value == list(range(16))
    peak = peak_per_host(run.run_dir / "joblog")
    assert peak["one"] <= 1 and peak["three"] <= 3
    run2 = run_flow(flowdir, '''
        def j(i): return f"sleep 0.05; echo {i}"
        ''', "from tk import j\n" + " | ".join(f"j({i})" for i in range(12)) + "\n", inv=inv, jobs=2)
    assert peak_per_host(run2.run_dir / "joblog", by=lambda host: "all")["all"] == 2


def test_reduction_order_strings_and_lists(flowdir):
    # later operands finish first; the sum must still read left to right
    tasks = '''
        def s(i): return f"sleep 0.{9 - i}; echo '\\"{i}\\"'"
        def l(i): return f"sleep 0.{9 - i}; echo [{i}]"
        '''
    run = run_flow(flowdir, tasks, "from tk import *\n" + " + ".join(f"s({i})" for i in range(6)) + "\n")
    assert run.result.value == "012345"
    run = run_flow(flowdir, tasks, "from tk import *\n" + " + ".join(f"l({i})" for i in range(6)) + "\n")
    assert run.result.value == [0, 1, 2, 3, 4, 5]


def test_sum_of_mismatched_types_names_both(flowdir):
    run = run_flow(flowdir, '''
        def n(): return "echo 1"
        def t(): return "echo word"
        ''', "from tk import *\nn + t\n")
    assert not run.result.ok
    reason = run.result.failures[0].reason
    assert "cannot add int 1 (n at" in reason and "str 'word' (t at" in reason and "f.flow:2:5" in reason


def test_failure_propagates_independent_work_carries_on(flowdir):
    d = flowdir.path
    run = run_flow(flowdir, f'''
        def bad(): return "echo oops >&2; exit 3"
        def after(): return "touch {d}/after"
        def other(): return "touch {d}/other; echo 5"
        ''', "from tk import *\n(bad ; after) | other\n")
    assert not run.result.ok and run.exit_status == 1
    assert (d / "other").exists() and not (d / "after").exists()
    [f] = run.result.failures
    assert f.job.task == "bad" and f.exit_status == 3 and f.host == "here" and "oops" in f.stderr_tail


def test_halt_soon_lets_running_jobs_finish(flowdir):
    d = flowdir.path
    os.mkfifo(d / "go")
    run_dir = d / "run"
    # slow waits until the failure of bad is in the job log, then finishes;
    # next (after slow) must never start.
    run = run_flow(flowdir, f'''
        def bad(): return "cat {d}/go; exit 1  # BADJOB"
        def slow(): return "echo go > {d}/go; until grep -q BADJOB {run_dir}/joblog; do sleep 0.01; done; touch {d}/slow"
        def next(): return "touch {d}/next"
        ''', "from tk import *\nbad | (slow ; next)\n", halt="soon", timeout=30)
    assert not run.result.ok and run.result.halted
    assert (d / "slow").exists() and not (d / "next").exists()


def test_halt_now_kills_running_jobs(flowdir):
    d = flowdir.path
    os.mkfifo(d / "pid")
    run = run_flow(flowdir, f'''
        def long(): return "echo $$ > {d}/pid; exec sleep 60"
        def bad(): return "read p < {d}/pid; echo $p > {d}/long.pid; exit 1"
        ''', "from tk import *\nlong | bad\n", halt="now")
    assert not run.result.ok and run.result.halted
    assert not alive(int((d / "long.pid").read_text()))
    # killed, not finished: without halt now it would have run its 60 s and exited 0
    rows = {r["Seq"]: r for r in read_joblog(run.run_dir / "joblog")}
    assert rows["1"]["Signal"] == "15" and rows["1"]["Exitval"] == "-1"


def test_timeout_kills_the_whole_tree(flowdir):
    # Survivors are found by a marker in their argv, not by pid files the job writes: under
    # load the timeout may fire before the job has written them (the old flaky race).
    marker = f"61.{os.getpid()}{secrets.randbelow(10**6):06d}"
    run = run_flow(flowdir, f'''
        from cmflow import task
        @task(timeout=2)
        def t(): return "sleep {marker} & sleep {marker}"
        ''', "from tk import t\nt\n")
    assert not run.result.ok and "timed out" in run.result.failures[0].reason
    left = marked(marker)
    kill_survivors(left)
    assert left == []


def test_retries(flowdir):
    d = flowdir.path
    run = run_flow(flowdir, f'''
        def flaky(): return "if [ -e {d}/once ]; then echo 7; else touch {d}/once; exit 1; fi"
        ''', "from tk import *\nflaky\n", retries=1)
    assert run.result.ok and run.result.value == 7
    # the joblog has the job's final attempt, as GNU parallel's; jobs.jsonl has every attempt
    rows = read_joblog(run.run_dir / "joblog")
    assert [r["Exitval"] for r in rows] == ["0"]
    records = [json.loads(line) for line in (run.run_dir / "jobs.jsonl").read_text().splitlines()]
    assert [(r["attempt"], r["exit_status"]) for r in records] == [(1, 1), (2, 0)]


def _start_run(folder: Path) -> subprocess.Popen:
    """A real `cmflow run f.flow` in `folder`, its run directory `run`, as a user starts it."""
    return subprocess.Popen([sys.executable, "-m", "cmflow", "run", "f.flow", "--run-dir", "run"], cwd=folder,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_cancels_and_leaves_no_child(tmp_path, sig, status):
    os.mkfifo(tmp_path / "pid")
    (tmp_path / "tk.py").write_text(f'def long(i): return "echo $$ > {tmp_path}/pid; exec sleep 60"\n'
                                    f'def other(): return "sleep 60"\n')
    (tmp_path / "f.flow").write_text("from tk import *\nlong(1) | other\n")
    proc = _start_run(tmp_path)
    pid = int((tmp_path / "pid").read_text())   # blocks until the job runs
    assert alive(pid)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert not alive(pid)
    assert f"interrupted by signal {int(sig)}" in err
    assert (tmp_path / "run" / "joblog").read_text().startswith("Seq\tHost")
    leftovers = subprocess.run(["pgrep", "-f", "sleep 60"], capture_output=True, text=True).stdout.split()
    children = [p for p in leftovers if _ppid(int(p)) == proc.pid]
    assert children == []



def test_a_signal_s_summary_still_names_what_failed_before_it(tmp_path):
    """Ctrl-C after a job failed: the summary on stderr and summary.json name that failure (they
    said only "interrupted", and summary.json had no failures)."""
    os.mkfifo(tmp_path / "started")
    (tmp_path / "tk.py").write_text(f'def bad(): return "echo boom >&2; exit 3"\n'
                                    f'def long(): return "echo > {tmp_path}/started; exec sleep 60"\n')
    (tmp_path / "f.flow").write_text("from tk import *\nbad | long\n")
    proc = _start_run(tmp_path)
    (tmp_path / "started").read_text()     # blocks until `long` runs
    deadline = time.monotonic() + 60
    while not any(ev["ev"] == "end" and ev["task"] == "bad" for ev in read_journal(tmp_path / "run" / "journal.jsonl")):
        assert time.monotonic() < deadline and proc.poll() is None, "bad never ended"
        time.sleep(0.05)   # the journal has `bad`'s end as soon as cmflow took it in
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted by signal 2" in err
    assert "bad (" in err and "exit status 3" in err and "| boom" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cancelled"] is True
    assert [(f["task"], f["exit_status"]) for f in summary["failures"]] == [("bad", 3)]

def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError):
        return -1


def test_joblog_and_records(flowdir):
    run = run_flow(flowdir, '''
        def a(): return "echo '{\\"x\\": 1}'"
        def b(): return "printf 'tab\\there'; exit 2"
        ''', "from tk import *\na | b\n")
    header = (run.run_dir / "joblog").read_text().splitlines()[0]
    assert header.split("\t") == ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal",
                                  "Command"]
    rows = {r["Seq"]: r for r in read_joblog(run.run_dir / "joblog")}
    assert rows["1"]["Exitval"] == "0" and rows["2"]["Exitval"] == "2" and rows["1"]["Receive"] == "9"
    float(rows["1"]["Starttime"]) and float(rows["1"]["JobRuntime"])
    records = [json.loads(line) for line in (run.run_dir / "jobs.jsonl").read_text().splitlines()]
    by_task = {r["task"]: r for r in records}
    assert by_task["a"]["value"] == {"x": 1} and by_task["a"]["where"].endswith("f.flow:2:1")
    assert by_task["b"]["exit_status"] == 2 and by_task["b"]["host"] == "here"
    assert Path(by_task["b"]["stdout"]).read_text() == "tab\there"
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert summary["ok"] is False and summary["failures"][0]["task"] == "b"


def test_value_readings():
    assert read_value("42\n", "auto") == 42
    assert read_value("[1, 2]", "auto") == [1, 2]
    assert read_value("hello world\n", "auto") == "hello world"
    assert read_value("true", "text") == "true"
    assert read_value("a\nb\n", "lines") == ["a", "b"]
    assert read_value("3", lambda s: int(s) * 2) == 6
    with pytest.raises(ValueError):
        read_value("nope", "json")


def test_cli_eval_and_json_format(tmp_path):
    (tmp_path / "tk.py").write_text("def a(): return 'echo 2'\ndef b(n): return f'echo {n}'\n")
    r = cmflow("eval", "a + b(40)", "--tasks", "tk.py", "--format", "json", "-q", "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == 42


def test_cli_failure_summary(tmp_path):
    (tmp_path / "tk.py").write_text("def bad(): return 'echo disk full >&2; exit 4'\n")
    (tmp_path / "f.flow").write_text("from tk import bad\nbad\n")
    r = cmflow("run", "f.flow", "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 1
    assert "1 failure:" in r.stderr and "bad (f.flow:2:1) on localhost: exit status 4" in r.stderr
    assert "| disk full" in r.stderr and "Traceback" not in r.stderr


def test_cli_usage_errors(tmp_path):
    (tmp_path / "f.flow").write_text("a |\n")
    r = cmflow("run", "f.flow", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("f.flow:1:4: error:")
    r = cmflow("run", "f.flow", "--halt", "later", cwd=tmp_path)
    assert r.returncode == 2
    r = cmflow("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "Usage:" in r.stderr


def test_live_display_runs(flowdir, capsys):
    """The rich display (as on a terminal) follows a run with a failure and a retry without breaking it."""
    d = flowdir.path
    flowdir("tk.py", f'def ok(i): return f"echo {{i}}"\ndef flaky(): return "[ -e {d}/x ] || {{ touch {d}/x; exit 1; }}"\n')
    path = flowdir("f.flow", "from tk import *\nok(1) + ok(2) | flaky\n")
    inv = local_inv()
    plan, _ = api.load(str(path), inv=inv)
    run = api.run_sync(plan, inv, RunOptions(retries=1), d / "run", display="live")
    assert run.result.ok and run.result.value == [3, ""]
    err = capsys.readouterr().err
    assert "Traceback" not in err


# ----------------------------------------------------------- halt policies, end to end

HALT_TASKS = '''
    def bad(): return "exit 1"
    def long(i): return f"sleep {i}; echo {i}"
    '''


@pytest.mark.parametrize("halt", ["soon", "now"])
def test_halt_starts_nothing_after_the_failing_job(flowdir, halt):
    # one slot: bad runs first; when it ends, neither policy may start long(1)
    # (main handed the freed slot on before it closed, and "now" then cancelled it)
    run = run_flow(flowdir, HALT_TASKS, "from tk import *\nbad | long(1) | long(2) | long(3)\n", inv=local_inv(1), halt=halt)
    assert not run.result.ok and run.result.halted
    started = [r["Seq"] for r in read_joblog(run.run_dir / "joblog") if float(r["Starttime"]) > 0]
    assert started == ["1"]
    assert [json.loads(line)["seq"] for line in (run.run_dir / "jobs.jsonl").read_text().splitlines()] == [1]
    assert [f.job.task for f in run.result.failures] == ["bad"]



def test_cmflow_run_is_the_python_api(tmp_path):
    """Issue 3.7: a Python API under the CLI, `cmflow.run(...)`, that scripts and tests share."""
    import cmflow

    (tmp_path / "tk.py").write_text('def a(): return "echo 2"\ndef b(): return "echo 3"\n')
    (tmp_path / "f.flow").write_text("from tk import a, b\na + b\n")
    run = cmflow.run(str(tmp_path / "f.flow"), run_dir=str(tmp_path / "run"), jobs=1, retries=1)
    assert run.result.ok and run.result.value == 5 and run.exit_status == 0
    assert len(read_joblog(tmp_path / "run" / "joblog")) == 2
