"""The run report: trace.tsv, report.html written by every run, opened in real headless Chromium."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmflow.journal import read_journal
from chromium import Browser, find_chromium
from conftest import ROOT, cmflow

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")


def _failing_run(d: Path) -> Path:
    """Run d/f.flow on 3 local slots into d/run; it must fail (exit 1)."""
    (d / "inv.yaml").write_text("hosts:\n  here: {local: true, slots: 3}\n")
    done = cmflow("run", "f.flow", "--hosts", "inv.yaml", "--run-dir", "run", "-q", cwd=d)
    assert done.returncode == 1, done.stderr
    return d / "run"


def _run_with_failures(d: Path) -> Path:
    """A real run: 6 good jobs, one that fails for good (with stderr), one that fails once then passes."""
    flag = d / "flaky-once"
    (d / "tk.py").write_text(
        "from cmflow import task\n"
        "def ok(i): return f'sleep 0.1; echo {i}'\n"
        "def bad(): return 'echo boom >&2; echo \"<script>alert(1)</script>\" >&2; exit 3'\n"
        "@task(retries=1)\n"
        f"def flaky(): return 'if [ -e {flag} ]; then echo 100; else touch {flag}; echo no >&2; exit 1; fi'\n")
    (d / "f.flow").write_text("from tk import *\n(ok(1) | ok(2) | ok(3)); ok(4) + ok(5) + ok(6) + flaky; bad\n")
    return _failing_run(d)


def test_trace_has_a_row_per_job_with_keys_and_attempts(tmp_path):
    run = _run_with_failures(tmp_path)
    rows = [line.split("\t") for line in (run / "trace.tsv").read_text().splitlines()]
    head, body = rows[0], rows[1:]
    assert head[:8] == ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive", "Exitval", "Signal"]
    assert head[-1] == "Command" and {"Task", "Key", "Attempts", "Wait", "Running"} <= set(head)
    assert len(body) == 8
    by_task = {}
    for r in body:
        doc = dict(zip(head, r))
        by_task.setdefault(doc["Task"], []).append(doc)
    assert [d["Attempts"] for d in by_task["flaky"]] == ["2"] and by_task["flaky"][0]["State"] == "ok"
    assert by_task["bad"][0]["Exitval"] == "3" and by_task["bad"][0]["State"] == "failed"
    keys = {ev["seq"]: ev["key"] for ev in read_journal(run / "journal.jsonl") if ev["ev"] == "end"}
    assert all(dict(zip(head, r))["Key"] == keys[int(r[0])] for r in body)


def test_no_report_leaves_none(tmp_path):
    (tmp_path / "tk.py").write_text("def a(): return 'echo 1'\n")
    (tmp_path / "f.flow").write_text("from tk import a\na\n")
    assert cmflow("run", "f.flow", "--run-dir", "r", "--no-report", "-q", cwd=tmp_path).returncode == 0
    assert not (tmp_path / "r" / "report.html").exists() and (tmp_path / "r" / "trace.tsv").exists()
    made = cmflow("report", "r", "-o", "elsewhere.html", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "elsewhere.html").read_text().startswith("<!DOCTYPE html>")
    missing = cmflow("report", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "not a run directory" in missing.stderr


def test_a_big_run_gets_its_trace_and_no_page_at_the_end(tmp_path, monkeypatch, capsys):
    # the end of a run reads plan.json a job a line; the page's data for a million jobs would
    # take more memory than the run, so above REPORT_MAX_JOBS only trace.tsv is written
    from cmflow import report
    from cmflow.report.data import load_run

    run = _run_with_failures(tmp_path)
    trace = (run / "trace.tsv").read_text()
    (run / "report.html").unlink()
    monkeypatch.setattr(report, "REPORT_MAX_JOBS", 7)
    report.finish_run(run)
    assert not (run / "report.html").exists() and (run / "trace.tsv").read_text() == trace
    assert "report.html not written at the end of a run of 8 jobs" in capsys.readouterr().err
    streamed = load_run(run)
    # an older plan.json, indented: read whole, the same jobs and root
    (run / "plan.json").write_text(json.dumps(json.loads((run / "plan.json").read_text()), indent=2))
    whole = load_run(run)
    assert [(j.seq, j.label, j.command, j.where) for j in streamed.jobs.values()] == \
        [(j.seq, j.label, j.command, j.where) for j in whole.jobs.values()]
    assert streamed.plan_root == whole.plan_root and streamed.plan_root["op"] == "seq"
    assert load_run(run, full=False).plan_root is None


def _reference_trace(run: Path) -> str:
    from cmflow.report import _trace_lines
    from cmflow.report.data import load_run

    return "".join(_trace_lines(load_run(run, full=False)))


def _cut_after_each_line(run: Path, lines: list[str], torn: str = ""):
    """The run's journal cut after each of its lines (then `torn`): the run killed there. At each cut the
    streamed trace.tsv is the reference reader's, byte for byte, and the page load_run makes (start lines
    left undecoded unless no end follows) is the one every line decoded makes; yields (cut, that page)."""
    from cmflow.report import report_doc, write_trace
    from cmflow.report import data as report_data

    for n in range(len(lines) + 1):
        (run / "journal.jsonl").write_text("".join(lines[:n]) + torn)
        write_trace(run)
        assert (run / "trace.tsv").read_text() == _reference_trace(run), n
        lazy = report_doc(report_data.load_run(run))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(report_data, "read_journal_lazily", read_journal)
            assert report_doc(report_data.load_run(run)) == lazy, n
        yield n, lazy


def test_the_streamed_trace_is_the_reference_one_at_every_point_of_a_killed_run(tmp_path):
    # trace.tsv of a run over REPORT_MAX_JOBS is written in one pass over the journal (report/trace.py),
    # keeping no object per job; its rows must be load_run's, byte for byte, whatever the journal holds:
    # cut after each of its lines, it is a run killed there (jobs in flight, a retry pending, never run)
    from cmflow.report import write_trace
    from cmflow.report.trace import trace_lines

    run = _run_with_failures(tmp_path)
    lines = (run / "journal.jsonl").read_text().splitlines(keepends=True)
    assert {"start", "end"} <= {json.loads(line)["ev"] for line in lines}
    (run / "summary.json").unlink()
    for n, lazy in _cut_after_each_line(run, lines, torn='{"ev": "end", "se'):   # a torn last line too
        assert trace_lines(run) is not None
        # a job that did not run has the plan's label
        if n == 0:
            assert sorted(row[1] for row in lazy["jobs"]) == ["bad", "flaky"] + [f"ok({i})" for i in range(1, 7)]
    # a journal two runs appended to (a reused --run-dir): the reference reader takes over, same rows
    (run / "journal.jsonl").write_text("".join(lines * 2))
    assert trace_lines(run) is None
    write_trace(run)
    assert (run / "trace.tsv").read_text() == _reference_trace(run)
    # plan.json's jobs out of id order: found while writing, the reference reader takes over
    head, *jobs_and_rest = (run / "plan.json").read_text().split("\n")
    jobs = [j for j in jobs_and_rest if j.startswith("  {")]
    rest = [j for j in jobs_and_rest if not j.startswith("  {")]
    jobs[0], jobs[1] = jobs[1].rstrip(","), jobs[0] + ","
    (run / "plan.json").write_text("\n".join([head, rest[0], *jobs, *rest[1:]]))
    write_trace(run)
    assert (run / "trace.tsv").read_text() == _reference_trace(run)
    assert not [p for p in run.iterdir() if p.name.startswith(".")]   # no spill or temp file left


def test_the_streamed_trace_of_a_resumed_run_shows_cached_jobs(tmp_path):
    from cmflow.report import write_trace

    run = _run_with_failures(tmp_path)
    again = cmflow("run", "f.flow", "--hosts", "inv.yaml", "--run-dir", "again", "--resume", "run", "-q",
                   cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    trace = tmp_path / "again" / "trace.tsv"
    assert "\tcached\t" in trace.read_text()
    trace.unlink()
    write_trace(tmp_path / "again")
    assert trace.read_text() == _reference_trace(tmp_path / "again")
    # `cmflow status` of it counts jobs by their final word alone (it keeps no event per job)
    rows = [line.split("\t") for line in trace.read_text().splitlines()[1:]]
    doc = json.loads(cmflow("status", "again", "--format", "json", cwd=tmp_path).stdout)
    cached = sum(r[10] == "cached" for r in rows)
    assert cached and (doc["cached"], doc["done"], doc["failed"]) == (cached, 7, 1)
    assert [(f["job"], f["task"]) for f in doc["failures"]] == [(8, "bad")]



def _run_with_run_time_calls(d: Path) -> Path:
    """A real run whose jobs include run-time calls (defs given other jobs' values, numbered after the
    plan's jobs): one fails once then passes, one fails for good; a @local function on top."""
    flag = d / "flaky-once"
    (d / "tk.py").write_text(
        "from cmflow import task, local\n"
        "def sq(i): return f'echo $(({i} * {i}))'\n"
        "@task(retries=1)\n"
        f"def twice(x): return f'if [ -e {flag} ]; then echo $((2 * {{x}})); else touch {flag}; exit 1; fi'\n"
        "def bad(x): return f'echo no {x} >&2; exit 3'\n"
        "@local\n"
        "def half(x): return x / 2\n")
    (d / "f.flow").write_text("from tk import *\nhalf(twice(sum(sq(i) for i in range(3)))) | bad(sq(5))\n")
    return _failing_run(d)


def test_run_time_calls_are_jobs_of_the_trace_and_the_report(tmp_path):
    """Run-time calls are not in plan.json's jobs: the journal gives their task, label and command. The
    streamed trace (cut after each journal line: killed there) is load_run's, byte for byte, with them."""
    from cmflow.report import report_doc
    from cmflow.report import data as report_data

    run = _run_with_run_time_calls(tmp_path)
    rows = [line.split("\t") for line in (run / "trace.tsv").read_text().splitlines()[1:]]
    assert [(r[0], r[8], r[10], r[11], r[-1]) for r in rows] == [
        ("1", "sq", "ok", "1", "echo $((0 * 0))"), ("2", "sq", "ok", "1", "echo $((1 * 1))"),
        ("3", "sq", "ok", "1", "echo $((2 * 2))"), ("4", "sq", "ok", "1", "echo $((5 * 5))"),
        *sorted([(r[0], "twice", "ok", "2", r[-1]) for r in rows if r[8] == "twice"] +
                [(r[0], "bad", "failed", "1", "echo no 25 >&2; exit 3") for r in rows if r[8] == "bad"])]
    assert {r[8] for r in rows[4:]} == {"twice", "bad"} and "echo $((2 * 5))" in rows[4][-1] + rows[5][-1]
    doc = report_doc(report_data.load_run(run))
    assert sorted(j[1] for j in doc["jobs"]) == ["bad(25)", "sq(0)", "sq(1)", "sq(2)", "sq(5)", "twice(5)"]
    lines = (run / "journal.jsonl").read_text().splitlines(keepends=True)
    (run / "summary.json").unlink()
    for n, lazy in _cut_after_each_line(run, lines):
        assert all(j[1] for j in lazy["jobs"]), n   # a label for every job, one in flight included


def test_run_time_calls_reused_by_a_resume_are_in_its_trace(tmp_path):
    from cmflow.report import write_trace

    _run_with_run_time_calls(tmp_path)
    again = cmflow("run", "f.flow", "--hosts", "inv.yaml", "--run-dir", "again", "--resume", "run", "-q",
                   cwd=tmp_path)
    assert again.returncode == 1, again.stderr
    trace = tmp_path / "again" / "trace.tsv"
    rows = {r.split("\t")[8]: r.split("\t") for r in trace.read_text().splitlines()[1:]}
    assert rows["twice"][10] == "cached" and "echo $((2 * 5))" in rows["twice"][-1] and rows["bad"][10] == "failed"
    text = trace.read_text()
    trace.unlink()
    write_trace(tmp_path / "again")
    assert trace.read_text() == text == _reference_trace(tmp_path / "again")

def _check_page(page, shot: Path) -> None:
    assert page.problems() == []
    urls = page.requests()
    assert all(u.startswith("file://") for u in urls) and len(urls) == 1, urls
    page.screenshot(shot)
    assert shot.stat().st_size > 10_000


@needs_chromium
def test_report_in_headless_chromium(tmp_path):
    run = _run_with_failures(tmp_path)
    page_file = run / "report.html"
    html = page_file.read_text()
    assert "<script>alert(1)</script>" not in html          # job output is data, never markup
    attempts = [json.loads(line) for line in (run / "jobs.jsonl").read_text().splitlines()]
    with Browser(CHROMIUM) as browser:
        page = browser.open(page_file.as_uri())
        assert page.eval("document.body.dataset.ready") == "1"
        # one bar per attempt: 8 jobs, flaky's two attempts on two bars
        bars = page.eval("[...document.querySelectorAll('#tl rect.bar')].map(r => +r.dataset.a)")
        assert sorted(bars) == list(range(len(attempts))) and len(attempts) == 9
        assert page.eval("document.querySelectorAll('#tl rect.bar:not(.st2)').length") == 8   # a bar per job
        assert page.eval("document.querySelectorAll('#tl rect.bar.st1').length") == 1     # bad: failed
        assert page.eval("document.querySelectorAll('#tl rect.bar.st2').length") == 1     # flaky: retried
        assert page.eval("document.querySelectorAll('#tl .fail-mark').length") == 1
        summary = page.eval("document.getElementById('summary-list').textContent")
        assert "8: 7 done, 1 failed, 0 cached (9 attempts)" in summary
        # hover shows the failed job's stderr tail
        tip = page.eval("""(() => { const r = document.querySelector('#tl rect.bar.st1'); const b = r.getBoundingClientRect();
            r.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: b.x + 1, clientY: b.y + 1}));
            return document.getElementById('tip').textContent; })()""")
        assert "bad" in tip and "exit:    3" in tip and "boom" in tip and "<script>alert(1)</script>" in tip
        # the job table filters and sorts
        page.eval("document.getElementById('filter').value = 'state:failed'; "
                  "document.getElementById('filter').dispatchEvent(new Event('input'))")
        page.eval("new Promise(r => setTimeout(r, 300))")   # the filter's own debounce, not a sync guess
        assert page.eval("document.querySelectorAll('#jt .jt-row').length") == 1
        assert page.eval("document.getElementById('job-count').textContent") == "1 of 8 jobs"
        assert "Seq (;)" in page.eval("document.getElementById('plan-tree').textContent")
        _check_page(page, tmp_path / "report.png")


@needs_chromium
@pytest.mark.slow
def test_pi_flow_leaves_runs_latest_report(tmp_path):
    """`cmflow run flows/pi.flow`: 8 Monte Carlo jobs (about 5 s on 2 cores), then the page in Chromium."""
    done = cmflow("run", str(ROOT / "flows" / "pi.flow"), "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page_file = tmp_path / "runs" / "latest" / "report.html"
    assert page_file.is_file()
    with Browser(CHROMIUM) as browser:
        page = browser.open(page_file.as_uri())
        assert page.eval("document.querySelectorAll('#tl rect.bar').length") == 8
        assert "pi.flow" in page.eval("document.getElementById('summary-list').textContent")
        _check_page(page, tmp_path / "pi.png")


@needs_chromium
def test_report_of_a_flow_with_run_time_calls_opens_in_chromium(tmp_path):
    """A plan with a deferred call (a def given other jobs' values) and a @local function: their plan
    nodes have inputs, not items; the page renders every part with no error."""
    (tmp_path / "tk.py").write_text(
        "from cmflow import local\n"
        "def sq(i): return f'echo $(({i} * {i}))'\n"
        "def twice(x): return f'echo $((2 * {x}))'\n"
        "@local\n"
        "def half(x): return x / 2\n")
    (tmp_path / "f.flow").write_text("from tk import *\nhalf(twice(sum(sq(i) for i in range(3))))\n")
    done = cmflow("run", "f.flow", "--run-dir", "run", "-q", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "5.0", done.stderr
    with Browser(CHROMIUM) as browser:
        page = browser.open((tmp_path / "run" / "report.html").as_uri())
        assert page.problems() == []
        assert page.eval("document.body.dataset.ready") == "1"
        assert page.eval("document.querySelectorAll('#tl rect.bar').length") == 4   # twice(5) too
        tree = page.eval("document.getElementById('plan-tree').textContent")
        assert "(local)" in tree and "twice(" in tree and "input(s)" in tree
        page.eval("document.querySelectorAll('#plan-tree details').forEach(d => d.open = true)")
        page.eval("document.querySelectorAll('#plan-tree details').forEach(d => d.open = true)")
        assert page.problems() == []
        _check_page(page, tmp_path / "deferred.png")
