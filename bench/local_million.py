#!/usr/bin/env python3
"""A million local `true` jobs, 16 at once: cmflow's peak RSS and time beside xargs -P16's.

    cmflow run many_gen.flow --hosts hosts.yaml -q   (one local host, 16 slots; the flow is one
                                                      fan-out, `par(t(i) for i in range(N))`,
                                                      every job distinct)
    seq N | xargs -P16 -n1 true                      (the peer: the same processes, no bookkeeping)

``--form text`` writes the same jobs out, `t(0) | t(1) | ... | t(N-1)` (a flow
text of ~12 MB at N = 1 000 000: parser and AST memory), ``--form both`` runs
both flows. Before the runs, `cmflow check` of each flow gives the front end's
own peak RSS and time (parse + compile, no run).

GNU parallel is not the peer here: at ~200-300 jobs/s on this VM a million
jobs take about an hour (bench/local_dispatch.py compares against it at 1000).
Each side runs in its own process, alternating; peak RSS is the largest
resident set of any process of the run (cmflow's own process, as the shell
and `true` are tiny), from getrusage(RUSAGE_CHILDREN) of a fresh child.
cmflow's time includes parsing and compiling the flow and writing the run
directory (joblog, jobs.jsonl, journal, plan.json). Target (issue 10):
peak RSS <= 1 GB at N = 1 000 000.

    python3 bench/local_million.py [--jobs 1000000] [--reps 1] [--form gen|text|both] [--front-end-only]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import failed, flow_of


def child(cmd: str, cwd: Path) -> dict:
    """Run cmd in a fresh process (so RUSAGE_CHILDREN holds its peak alone); wall and peak RSS."""
    probe = (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter()\n"
        "rc = subprocess.run(['bash', '-c', sys.argv[1]], stdout=subprocess.DEVNULL).returncode\n"
        "wall = time.perf_counter() - t\n"
        "print(json.dumps({'rc': rc, 'wall': wall,"
        " 'rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n")
    out = subprocess.run([sys.executable, "-c", probe, cmd], capture_output=True, text=True, cwd=cwd)
    doc = json.loads(out.stdout)
    if doc["rc"]:
        failed(cmd[:80], doc["rc"], out.stderr)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--form", choices=("gen", "text", "both"), default="gen",
                    help="the flow: one fan-out (gen), the jobs written out (text), or both")
    ap.add_argument("--front-end-only", action="store_true", help="only `cmflow check` (parse + compile)")
    a = ap.parse_args()
    forms = ("gen", "text") if a.form == "both" else (a.form,)
    with tempfile.TemporaryDirectory(prefix="cmflow-million-") as d:
        folder = Path(d)
        flows = {}
        for form in forms:
            t = time.perf_counter()
            flows[form] = flow_of(a.jobs, folder, form=form)
            print(f"{form} flow of {a.jobs} jobs written in {time.perf_counter() - t:.1f} s "
                  f"({flows[form].stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
        (folder / "hosts.yaml").write_text("hosts:\n  here: {local: true, slots: 16}\n")
        print(f"{a.jobs} jobs; load average before: {os.getloadavg()[0]:.2f}")
        for form in forms:
            check = child(f"{sys.executable} -m cmflow check {flows[form]} --hosts {folder}/hosts.yaml", folder)
            print(f"front end ({form:>4}: cmflow check)  {check['wall']:8.1f} s   peak RSS {check['rss'] / 2**20:7.1f} MB "
                  f"({check['rss'] / a.jobs:6.0f} B/job)")
        if a.front_end_only:
            return
        peer_cmd = f"seq {a.jobs} | xargs -P16 -n1 true"
        runs: dict[str, list[dict]] = {"xargs": [], **{form: [] for form in forms}}
        for _ in range(a.reps):
            runs["xargs"].append(child(peer_cmd, folder))
            for form in forms:
                shutil.rmtree(folder / "run", ignore_errors=True)
                runs[form].append(child(f"{sys.executable} -m cmflow run {flows[form]} --hosts {folder}/hosts.yaml "
                                        f"-q --run-dir {folder}/run", folder))
    print(f"{a.jobs} x `true` locally, 16 at once, {a.reps} rep(s) each (median); "
          f"load average after: {os.getloadavg()[0]:.2f}")
    rate = {}
    labels = {"xargs": "xargs -P16 -n1 true", "gen": "cmflow run (fan-out flow)", "text": "cmflow run (written out)"}
    for side in runs:
        wall = statistics.median(r["wall"] for r in runs[side])
        rss = statistics.median(r["rss"] for r in runs[side])
        rate[side] = a.jobs / wall
        walls = ", ".join(f"{r['wall']:.1f}" for r in runs[side])
        print(f"{labels[side]:<30} {wall:8.1f} s {rate[side]:7.0f} jobs/s   peak RSS {rss / 2**20:7.1f} MB "
              f"({rss / a.jobs:6.0f} B/job)   walls {walls}")
    for form in forms:
        print(f"ratio cmflow ({form}) / xargs (jobs/s): {rate[form] / rate['xargs']:.2f}x")
    print("target: cmflow peak RSS <= 1024 MB at 1 000 000 jobs")


if __name__ == "__main__":
    main()
