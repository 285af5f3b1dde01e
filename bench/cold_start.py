#!/usr/bin/env python3
"""Cold start: 16 loopback sshd hosts x 1 job, from nothing to done: cmflow beside pssh (issue 10.3).

Starts its own 16 stock sshd daemons (tests/sshhosts.py, its own user and
folders) and alternates, in one run:

    parallel-ssh -h HOSTS -p 16 -x "-F CONFIG" true
    cmflow run cold.flow --hosts hosts.yaml     (t(1) @ h1 | ... | t(16) @ h16)

Every cmflow run connects from scratch (a run ends its masters before it exits,
and each run uses new control paths). Prints the median wall time of each, when
cmflow's first job started, and the ratio (target: cmflow <= pssh, i.e. >= 1.0x).

    python3 bench/cold_start.py [--hosts 16] [--reps 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, failed, one_job_per_host  # noqa: F401  (puts tests/ on sys.path)
from sshhosts import SshdHosts, have_sshd


def wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    w = time.perf_counter() - t0
    if r.returncode != 0:
        failed(" ".join(cmd)[:80], r.returncode, r.stderr)
    return w


def first_job(run_dir: Path, started: float) -> float:
    """Seconds from the command's start to the first job's start, from the run's records."""
    records = [json.loads(line) for line in (run_dir / "jobs.jsonl").read_text().splitlines()]
    return min(r["start"] for r in records) - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    if not have_sshd() or not shutil.which("parallel-ssh"):
        sys.exit("needs openssh-server and pssh: apt-get install -y openssh-server pssh")
    base = Path(tempfile.mkdtemp(prefix="cmflow-bench-cold-", dir="/tmp"))
    base.chmod(0o755)
    hosts = SshdHosts(base / "hosts", n=a.hosts, slots=1).start()
    try:
        work = base / "work"
        work.mkdir()
        one_job_per_host(work, a.hosts, "cold")
        pssh = ["parallel-ssh", "-h", str(work / "hostlist"), "-p", str(a.hosts), "-x", f"-F {hosts.ssh_config}",
                "true"]
        cm = [sys.executable, "-m", "cmflow", "run", "cold.flow", "--hosts", str(hosts.inventory_file), "-q",
              "--run-dir", "run", "--no-report"]
        ps, cs, fs = [], [], []
        for _ in range(a.reps):   # alternate, so both see the same machine
            ps.append(wall(pssh, work))
            shutil.rmtree(work / "run", ignore_errors=True)
            t0 = time.time()
            cs.append(wall(cm, work))
            fs.append(first_job(work / "run", t0))
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)
    p, c = statistics.median(ps), statistics.median(cs)
    print(f"{a.hosts} loopback sshd hosts x 1 `true`, from nothing, {a.reps} reps (median), "
          f"load {os.getloadavg()[0]:.1f}:")
    print(f"  parallel-ssh -p {a.hosts}  {p:6.2f} s   walls {', '.join(f'{w:.2f}' for w in ps)}")
    print(f"  cmflow run          {c:6.2f} s   walls {', '.join(f'{w:.2f}' for w in cs)}; "
          f"first job started at {statistics.median(fs):.2f} s")
    print(f"ratio pssh / cmflow: {p / c:.2f}x  (target >= 1.0x: cmflow no slower than pssh)")


if __name__ == "__main__":
    main()
