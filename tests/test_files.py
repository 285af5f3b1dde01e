"""Files: inputs staged into a work directory per job, outputs fetched back verified (cmflow/files).

On this machine here; over real sshd hosts in test_files_ssh.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path

import pytest

from cmflow import Files, api, command
from cmflow.errors import FlowError
from cmflow.executor import RunOptions
from cmflow.files.spec import SpecError
from cmflow.hosts import parse_inventory

from conftest import cmflow


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def project(d: Path, tasks: str, flow: str) -> Path:
    (d / "data").mkdir(exist_ok=True)
    for i in range(4):
        (d / "data" / f"part{i}.csv").write_text(f"{i},{i * i}\n")
    (d / "tk.py").write_text(textwrap.dedent(tasks))
    (d / "f.flow").write_text(textwrap.dedent(flow))
    return d / "f.flow"


def local_inv(d: Path, slots: int = 4):
    return parse_inventory(f"hosts:\n  here: {{local: true, slots: {slots}}}\n", str(d / "inv.yaml"))


def run_flow(flow: Path, **opts):
    plan, inv = api.load(str(flow), inv=local_inv(flow.parent))
    return api.run_sync(plan, inv, RunOptions(**opts), flow.parent / "run")


TASKS = '''
    from cmflow import task, command

    @task(inputs=["data/part0.csv"])
    def analyse(i):
        return command(f"cat data/part0.csv data/part{i}.csv > out.csv; echo analysed {i}",
                       inputs=[f"data/part{i}.csv"], outputs=["out.csv"])
'''


def test_inputs_staged_outputs_fetched_and_verified(tmp_path):
    flow = project(tmp_path, TASKS, "from tk import analyse\nanalyse(1) + analyse(2) + analyse(3)\n")
    run = run_flow(flow)
    assert run.result.ok, run.result.failures
    value = run.result.value
    assert isinstance(value, Files) and len(value) == 3
    for i, p in enumerate(value, start=1):
        path = Path(p)
        assert path == run.run_dir.resolve() / "results" / f"{i}-analyse" / "out.csv"
        assert path.read_text() == f"0,0\n{i},{i * i}\n" and not path.is_symlink()
    # the job's stdout is its own, the work dirs are gone, nothing half-fetched remains
    assert (run.run_dir / "jobs" / "1.1.out").read_text() == "analysed 1\n"
    assert not (run.run_dir / "work").exists()
    assert not (run.run_dir / "results" / ".partial").exists()
    recs = [json.loads(line) for line in (run.run_dir / "jobs.jsonl").read_text().splitlines()]
    assert all(r["bytes_fetched"] == 8 for r in recs)


def test_folders_globs_and_output_globs(tmp_path):
    flow = project(tmp_path, '''
        from cmflow import command
        def many():
            return command("mkdir -p res; for f in data/*.csv; do cp $f res/$(basename $f .csv).txt; done; "
                           "cp data/part1.csv one.log; cp data/part2.csv two.log",
                           inputs=["data"], outputs=["res", "*.log"])
        def some():
            return command("ls data | tr '\\\\n' ' '", inputs=["data/part[12].csv"])
        ''', "from tk import *\nmany | some\n")
    run = run_flow(flow)
    assert run.result.ok, run.result.failures
    files, listing = run.result.value
    names = [str(Path(p).relative_to(run.run_dir.resolve() / "results" / "1-many")) for p in files]
    assert names == [f"res/part{i}.txt" for i in range(4)] + ["one.log", "two.log"]
    assert listing == "part1.csv part2.csv"


def test_missing_output_fails_by_name_and_keeps_the_work_dir(tmp_path):
    flow = project(tmp_path, '''
        from cmflow import command
        def lazy(): return command("echo made > made.txt", outputs=["made.txt", "never.txt"])
        def other(): return command("echo fine > ok.txt", outputs=["ok.txt"])
        ''', "from tk import *\nlazy | other\n")
    run = run_flow(flow)
    assert not run.result.ok
    (failure,) = run.result.failures
    assert "declared output 'never.txt' is missing" in failure.reason and failure.job.task == "lazy"
    kept = Path(failure.reason.split("work dir kept: ")[1].rstrip(")"))
    assert (kept / "made.txt").read_text() == "made\n"
    results = run.run_dir / "results"
    assert sorted(p.name for p in results.iterdir()) == ["2-other"]   # nothing of the failed job


def test_failed_command_keeps_its_work_dir_and_says_where(tmp_path):
    flow = project(tmp_path, '''
        from cmflow import command
        def bad(): return command("cat data/part1.csv > got.csv; exit 3", inputs=["data/part1.csv"],
                                  outputs=["got.csv"])
        ''', "from tk import bad\nbad\n")
    run = run_flow(flow)
    (failure,) = run.result.failures
    assert failure.reason.startswith("exit status 3 (work dir kept: ")
    kept = Path(failure.reason.split("work dir kept: ")[1].rstrip(")"))
    assert (kept / "got.csv").read_text() == "1,1\n"


def test_outputs_cannot_escape(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours\n")
    flow = project(tmp_path, f'''
        from cmflow import command
        def sneaky(): return command("ln -s {secret} out.txt", outputs=["out.txt"])
        def sneakydir(): return command("ln -s {tmp_path} d", outputs=["d/secret.txt"])
        ''', "from tk import *\nsneaky | sneakydir\n")
    run = run_flow(flow)
    reasons = sorted(f.reason for f in run.result.failures)
    assert len(reasons) == 2 and all("symlink or leaves the work directory" in r for r in reasons)
    assert not (run.run_dir / "results").exists() or not any((run.run_dir / "results").iterdir())


def test_keep_remote_keeps_work_dirs(tmp_path):
    flow = project(tmp_path, TASKS, "from tk import analyse\nanalyse(1)\n")
    run = run_flow(flow, keep_remote=True)
    assert run.result.ok
    (wd,) = [p for p in (run.run_dir / "work").iterdir() if not p.name.startswith(".")]
    assert (wd / "out.csv").exists() and (wd / "data" / "part1.csv").exists()


def test_declaration_errors_are_positioned(tmp_path):
    flow = project(tmp_path, '''
        from cmflow import command, task
        def nofile(): return command("true", inputs=["data/nope.csv"])
        def noglob(): return command("true", inputs=["data/*.json"])
        def up(): return command("true", outputs=["../x"])
        def absolute(): return command("true", outputs=["/etc/passwd"])
        ''', "from tk import *\n\nnofile | noglob\nup | absolute\n")
    with pytest.raises(FlowError) as e:
        api.load(str(flow), inv=local_inv(tmp_path))
    text = str(e.value)
    assert "f.flow:3:1: error: task 'nofile': input 'data/nope.csv' does not exist" in text
    assert "f.flow:3:10: error: task 'noglob': input 'data/*.json' matches no file" in text
    assert "f.flow:4:1: error: task 'up': output '../x' leaves the job's work directory" in text
    assert "f.flow:4:6: error: task 'absolute': output '/etc/passwd' is absolute" in text
    r = cmflow("check", str(flow))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "^^^^^^" in r.stderr


def test_command_checks_its_arguments():
    with pytest.raises(TypeError):
        command(["ls"])                    # type: ignore[arg-type]
    with pytest.raises(TypeError):
        command("x", outputs={"a": "s3:b"})
    c = command("x", inputs="a.csv", outputs={"o": "data:o.json", "p": ""})
    assert c.inputs == ("a.csv",) and c.outputs == ("o", "p") and c.publish == (("o", "data:o.json"),)
    with pytest.raises(SpecError):
        from cmflow.files.spec import check_relative
        check_relative("a/../../b", "output")


def test_files_add_by_concatenation():
    a, b = Files(["x", "y"]), Files(["z"])
    assert a + b == Files(["x", "y", "z"]) and isinstance(a + b, Files)
    assert sum([a, b]) == ("x", "y", "z")
    assert json.dumps(a) == '["x", "y"]'
    with pytest.raises(TypeError):
        a + 1   # noqa: B018


def test_plan_shows_files(tmp_path):
    flow = project(tmp_path, TASKS, "from tk import analyse\nanalyse(1)\n")
    r = cmflow("plan", str(flow))
    assert "< data/part1.csv (from " in r.stdout and "> out.csv" in r.stdout
    doc = json.loads(cmflow("plan", str(flow), "--format", "json").stdout)
    assert doc["jobs"][0]["outputs"] == [{"pattern": "out.csv"}]
    assert [i["dest"] for i in doc["jobs"][0]["inputs"]] == ["data/part0.csv", "data/part1.csv"]


def test_status_of_a_finished_run(tmp_path):
    flow = project(tmp_path, TASKS + '''
    def broken(): return command("exit 4", outputs=["x"])
    ''', "from tk import *\nanalyse(1) | analyse(2) | broken\n")
    r = cmflow("run", str(flow), "--run-dir", str(tmp_path / "runs" / "one"), cwd=tmp_path)
    assert r.returncode == 1
    text = cmflow("status", cwd=tmp_path)        # the latest run under ./runs
    assert text.returncode == 0, text.stderr
    assert "finished with failures, 2/3 done, 1 failed" in text.stdout
    assert "#3 broken on " in text.stdout and "exit status 4" in text.stdout
    doc = json.loads(cmflow("status", str(tmp_path / "runs" / "one"), "--format", "json").stdout)
    (host,) = doc["hosts"].values()
    assert (host["done"], host["failed"], host["bytes_fetched"]) == (2, 1, 16)
    assert doc["finished"] and doc["waiting"] == 0
    bad = cmflow("status", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "no such run directory" in bad.stderr


def test_inputs_changed_between_compile_and_run_are_checked(tmp_path):
    flow = project(tmp_path, TASKS, "from tk import analyse\nanalyse(1)\n")
    plan, inv = api.load(str(flow), inv=local_inv(tmp_path))
    os.unlink(tmp_path / "data" / "part1.csv")
    run = api.run_sync(plan, inv, RunOptions(), tmp_path / "run")
    (failure,) = run.result.failures
    assert "cannot read input" in failure.reason and "part1.csv" in failure.reason


def test_files_arguments_are_staged_under_their_job_names(tmp_path):
    from cmflow.files.runtime import job_files, stage_arguments

    a = tmp_path / "run" / "results" / "1-analyse"
    b = tmp_path / "run" / "results" / "2-analyse"
    for d in (a, b):
        d.mkdir(parents=True)
        (d / "out.json").write_text("{}")
    other = tmp_path / "out.json"
    other.write_text("[]")
    files = Files([str(a / "out.json"), str(b / "out.json")])
    args, kwargs, staged = stage_arguments([files, 3], {"more": [Files([str(other)]), 1]})
    assert args == [Files(["1-analyse/out.json", "2-analyse/out.json"]), 3]
    assert kwargs == {"more": [Files(["out.json"]), 1]}
    flat, _, _ = stage_arguments([[Files([str(a / "out.json")]), Files([str(b / "out.json")])]], {})
    assert flat == [Files(["1-analyse/out.json", "2-analyse/out.json"])]     # par(...) of Files: one Files
    assert [(i.dest, Path(i.source).parent.name) for i in staged] == \
        [("1-analyse/out.json", "1-analyse"), ("2-analyse/out.json", "2-analyse"), ("out.json", tmp_path.name)]
    cmd, jf = job_files(command("cat " + " ".join(args[0]) + " > merged", outputs=["merged"]), None, tmp_path,
                        staged)
    assert cmd == "cat 1-analyse/out.json 2-analyse/out.json > merged"
    assert [i.dest for i in jf.inputs] == ["1-analyse/out.json", "2-analyse/out.json", "out.json"]
    assert [o.pattern for o in jf.outputs] == ["merged"]
    assert job_files("echo plain", None, tmp_path) == ("echo plain", None)
    # two different files with one name: both arrive
    _, _, clash = stage_arguments([Files([str(other), str(tmp_path / "run" / "x" / "out.json")])], {})
    assert [i.dest for i in clash] == ["out.json", "2/out.json"]


def test_data_inputs_and_published_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("CMFLOW_DATA", str(tmp_path / "store"))
    monkeypatch.delenv("CMFLOW_DATA_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))          # no ~/.cmflow/data.yaml of the machine's user
    from cmflow.data.config import load_config
    from cmflow.data.service import DataService

    src = tmp_path / "table.csv"
    src.write_text("a,b\n1,2\n")
    DataService(load_config(None)).add(src, name="table.csv")
    flow = project(tmp_path, '''
        from cmflow import command
        def use(): return command("wc -l < table.csv > n.txt", inputs=["data:table.csv"],
                                  outputs={"n.txt": "data:count.txt"})
        ''', "from tk import use\nuse\n")
    run = run_flow(flow)
    assert run.result.ok, run.result.failures
    (path,) = run.result.value
    assert Path(path).read_text().strip() == "2"
    got = DataService(load_config(None)).get("count.txt", tmp_path / "back.txt")
    assert got.read_text().strip() == "2"
    # a record that does not exist fails the job that needs it, by name
    (tmp_path / "f.flow").write_text("from tk import *\nnope\n")
    (tmp_path / "tk.py").write_text('from cmflow import command\ndef nope(): return command("true", '
                                     'inputs=["data:missing.csv"])\n')
    run = run_flow(flow)
    (failure,) = run.result.failures
    assert "data:missing.csv" in failure.reason


def test_live_display_shows_staging_and_fetching(tmp_path):
    import io

    from rich.console import Console

    from cmflow.progress import LiveProgress

    flow = project(tmp_path, TASKS, "from tk import analyse\nanalyse(1) | analyse(2)\n")
    plan, inv = api.load(str(flow), inv=local_inv(tmp_path))
    live = LiveProgress(2, inv, stream=io.StringIO())
    try:
        j1, j2 = plan.jobs
        live.job_started(j1, "here", 1)
        live.job_started(j2, "here", 1)
        live.job_files(j1, "here", 1, "staging", 0, 0)
        live.job_files(j2, "here", 1, "fetching", 100, 0)
        out = io.StringIO()
        Console(file=out, width=120).print(live._render())
        text = out.getvalue()
        assert "1 staging" in text and "1 fetching" in text and "0 running" in text and "↑↓··" in text
    finally:
        live.close()


def _holding_run(tmp_path, hold_tail: str, expr: str, **popen):
    """`cmflow run` of EXPR, started in the background, over two jobs hold(1), hold(2) that fetch an output,
    touch tmp_path/readyN and then run HOLD_TAIL, and a quick one (4 local slots; run dir tmp_path/run)."""
    import subprocess
    import sys

    from conftest import ROOT

    flow = project(tmp_path, f'''
        from cmflow import command
        def hold(i): return command(f"cat data/part{{i}}.csv > o.txt; touch {tmp_path}/ready{{i}}; {hold_tail}",
                                    inputs=[f"data/part{{i}}.csv"], outputs=["o.txt"])
        def quick(): return command("echo q > q.txt", outputs=["q.txt"])
        ''', f"from tk import *\n{expr}\n")
    (tmp_path / "inv.yaml").write_text("hosts:\n  here: {local: true, slots: 4}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "cmflow", "run", str(flow), "--hosts", str(tmp_path / "inv.yaml"),
                             "--run-dir", str(tmp_path / "run"), "-q"], env=env, cwd=tmp_path, **popen)


def _await_both_holding(tmp_path, proc) -> None:
    """Until both hold jobs have started (their ready files), while the run lives (60 s at most)."""
    import time

    deadline = time.monotonic() + 60
    while not ((tmp_path / "ready1").exists() and (tmp_path / "ready2").exists()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)


def test_status_while_the_run_goes(tmp_path):
    """Two jobs hold (each blocks on a FIFO) while `cmflow status` reads the run from outside."""
    import subprocess

    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    proc = _holding_run(tmp_path, f"cat {fifo}", "(hold(1) | hold(2)); quick",
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _await_both_holding(tmp_path, proc)
        st = json.loads(cmflow("status", str(tmp_path / "run"), "--format", "json").stdout)
        assert not st["finished"] and st["hosts"]["here"]["running"] == 2
        assert st["done"] == 0 and st["waiting"] == 1 and st["total"] == 3
        text = cmflow("status", str(tmp_path / "run")).stdout
        assert ": running, 0/3 done" in text
    finally:
        try:   # both readers get EOF: the jobs end (no reader, the run is gone already: nothing to release)
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            proc.kill()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    st = json.loads(cmflow("status", str(tmp_path / "run"), "--format", "json").stdout)
    assert st["finished"] and st["done"] == 3 and st["hosts"]["here"]["bytes_fetched"] == 4 + 4 + 2
    watch = cmflow("status", str(tmp_path / "run"), "--watch")
    assert watch.returncode == 0 and "finished ok, 3/3 done" in watch.stdout


def test_status_of_a_killed_run(tmp_path):
    """cmflow SIGKILLed mid-run: its run directory has no summary and no cmflow holds it; `status` says
    killed (not running, no ETA, the clock stopped) and `--watch` returns instead of waiting for ever."""
    import signal
    import subprocess

    proc = _holding_run(tmp_path, "sleep 600", "quick; (hold(1) | hold(2))",
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _await_both_holding(tmp_path, proc)
        st = json.loads(cmflow("status", str(tmp_path / "run"), "--format", "json").stdout)
        assert not st["finished"] and not st["killed"] and st["eta"] is not None
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    st = json.loads(cmflow("status", str(tmp_path / "run"), "--format", "json").stdout)
    assert st["killed"] and not st["finished"] and st["eta"] is None
    assert st["done"] == 1 and st["hosts"]["here"]["running"] == 2
    again = json.loads(cmflow("status", str(tmp_path / "run"), "--format", "json").stdout)
    assert again["elapsed"] == st["elapsed"]   # a stopped clock: the run's last event, not now
    watch = cmflow("status", str(tmp_path / "run"), "--watch", timeout=60)
    assert watch.returncode == 0 and "run: killed (2 in flight when it stopped; --resume finishes it), 1/3 done" \
        in watch.stdout, watch.stdout
