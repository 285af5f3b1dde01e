#!/usr/bin/env python3
"""Slurm: 1000 trivial jobs in one allocation, and 1000 jobs job by job, cmflow beside the usual ways.

Starts its own 4-node test cluster (tests/slurmcluster.py: 4 slurmd x 2 CPUs,
slurmctld, slurmdbd + MariaDB, all on 127.0.0.1), then, alternating, in one run:

1. Allocation mode, in ONE allocation of 4 nodes x 2 CPUs (salloc --no-shell --exclusive):
       seq 1000 | parallel -j 8 -N0 srun --jobid=ID --overlap -N1 -n1 true
       cmflow run many.flow     (SLURM_JOB_ID=ID set: the allocation is the inventory)
   prints jobs/s of each and the ratio (target >= 5x).

2. Job mode, 1000 jobs of `true`:
       one `sbatch --parsable --wrap true` per job, then `squeue` once a second until all are done
       cmflow run many.flow --hosts jobs.yaml   (submit: jobs, slots: 1000, poll: 2)
   prints the submission rate (jobs/s from first to last sbatch), the whole run's
   time, and the calls made to the scheduler (sbatch, squeue/sacct, scancel,
   scontrol) in all and per minute.

    python3 bench/slurm_dispatch.py [--jobs 1000] [--reps 3] [--job-reps 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import Sample, failed, flow_of, measure
from slurmcluster import SlurmCluster, have_slurm


def allocation(cluster: SlurmCluster) -> tuple[str, dict[str, str]]:
    r = subprocess.run(["salloc", "--no-shell", "--exclusive", "-N4", "--job-name=bench"], env=cluster.env,
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"Granted job allocation (\d+)", r.stderr)
    if not m:
        sys.exit(f"salloc failed: {r.stderr}")
    job = m.group(1)
    info = cluster.run("squeue", "-h", "-j", job, "-o", "%N %C %D").split()
    nodes, cpus, n = info[0], int(info[1]), int(info[2])
    # what Slurm itself sets inside an allocation (salloc's shell, an sbatch script)
    env = {"SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": nodes, "SLURM_JOB_CPUS_PER_NODE": f"{cpus // n}(x{n})"}
    return job, env


def one_sbatch_per_job(cluster: SlurmCluster, jobs: int) -> dict:
    """The baseline of job mode: a loop of sbatch, then squeue once a second until the queue is empty."""
    t0 = time.perf_counter()
    ids = []
    for _ in range(jobs):
        ids.append(cluster.run("sbatch", "--parsable", "--job-name=bench-loop", "--output=/dev/null",
                               "--wrap", "true").strip().split(";")[0])
    submitted = time.perf_counter()
    polls = 0
    while True:
        polls += 1
        if not cluster.run("squeue", "-h", "-n", "bench-loop", "-o", "%i").strip():
            break
        time.sleep(1.0)
    wall = time.perf_counter() - t0
    calls = jobs + polls
    return {"submit_seconds": submitted - t0, "seconds": wall, "calls": {"sbatch": jobs, "squeue": polls},
            "calls_per_minute": calls * 60 / wall}


def cmflow_jobs(cluster: SlurmCluster, work: Path, flow: Path, inv: Path) -> dict:
    shutil.rmtree(work / "jrun", ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cmflow", "run", str(flow), "-q", "--hosts", str(inv), "--run-dir",
                        str(work / "jrun")], cwd=work, capture_output=True, text=True,
                       env={**cluster.env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        failed("cmflow run (job mode)", r.returncode, r.stderr)
    stats = json.loads(next((work / "jrun" / "slurm").glob("stats-*.json")).read_text())
    stats["seconds"] = wall   # the whole command, start-up included
    stats["calls_per_minute"] = sum(stats["calls"].values()) * 60 / wall
    return stats


def report(name: str, jobs: int, samples: list[Sample]) -> float:
    med = sorted(samples, key=lambda x: x.wall)[len(samples) // 2]
    print(f"{name:<34} median {med.wall:6.2f} s  {jobs / med.wall:7.0f} jobs/s   walls "
          f"{', '.join(f'{x.wall:.2f}' for x in samples)}   CPU/job (client side, getrusage) "
          f"{1000 * med.client_cpu / jobs:5.1f} ms")
    return jobs / med.wall


def show(name: str, jobs: int, runs: list[dict]) -> None:
    med = sorted(runs, key=lambda s: s["seconds"])[len(runs) // 2]
    rate = jobs / max(med["submit_seconds"], 1e-3)
    calls = ", ".join(f"{k} {v}" for k, v in sorted(med["calls"].items()))
    walls = ", ".join(f"{r['seconds']:.1f}" for r in runs)
    print(f"{name:<34} submit {med['submit_seconds']:6.2f} s ({rate:7.0f} jobs/s)   all done {med['seconds']:6.1f} s"
          f"   scheduler calls {sum(med['calls'].values())} ({calls}), {med['calls_per_minute']:.0f}/min"
          f"   runs {walls}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--job-reps", type=int, default=2)
    a = ap.parse_args()
    missing = have_slurm()
    if missing or not shutil.which("parallel"):
        sys.exit(f"needs Slurm and GNU parallel ({missing or 'parallel missing'}): run .ci/run's installs first")
    base = Path(tempfile.mkdtemp(prefix="cmflow-bench-slurm-", dir="/tmp"))
    base.chmod(0o755)
    cluster = SlurmCluster(base / "cluster").start()
    try:
        work = base / "work"
        work.mkdir()
        flow = flow_of(a.jobs, work)
        job, alloc_env = allocation(cluster)
        gp_cmd = f"seq {a.jobs} | parallel -j 8 -N0 srun --jobid={job} --overlap -N1 -n1 true"
        cm_cmd = f"{sys.executable} -m cmflow run {flow} -q --run-dir {work}/run >/dev/null"
        env = {**cluster.env, **alloc_env, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        gp, cm = [], []
        for _ in range(a.reps):   # alternate, so both see the same machine
            gp.append(measure(gp_cmd, None, env=cluster.env))
            shutil.rmtree(work / "run", ignore_errors=True)
            cm.append(measure(cm_cmd, None, env=env, cwd=work))
        cluster.run("scancel", job)
        print(f"{a.jobs} x `true` in one allocation of 4 nodes x 2 CPUs (job {job}), {a.reps} reps each (median):")
        g = report("parallel -j 8 srun --overlap", a.jobs, gp)
        c = report("cmflow run (a slot server per CPU)", a.jobs, cm)
        print(f"ratio cmflow / parallel+srun: {c / g:.1f}x  (target >= 5x)\n")

        inv = work / "jobs.yaml"
        inv.write_text(f"hosts:\n  batch: {{slurm: {{submit: jobs, poll: 2}}, slots: {a.jobs}}}\n")
        loop, mine = [], []
        for _ in range(a.job_reps):
            cluster.wait_queue_empty(120)
            loop.append(one_sbatch_per_job(cluster, a.jobs))
            cluster.wait_queue_empty(120)
            mine.append(cmflow_jobs(cluster, work, flow, inv))
        print(f"{a.jobs} jobs of `true`, job by job, {a.job_reps} reps each (median); the cluster runs 8 at once:")
        show("one sbatch per job + squeue/s", a.jobs, loop)
        show("cmflow submit: jobs (arrays)", a.jobs, mine)
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
