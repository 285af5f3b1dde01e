"""Resume: SIGKILL a real `cmflow run` at random moments, then finish it with --resume, locally and over ssh.

Each of the 40 jobs appends its number to a counter file, then sleeps; the
counter shows exactly which jobs ran, and how often.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmflow.journal import Journal, read_journal
from conftest import ROOT, cmflow

N = 40
VALUE = N * (N + 1) // 2


def write_flow(d: Path, counter: Path, n: int = N, sleep: float = 0.3) -> Path:
    (d / "tk.py").write_text(
        f'def job(i):\n    return f"echo {{i}} >> {counter}; sleep {sleep}; echo {{i}}"\n')
    flow = d / "f.flow"
    flow.write_text("from tk import job\n" + " + ".join(f"job({i})" for i in range(1, n + 1)) + "\n")
    return flow


def lines(counter: Path) -> list[str]:
    try:
        return counter.read_text().split()
    except FileNotFoundError:
        return []


def in_flight(run_dir: Path) -> int:
    """Jobs the journal shows started and not ended: the most a kill can lose."""
    open_: set[int] = set()
    for ev in read_journal(run_dir / "journal.jsonl"):
        if ev["ev"] == "start":
            open_.add(ev["seq"])
        elif ev["ev"] == "end":
            open_.discard(ev["seq"])
    return len(open_)


def start_run(cwd: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "cmflow", "run", "f.flow", "-q", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after(proc: subprocess.Popen, run_dir: Path, counter: Path, more: int, timeout: float = 60) -> bool:
    """SIGKILL proc once its run has begun (its journal exists: jobs still finishing from an earlier
    kill must not trigger this one) and the counter has grown by `more` lines; False if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not (run_dir / "journal.jsonl").exists():
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run did not start")
        time.sleep(0.01)
    target = len(lines(counter)) + more
    while proc.poll() is None and len(lines(counter)) < target:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run made no progress")
        time.sleep(0.01)   # polling for an event (a line in a file), not waiting for time to pass
    if proc.poll() is not None:
        proc.communicate()
        return False
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return True


def kill_and_resume(d: Path, counter: Path, hosts: list[str], kills: int = 5, seed: int | None = None) -> int:
    """Run, SIGKILL at random moments `kills` times (each time resuming the killed run), then finish.
    Returns the number of jobs that may have run twice (in flight at a kill)."""
    rng = random.Random(seed)
    slack = 0
    prev: Path | None = None
    for k in range(kills):
        run_dir = d / "runs" / f"k{k}"
        resume = ["--resume", str(prev)] if prev else []
        proc = start_run(d, *hosts, "--run-dir", str(run_dir), *resume)
        killed = kill_after(proc, run_dir, counter, rng.randint(1, 8))
        if killed:
            slack += in_flight(run_dir)
        prev = run_dir
    final = cmflow("run", "f.flow", "-q", *hosts, "--run-dir", str(d / "runs" / "final"), "--resume", str(prev),
                   cwd=d)
    assert final.returncode == 0, final.stderr
    assert final.stdout.strip() == str(VALUE)
    return slack


def check_counts(counter: Path, slack: int) -> None:
    got = lines(counter)
    assert sorted(set(got), key=int) == [str(i) for i in range(1, N + 1)]
    assert N <= len(got) <= N + slack, (len(got), slack)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def resume_again_runs_nothing(d: Path, counter: Path, hosts: list[str]) -> None:
    before = len(lines(counter))
    again = cmflow("run", "f.flow", "-q", *hosts, "--run-dir", str(d / "runs" / "again"), "--resume",
                   str(d / "runs" / "final"), cwd=d)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(VALUE)
    assert len(lines(counter)) == before
    s = summary(d / "runs" / "again")
    assert (s["jobs_run"], s["jobs_cached"]) == (0, N)


def edit_reruns_exactly_that_job(d: Path, counter: Path, hosts: list[str]) -> None:
    flow = d / "f.flow"
    flow.write_text(flow.read_text().replace("job(7) ", "job(77) "))
    plan = cmflow("plan", "f.flow", *hosts, "--resume", str(d / "runs" / "again"), cwd=d)
    assert plan.returncode == 0, plan.stderr
    runs = [line for line in plan.stdout.splitlines() if "runs:" in line]
    assert len(runs) == 1 and "#7 job(77)" in runs[0] and "arguments changed (was job(7))" in runs[0], plan.stdout
    before = lines(counter)
    edited = cmflow("run", "f.flow", "-q", *hosts, "--run-dir", str(d / "runs" / "edited"), "--resume",
                    str(d / "runs" / "again"), cwd=d)
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.strip() == str(VALUE - 7 + 77)
    assert lines(counter) == before + ["77"]
    s = summary(d / "runs" / "edited")
    assert (s["jobs_run"], s["jobs_cached"]) == (1, N - 1)


@pytest.mark.slow
def test_sigkill_five_times_then_resume_locally(tmp_path):
    """40 jobs of 0.3 s on 4 local slots, killed 5 times (about 10 s)."""
    counter = tmp_path / "counter"
    write_flow(tmp_path, counter)
    (tmp_path / "inv.yaml").write_text("hosts:\n  here: {local: true, slots: 4}\n")
    hosts = ["--hosts", "inv.yaml"]
    slack = kill_and_resume(tmp_path, counter, hosts)
    check_counts(counter, slack)
    resume_again_runs_nothing(tmp_path, counter, hosts)
    edit_reruns_exactly_that_job(tmp_path, counter, hosts)


@pytest.mark.slow
def test_sigkill_five_times_then_resume_over_ssh(sshd_hosts, tmp_path, shared):
    """40 jobs of 0.3 s on 3 sshd hosts x 2 slots, killed 5 times (about 15 s)."""
    counter = shared / "counter"
    write_flow(tmp_path, counter)
    hosts = ["--hosts", str(sshd_hosts.inventory_file)]
    slack = kill_and_resume(tmp_path, counter, hosts)
    check_counts(counter, slack)
    resume_again_runs_nothing(tmp_path, counter, hosts)
    edit_reruns_exactly_that_job(tmp_path, counter, hosts)


def test_resume_defaults_to_the_latest_run_of_the_flow(tmp_path):
    counter = tmp_path / "counter"
    write_flow(tmp_path, counter, n=3, sleep=0)
    (tmp_path / "other.flow").write_text("from tk import job\njob(9)\n")
    first = cmflow("run", "f.flow", "-q", cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.strip() == "6", first.stderr
    assert cmflow("run", "other.flow", "-q", cwd=tmp_path).returncode == 0   # the newest run, of another flow
    again = cmflow("run", "f.flow", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == "6", again.stderr
    assert "cached #1 job(1)" not in again.stderr      # without --resume everything runs
    resumed = cmflow("run", "f.flow", "--resume", cwd=tmp_path)
    assert resumed.returncode == 0 and resumed.stdout.strip() == "6", resumed.stderr
    assert resumed.stderr.count("cached") == 3
    assert sorted(lines(counter)) == ["1", "1", "2", "2", "3", "3", "9"]


def test_failed_and_changed_jobs_run_again_with_reasons(tmp_path):
    flag = tmp_path / "fail"
    flag.write_text("")
    (tmp_path / "tk.py").write_text(
        f'def ok(i): return f"echo {{i}}"\n'
        f'def flaky(): return "test ! -e {flag} && echo 10"\n'
        f'def cmd(): return "echo 100"\n')
    (tmp_path / "f.flow").write_text("from tk import *\nok(1) + flaky + cmd\n")
    first = cmflow("run", "f.flow", "-q", "--run-dir", "r1", cwd=tmp_path)
    assert first.returncode == 1
    (tmp_path / "tk.py").write_text((tmp_path / "tk.py").read_text().replace("echo 100", "echo 200"))
    plan = cmflow("plan", "f.flow", "--resume", "r1", "--format", "json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    states = {j["label"]: (j["state"], j["reason"]) for j in json.loads(plan.stdout)["jobs"]}
    assert states == {"ok(1)": ("cached", ""), "flaky": ("runs", "failed earlier (exit status 1)"),
                      "cmd": ("runs", "command changed")}
    flag.unlink()
    second = cmflow("run", "f.flow", "-q", "--run-dir", "r2", "--resume", "r1", cwd=tmp_path)
    assert second.returncode == 0 and second.stdout.strip() == "211", second.stderr


def test_a_missing_output_is_not_reused(tmp_path):
    (tmp_path / "tk.py").write_text('def a(): return "echo 5"\n')
    (tmp_path / "f.flow").write_text("from tk import a\na\n")
    assert cmflow("run", "f.flow", "-q", "--run-dir", "r1", cwd=tmp_path).returncode == 0
    (tmp_path / "r1" / "jobs" / "1.1.out").unlink()
    plan = cmflow("plan", "f.flow", "--resume", "r1", cwd=tmp_path)
    assert "runs: its stdout jobs/1.1.out is missing" in plan.stdout


def test_torn_last_line_is_ignored(tmp_path):
    j = Journal(tmp_path)
    j.append({"ev": "end", "seq": 1, "key": "k1", "ok": True})
    j.close()
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"ev": "end", "seq": 2, "ke')        # a write cut short by a crash
    assert [e["seq"] for e in read_journal(tmp_path / "journal.jsonl")] == [1]
    j = Journal(tmp_path)                              # appending after a torn line starts a fresh line
    j.append({"ev": "end", "seq": 3, "key": "k3", "ok": True})
    j.close()
    assert [e["seq"] for e in read_journal(tmp_path / "journal.jsonl")] == [1, 3]


def test_a_run_still_going_is_not_resumed_twice(tmp_path):
    (tmp_path / "tk.py").write_text(f'def a(): return "touch {tmp_path}/started; sleep 60"\n')
    (tmp_path / "f.flow").write_text("from tk import a\na\n")
    proc = start_run(tmp_path, "--run-dir", "r1")
    try:
        while not (tmp_path / "started").exists():
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        busy = cmflow("run", "f.flow", "--resume", "r1", "--run-dir", "r2", cwd=tmp_path)
        assert busy.returncode == 2
        assert "r1 is still running" in busy.stderr and "Traceback" not in busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate()


def test_resume_usage_errors(tmp_path):
    (tmp_path / "tk.py").write_text('def a(): return "echo 5"\n')
    (tmp_path / "f.flow").write_text("from tk import a\na\n")
    none = cmflow("run", "f.flow", "--resume", cwd=tmp_path)
    assert none.returncode == 2 and "no earlier run of f.flow" in none.stderr
    bad = cmflow("plan", "f.flow", "--resume", "nowhere", cwd=tmp_path)
    assert bad.returncode == 2 and "nowhere is not a run directory" in bad.stderr


def cached_lines(plan_text: str) -> int:
    return sum(line.endswith("  cached") for line in plan_text.splitlines())


def test_a_changed_input_file_reruns_exactly_its_jobs(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    (tmp_path / "b.txt").write_text("beta\n")
    (tmp_path / "tk.py").write_text(
        "from cmflow import command\n"
        "def up(name):\n"
        "    return command(f'tr a-z A-Z < {name} > out.txt; wc -c < {name}', inputs=[name], outputs=['out.txt'])\n")
    (tmp_path / "f.flow").write_text('from tk import up\nup("a.txt") + up("b.txt")\n')
    first = cmflow("run", "f.flow", "-q", "--run-dir", "r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "b.txt").write_text("beta, longer\n")
    plan = cmflow("plan", "f.flow", "--resume", "r1", cwd=tmp_path)
    assert f"runs: input {tmp_path / 'b.txt'} changed" in plan.stdout and cached_lines(plan.stdout) == 1
    second = cmflow("run", "f.flow", "--resume", "r1", "--run-dir", "r2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "cached #1" in second.stderr and "ok #2" in second.stderr
    outputs = sorted((tmp_path / "r2" / "results").rglob("out.txt"))
    assert [p.read_text() for p in outputs] == ["ALPHA\n", "BETA, LONGER\n"]
    # deep: same size and mtime put back, different content: only --deep sees it
    switched = cmflow("plan", "f.flow", "--resume=deep", "r2", cwd=tmp_path)
    assert "compared by content (--deep) now, not as before" in switched.stdout
    deep_run = cmflow("run", "f.flow", "-q", "--resume", "r2", "--deep", "--run-dir", "r3", cwd=tmp_path)
    assert deep_run.returncode == 0, deep_run.stderr
    st = (tmp_path / "a.txt").stat()
    (tmp_path / "a.txt").write_text("gamma\n")
    os.utime(tmp_path / "a.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    shallow = cmflow("plan", "f.flow", "--resume", "r2", cwd=tmp_path)
    assert cached_lines(shallow.stdout) == 2
    deep = cmflow("plan", "f.flow", "--resume=deep", "r3", cwd=tmp_path)
    assert cached_lines(deep.stdout) == 1 and f"#1 up(\"a.txt\")  runs: input {tmp_path / 'a.txt'} changed" in deep.stdout


def test_a_resume_killed_early_keeps_the_results_it_had_not_adopted_yet(tmp_path):
    counter = tmp_path / "counter"
    write_flow(tmp_path, counter, n=4, sleep=0)
    assert cmflow("run", "f.flow", "-q", "--run-dir", "r1", cwd=tmp_path).returncode == 0
    # r2 resumed r1 and died before adopting anything: only its run.json says where it came from
    (tmp_path / "r2").mkdir()
    (tmp_path / "r2" / "run.json").write_text(json.dumps({"resumed_from": str(tmp_path / "r1"), "started": 1}))
    done = cmflow("run", "f.flow", "-q", "--resume", "r2", "--run-dir", "r3", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "10", done.stderr
    assert summary(tmp_path / "r3")["jobs_cached"] == 4 and len(lines(counter)) == 4


def test_an_edited_argument_reruns_its_dependants_too(tmp_path):
    """`twice(sq(3))`: twice takes sq's value, so editing sq's argument re-runs both; `other` stays cached."""
    counter = tmp_path / "count"
    (tmp_path / "tk.py").write_text(
        f'def sq(i): return f"echo sq{{i}} >> {counter}; echo $(({{i}}*{{i}}))"\n'
        f'def twice(x): return f"echo twice{{x}} >> {counter}; echo $((2*{{x}}))"\n'
        f'def other(): return "echo other >> {counter}; echo 1"\n')
    (tmp_path / "f.flow").write_text("from tk import *\ntwice(sq(3)) + other\n")
    first = cmflow("run", "f.flow", "-q", "--run-dir", "r1", cwd=tmp_path)
    assert first.returncode == 0 and first.stdout.strip() == "19", first.stderr
    assert sorted(lines(counter)) == ["other", "sq3", "twice9"]
    (tmp_path / "f.flow").write_text("from tk import *\ntwice(sq(4)) + other\n")
    again = cmflow("run", "f.flow", "-q", "--resume", "r1", "--run-dir", "r2", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == "33", again.stderr
    assert lines(counter)[3:] == ["sq4", "twice16"]          # exactly the edited job and its dependant
    assert summary(tmp_path / "r2")["jobs_cached"] == 1


def test_a_reused_big_stdout_stays_a_reference(tmp_path):
    """A stdout over 1 MiB is a {"stdout_file", "bytes"} reference in the run that made it; reused by a
    resume it is the same kind of value (the adopted file), not the whole output read into memory."""
    flag = tmp_path / "fail"
    flag.write_text("")
    size = (1 << 20) + 4321
    (tmp_path / "tk.py").write_text(
        f'def big(): return "head -c {size} /dev/zero | tr \'\\\\0\' x"\n'
        f'def flaky(): return "test ! -e {flag} && echo 10"\n')
    (tmp_path / "f.flow").write_text("from tk import *\nbig | flaky\n")
    first = cmflow("run", "f.flow", "-q", "--format", "json", "--run-dir", "r1", cwd=tmp_path)
    assert first.returncode == 1
    flag.unlink()
    second = cmflow("run", "f.flow", "-q", "--format", "json", "--run-dir", "r2", "--resume", "r1", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    ref, ten = json.loads(second.stdout)
    assert ten == 10 and ref == {"stdout_file": "r2/jobs/1.0.out", "bytes": size}
    assert (tmp_path / ref["stdout_file"]).read_bytes() == b"x" * size
    summary = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert summary["jobs_cached"] == 1 and summary["jobs_run"] == 1


def test_a_job_reducing_files_is_reused_across_resumes(tmp_path):
    """`merge(par(part(i) ...))` receives the parts' fetched files: a resume adopts those files into its
    own run directory, and merge, given the same files, is reused too; a part whose output changed
    re-runs merge."""
    counter = tmp_path / "count"
    (tmp_path / "tk.py").write_text(
        'from cmflow import command\n'
        f'def part(i): return command(f"echo {{i}} >> {counter}; echo {{i}} > p.txt", outputs=["p.txt"])\n'
        f'def merge(ps): return command("echo merge >> {counter}; cat " + " ".join(ps) + " > m.txt", '
        'outputs=["m.txt"])\n')
    (tmp_path / "f.flow").write_text("from tk import *\nmerge(par(part(i) for i in range(3)))\n")

    def run(name: str, *more: str) -> str:
        r = cmflow("run", "f.flow", "-q", "--format", "json", "--run-dir", name, *more, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        (merged,) = json.loads(r.stdout)
        return Path(merged).read_text()

    assert run("r1") == "0\n1\n2\n" and sorted(lines(counter)) == ["0", "1", "2", "merge"]
    counter.unlink()
    assert run("r2", "--resume", "r1") == "0\n1\n2\n" and lines(counter) == []
    assert run("r3", "--resume", "r2") == "0\n1\n2\n" and lines(counter) == []
    summary = json.loads((tmp_path / "r3" / "summary.json").read_text())
    assert summary["jobs_cached"] == 4 and summary["jobs_run"] == 0
    (tmp_path / "f.flow").write_text("from tk import *\nmerge(par(part(i) for i in [0, 1, 7]))\n")
    assert run("r4", "--resume", "r3") == "0\n1\n7\n" and sorted(lines(counter)) == ["7", "merge"]


def test_plan_resume_says_a_job_whose_outputs_were_never_fetched_runs(tmp_path):
    """`plan --resume` decides as `run --resume` does: an OK end without its verified fetch is not reused."""
    (tmp_path / "tk.py").write_text('from cmflow import command\n'
                                    'def out(): return command("echo 1 > o.txt", outputs=["o.txt"])\n')
    (tmp_path / "f.flow").write_text("from tk import out\nout\n")
    assert cmflow("run", "f.flow", "-q", "--run-dir", "r1", cwd=tmp_path).returncode == 0
    assert "cached" in cmflow("plan", "f.flow", "--resume", "r1", cwd=tmp_path).stdout
    journal = tmp_path / "r1" / "journal.jsonl"
    journal.write_text("".join(ln for ln in journal.read_text().splitlines(True) if '"fetched"' not in ln))
    plan = cmflow("plan", "f.flow", "--resume", "r1", cwd=tmp_path)
    assert "runs: its outputs were never fetched" in plan.stdout, plan.stdout
