#!/usr/bin/env python3
"""A million local `true` jobs, 16 at once: cmflow's peak RSS and time beside xargs -P16's.

    cmflow run many.flow --hosts hosts.yaml -q     (one local host, 16 slots; the flow is
                                                    `t(0) | t(1) | ... | t(N-1)`, every job distinct)
    seq N | xargs -P16 -n1 true                    (the peer: the same processes, no bookkeeping)

GNU parallel is not the peer here: at ~200-300 jobs/s on this VM a million
jobs take about an hour (bench/local_dispatch.py compares against it at 1000).
Each side runs in its own process, alternating; peak RSS is the largest
resident set of any process of the run (cmflow's own process, as the shell
and `true` are tiny), from getrusage(RUSAGE_CHILDREN) of a fresh child.
cmflow's time includes parsing and compiling the flow and writing the run
directory (joblog, jobs.jsonl, journal, plan.json). Target (issue 10):
peak RSS <= 1 GB at N = 1 000 000.

    python3 bench/local_million.py [--jobs 1000000] [--reps 1]
"""
from __future__ import annotations

import argparse
import json
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
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cmflow-million-") as d:
        folder = Path(d)
        t = time.perf_counter()
        flow = flow_of(a.jobs, folder)
        print(f"flow of {a.jobs} jobs written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        (folder / "hosts.yaml").write_text("hosts:\n  here: {local: true, slots: 16}\n")
        cm_cmd = f"{sys.executable} -m cmflow run {flow} --hosts {folder}/hosts.yaml -q --run-dir {folder}/run"
        peer_cmd = f"seq {a.jobs} | xargs -P16 -n1 true"
        runs: dict[str, list[dict]] = {"xargs": [], "cmflow": []}
        for _ in range(a.reps):
            runs["xargs"].append(child(peer_cmd, folder))
            shutil.rmtree(folder / "run", ignore_errors=True)
            runs["cmflow"].append(child(cm_cmd, folder))
    print(f"{a.jobs} x `true` locally, 16 at once, {a.reps} rep(s) each (median):")
    rate = {}
    for side, label in (("xargs", "xargs -P16 -n1 true"), ("cmflow", "cmflow run (local, 16 slots)")):
        wall = statistics.median(r["wall"] for r in runs[side])
        rss = statistics.median(r["rss"] for r in runs[side])
        rate[side] = a.jobs / wall
        print(f"{label:<30} {wall:8.1f} s {rate[side]:7.0f} jobs/s   peak RSS {rss / 2**20:7.1f} MB "
              f"({rss / a.jobs:6.0f} B/job)   walls {', '.join(f'{r['wall']:.1f}' for r in runs[side])}")
    print(f"ratio cmflow / xargs (jobs/s): {rate['cmflow'] / rate['xargs']:.2f}x   (target: cmflow peak RSS <= 1024 MB)")


if __name__ == "__main__":
    main()
