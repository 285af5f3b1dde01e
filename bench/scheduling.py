#!/usr/bin/env python3
"""Scheduling cost: 1 000 000 jobs over 1 000 simulated hosts, executor + scheduler in-process.

The hosts are simulated (the one fake here, on purpose: it measures the
scheduler and the executor, not processes): a transport whose job ends as
soon as it starts. Both sides run in a fresh process per repetition,
alternating, so each sees the same machine and its own peak RSS:

  cmflow  Executor.run of a plan `t(0) | t(1) | ... | t(N-1)` (built in
          memory, the parser is not measured), one slot per host; the run
          log and the journal are the real ones writing to a temp folder
          (--log file), or left out (--log none) to see the scheduler alone.
  peer    the smallest O(1) dispatcher asyncio allows: one worker coroutine
          per host slot popping job numbers off one deque, no bookkeeping.

Prints, per side, the median of jobs/s (N / time of the run), of jobs per
CPU second (the figure to trust on a shared, loaded machine) and the bytes per
pending job (peak RSS of the run minus RSS before it, over N: at the peak
nearly every job is pending), and the ratio cmflow / peer.
Targets (issue 10): >= 50 000 jobs/s and <= 1 KB per pending job.

    python3 bench/scheduling.py [--jobs 1000000] [--hosts 1000] [--reps 3] [--log file|none]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cmflow.transport import Outcome  # noqa: E402


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SimTransport:
    """A simulated host: every job succeeds at once, writing nothing."""

    def __init__(self, host):
        self.host = host

    async def run(self, spec):
        await asyncio.sleep(0)   # ends in the next turn of the loop, as real I/O would
        now = time.time()
        return Outcome(0, 0, now, now)

    async def aclose(self) -> None:
        pass


def one_cmflow(jobs: int, nhosts: int, log: str) -> dict:
    from cmflow.executor import Executor, RunOptions
    from cmflow.hosts import Host, Inventory
    from cmflow.journal import Journal
    from cmflow.plan import Job, JobRef, Plan, PPar
    from cmflow.runlog import RunLog
    from cmflow.tasks import DEFAULT_OPTIONS

    inv = Inventory(tuple(Host(f"s{i}", "sim", slots=1) for i in range(nhosts)))
    plan_jobs = tuple(Job(i, "t", (i,), (), None, "true", DEFAULT_OPTIONS) for i in range(1, jobs + 1))
    plan = Plan(PPar(tuple(JobRef(j) for j in plan_jobs)), plan_jobs, "bench")
    with tempfile.TemporaryDirectory(prefix="cmflow-sched-") as d:
        runlog = RunLog(Path(d)) if log == "file" else _NullLog()
        journal = Journal(Path(d)) if log == "file" else None
        ex = Executor(plan, inv, {h.name: SimTransport(h) for h in inv.hosts}, runlog, RunOptions(), journal=journal)
        gc.collect()
        before = rss()
        t0, c0 = time.perf_counter(), time.process_time()
        result = asyncio.run(ex.run())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        runlog.close()
        if journal is not None:
            journal.close()
        assert result.ok and len(result.value) == jobs, result.failures[:3]
    return {"wall": wall, "cpu": cpu, "bytes_per_job": (peak_rss() - before) / jobs}


class _NullLog:
    """No run log: the scheduler and executor alone."""

    _NULL = (Path("/dev/null"), Path("/dev/null"))
    dir = None      # no run directory: no file inputs to key by their place in it

    def paths(self, seq, attempt):
        return self._NULL

    def record(self, rec, final=True) -> None:
        pass

    def close(self) -> None:
        pass


def one_peer(jobs: int, nhosts: int) -> dict:
    async def run() -> list:
        queue = deque(range(jobs))
        values = [None] * jobs
        hosts = [SimTransport(None) for _ in range(nhosts)]

        async def worker(t: SimTransport) -> None:
            while queue:
                i = queue.popleft()
                values[i] = (await t.run(i)).exit_status

        async with asyncio.TaskGroup() as tg:
            for t in hosts:
                tg.create_task(worker(t))
        return values

    gc.collect()
    before = rss()
    t0, c0 = time.perf_counter(), time.process_time()
    values = asyncio.run(run())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert len(values) == jobs
    return {"wall": wall, "cpu": cpu, "bytes_per_job": (peak_rss() - before) / jobs}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--log", choices=("file", "none"), default="file")
    ap.add_argument("--one", choices=("cmflow", "peer"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        doc = one_cmflow(a.jobs, a.hosts, a.log) if a.one == "cmflow" else one_peer(a.jobs, a.hosts)
        print(json.dumps(doc))
        return
    runs: dict[str, list[dict]] = {"peer": [], "cmflow": []}
    for _ in range(a.reps):   # alternate, so both see the same machine
        for side in runs:
            out = subprocess.run([sys.executable, __file__, "--one", side, "--jobs", str(a.jobs),
                                  "--hosts", str(a.hosts), "--log", a.log], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{side} failed:\n{out.stderr[-2000:]}")
            runs[side].append(json.loads(out.stdout))
    print(f"{a.jobs} jobs over {a.hosts} simulated hosts x 1 slot, run log: {a.log}, {a.reps} reps each (median):")
    rate, cpu_rate = {}, {}
    for side, label in (("peer", "peer: O(1) deque + worker per slot"), ("cmflow", "cmflow Executor + Scheduler")):
        walls = [r["wall"] for r in runs[side]]
        rate[side] = a.jobs / statistics.median(walls)
        cpu_rate[side] = a.jobs / statistics.median(r["cpu"] for r in runs[side])
        per_job = statistics.median(r["bytes_per_job"] for r in runs[side])
        print(f"{label:<38} {rate[side]:8.0f} jobs/s  {cpu_rate[side]:8.0f} jobs/CPU-s  {per_job:6.0f} B/pending job"
              f"   walls {', '.join(f'{w:.2f}' for w in walls)} s")
    print(f"ratio cmflow / peer: {rate['cmflow'] / rate['peer']:.2f}x wall, "
          f"{cpu_rate['cmflow'] / cpu_rate['peer']:.2f}x CPU   (targets: >= 50000 jobs/s, <= 1024 B per pending job)")


if __name__ == "__main__":
    main()
