"""How long a report takes to open in headless Chromium, for a real run of N jobs (default 10 000).

    python3 bench/report_open.py [--jobs 10000] [--repeat 3] [--keep DIR] [--synthetic]

Runs N tiny local jobs with cmflow (`true`, 16 at once), then opens the run's
report.html in Chromium (the same flags as the tests) and prints, for each
opening, the seconds from navigation to the page's own "ready" mark (timeline,
tables and plan drawn), the medians, the report's size and the time cmflow took
to write it. Goal (issue 14): under 5 s for 10 000 jobs.

--synthetic writes the run directory instead of running the jobs (a labelled
stand-in, for sizes a shared 2-core machine cannot run in minutes, e.g. 100 000
jobs over 40 hosts x 8 slots, 2% failing): the page, not the run, is measured.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT

from chromium import Browser, find_chromium   # tests/chromium.py


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="keep the run here instead of a temp folder")
    ap.add_argument("--synthetic", action="store_true", help="write the run directory, do not run the jobs")
    a = ap.parse_args()
    chromium = find_chromium()
    if chromium is None:
        print("chromium is not installed", file=sys.stderr)
        return 2
    d = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="cmflow-bench-report-"))
    d.mkdir(parents=True, exist_ok=True)
    (d / "tk.py").write_text("def t(i): return 'true'\n")
    # distinct arguments make distinct jobs; 100 operands to a group keeps the plan tree realistic
    groups = [" | ".join(f"t({i})" for i in range(g, min(g + 100, a.jobs))) for g in range(0, a.jobs, 100)]
    (d / "f.flow").write_text("from tk import t\n" + " ; ".join(f"({g})" for g in groups) + "\n")
    (d / "inv.yaml").write_text("hosts:\n  here: {local: true, slots: 16}\n")
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    if a.synthetic:
        return measure(a, chromium, d, env, synthetic_run(d / "run", a.jobs), 0.0)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cmflow", "run", "f.flow", "--hosts", "inv.yaml", "--run-dir", "run",
                           "-q", "--no-report"], cwd=d, env=env, capture_output=True, text=True)
    run_s = time.perf_counter() - t0
    if done.returncode != 0:
        print(done.stderr, file=sys.stderr)
        return 1
    return measure(a, chromium, d, env, d / "run", run_s)


def synthetic_run(run: Path, n: int, hosts: int = 40, slots: int = 8) -> Path:
    """A run directory as cmflow writes one (a stand-in: no job ran)."""
    rng = random.Random(1)
    (run / "jobs").mkdir(parents=True, exist_ok=True)
    t0 = 1_800_000_000.0
    names = [f"node{i:02d}" for i in range(hosts)]
    (run / "hosts.json").write_text(json.dumps([{"name": h, "hostname": h, "slots": slots, "local": False,
                                                 "labels": []} for h in names]))
    jobs = [{"id": i, "task": f"task{i % 7}", "args": [i], "kwargs": {}, "target": None,
             "command": f"./simulate --part {i} --of {n}", "where": "f.flow:2:1"} for i in range(1, n + 1)]
    root = {"op": "sum", "items": [{"op": "par", "items": [{"job": j} for j in range(g, min(g + 100, n + 1))]}
                                   for g in range(1, n + 1, 100)]}
    (run / "plan.json").write_text(json.dumps({"flow": "f.flow", "jobs": jobs, "root": root}))
    free = {(h, s): t0 for h in names for s in range(slots)}
    lines = []
    for j in jobs:
        (h, s), at = min(free.items(), key=lambda kv: kv[1]) if n <= 20000 else \
            ((names[j["id"] % hosts], j["id"] % slots), free[(names[j["id"] % hosts], j["id"] % slots)])
        run_s = rng.uniform(0.5, 3.0)
        ok = rng.random() > 0.02
        lines.append(json.dumps({"ev": "end", "seq": j["id"], "key": f"{j['id']:064x}", "task": j["task"],
                                 "label": f"{j['task']}({j['id']})", "host": h, "attempt": 1, "ready": t0,
                                 "start": at, "end": at + run_s, "ok": ok, "final": True, "exit": 0 if ok else 1,
                                 "signal": 0, "error": "" if ok else "exit status 1", "stdout": "", "stderr": "",
                                 "stdout_bytes": 8, "stderr_bytes": 0}))
        free[(h, s)] = at + run_s
    (run / "journal.jsonl").write_text("\n".join(lines) + "\n")
    end = max(free.values())
    (run / "run.json").write_text(json.dumps({"id": "synthetic", "flow": "f.flow (synthetic)", "started": t0,
                                              "argv": ["cmflow", "run", "f.flow"], "jobs": n}))
    (run / "summary.json").write_text(json.dumps({"ok": False, "value": None, "started": t0, "ended": end,
                                                  "jobs": n, "jobs_run": n, "jobs_cached": 0, "failures": []}))
    return run


def measure(a: argparse.Namespace, chromium: str, d: Path, env: dict, run: Path, run_s: float) -> int:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cmflow", "report", str(run)], cwd=d, env=env, check=True,
                   capture_output=True)
    write_s = time.perf_counter() - t0
    page = run / "report.html"
    print(f"{a.jobs} jobs{' (synthetic run directory)' if a.synthetic else ''}: run {run_s:.1f} s; cmflow report {write_s:.2f} s (start-up included); "
          f"report.html {page.stat().st_size / 1e6:.1f} MB")
    times, walls = [], []
    for i in range(a.repeat):
        with Browser(chromium) as browser:
            t0 = time.perf_counter()
            p = browser.open(page.as_uri(), timeout=120)
            walls.append(time.perf_counter() - t0)
            # the page's own clock: navigation start to the end of its load event (script done, drawn)
            took = p.eval("performance.getEntriesByType('navigation')[0].loadEventEnd") / 1000
            marks = p.eval("window.cmflowReport.marks")
            bars = p.eval("window.cmflowReport.bars")
            problems = p.problems()
        times.append(took)
        print(f"  open {i + 1}: page loaded in {took:.2f} s ({walls[-1]:.2f} s with the browser's tab set-up); "
              f"ms after script start: {marks}; {bars} bars; {len(problems)} console problems")
    print(f"median open: {statistics.median(times):.2f} s page, {statistics.median(walls):.2f} s with tab set-up "
          f"(goal < 5 s); load average {open('/proc/loadavg').read().split()[0]}")
    if not a.keep:
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
