#!/usr/bin/env python3
"""1000 trivial local jobs: `cmflow run` beside `parallel -j16 true`, alternating, in one run.

Both run 16 jobs at once (cmflow: one local host with 16 slots). Timed from
the shell, so cmflow's start-up (imports, compile) is included. Target:
cmflow >= 3x GNU parallel's jobs/s. Needs GNU parallel (apt-get install parallel).

    python3 bench/local_dispatch.py [--jobs 1000] [--reps 3]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import cgroups, flow_of, measure, report


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if not shutil.which("parallel"):
        sys.exit("GNU parallel is not installed: apt-get install -y parallel")
    groups = cgroups()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        flow = flow_of(a.jobs, folder)
        (folder / "hosts.yaml").write_text("hosts:\n  here: {local: true, slots: 16}\n")
        cm_cmd = f"{sys.executable} -m cmflow run {flow} --hosts {folder}/hosts.yaml -q --run-dir {folder}/run >/dev/null"
        gp_cmd = f"seq {a.jobs} | parallel -N0 -j16 true"
        cm, gp = [], []
        for _ in range(a.reps):   # alternate, so both see the same machine
            gp.append(measure(gp_cmd, groups))
            shutil.rmtree(folder / "run", ignore_errors=True)
            cm.append(measure(cm_cmd, groups, cwd=folder))
    print(f"{a.jobs} x `true`, 16 at once, {a.reps} reps each (median):")
    g = report("GNU parallel -j16", a.jobs, gp)
    c = report("cmflow run (local, 16 slots)", a.jobs, cm)
    print(f"ratio cmflow / GNU parallel: {c / g:.1f}x  (target >= 3x)")


if __name__ == "__main__":
    main()
