#!/usr/bin/env python3
"""Trivial local jobs: `cmflow run` beside `parallel -j16 true`, alternating, in one run.

Both run 16 jobs at once (cmflow: one local host with 16 slots). Timed from
the shell, so cmflow's start-up (imports, compile, 16 slot servers) and its
end (summary, trace.tsv, report.html) are included; the fixed part is measured
apart, as a one-job run, and the rate without it is printed too. CPU per job
is everything each side starts (cgroup, or rusage of children); for cmflow
its own process is also shown alone (the client: scheduling, logs, transport),
the rest being the slot servers and the jobs' `sh -c true`.
A third line is the floor of any tool that runs each job as `sh -c CMD`: 16 shell
loops that only exec `sh -c true` (no pipes, no logs), so the part of the time
that is process creation itself shows (on this VM ~0.6 ms of CPU per exec, much
of it the dynamic loader's CPUID probing, which traps to the hypervisor).
Target (issue 10): cmflow >= 8x GNU parallel's jobs/s, client CPU <= 0.3 ms/job.
Needs GNU parallel (apt-get install parallel).

    python3 bench/local_dispatch.py [--jobs 5000] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _common import cgroups, flow_of, measure, report

# runs `python3 -m cmflow ...` and writes the CPU of that process alone (not its children) to a file
SELF_CPU = ("import resource, runpy, sys, atexit, json\n"
            "out = sys.argv.pop(1)\n"
            "def done():\n"
            "    r = resource.getrusage(resource.RUSAGE_SELF)\n"
            "    open(out, 'w').write(json.dumps(r.ru_utime + r.ru_stime))\n"
            "atexit.register(done)\n"
            "sys.argv[0] = 'cmflow'\n"
            "runpy.run_module('cmflow', run_name='__main__', alter_sys=True)\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if not shutil.which("parallel"):
        sys.exit("GNU parallel is not installed: apt-get install -y parallel")
    groups = cgroups()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "one").mkdir()
        flow = flow_of(a.jobs, folder)
        one = flow_of(1, folder / "one")
        (folder / "selfcpu.py").write_text(SELF_CPU)
        (folder / "hosts.yaml").write_text("hosts:\n  here: {local: true, slots: 16}\n")

        def cm_cmd(f: Path) -> str:
            return (f"{sys.executable} {folder}/selfcpu.py {folder}/cpu.json run {f} --hosts {folder}/hosts.yaml "
                    f"-q --run-dir {folder}/run >/dev/null")
        gp_cmd = f"seq {a.jobs} | parallel -N0 -j16 true"
        per_loop = -(-a.jobs // 16)
        floor_cmd = f"seq {a.jobs} | xargs -P16 -n {per_loop} sh -c 'for i; do sh -c true; done' _"
        cm, gp, start, own, own1, floor = [], [], [], [], [], []
        for _ in range(a.reps):   # alternate, so both see the same machine
            gp.append(measure(gp_cmd, groups))
            shutil.rmtree(folder / "run", ignore_errors=True)
            cm.append(measure(cm_cmd(flow), groups, cwd=folder))
            own.append(json.loads((folder / "cpu.json").read_text()))
            shutil.rmtree(folder / "run", ignore_errors=True)
            start.append(measure(cm_cmd(one), groups, cwd=folder).wall)
            own1.append(json.loads((folder / "cpu.json").read_text()))
            floor.append(measure(floor_cmd, groups))
    print(f"{a.jobs} x `true`, 16 at once, {a.reps} reps each (median):")
    g = report("GNU parallel -j16", a.jobs, gp)
    c = report("cmflow run (local, 16 slots)", a.jobs, cm)
    f = report("floor: 16 loops of `sh -c true`", a.jobs, floor)
    fixed = statistics.median(start)
    wall = sorted(s.wall for s in cm)[len(cm) // 2]
    print(f"cmflow fixed start-up and end (a one-job run): {fixed:.2f} s; without it: "
          f"{a.jobs / max(wall - fixed, 1e-9):.0f} jobs/s")
    per_job = (statistics.median(own) - statistics.median(own1)) / max(a.jobs - 1, 1)
    print(f"cmflow's own process (client) CPU: {1000 * per_job:.3f} ms/job without start-up (target <= 0.3), "
          f"{1000 * statistics.median(own) / a.jobs:.3f} with it")
    print(f"ratio cmflow / GNU parallel: {c / g:.1f}x  (target >= 8x; the floor is {f / g:.1f}x GNU parallel)")


if __name__ == "__main__":
    main()
