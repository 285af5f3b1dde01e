#!/usr/bin/env python3
"""Hundreds of hosts (issue 10.5): 256 loopback sshd hosts, cmflow beside clush and pssh.

Starts its own stock sshd daemons (tests/sshhosts.py: its own unix user and
folders, MaxSessions 10, MaxStartups 10:30:100 per daemon), then alternates, in one run:

    clush -w h[1-256] -f 64 -o "-F CONFIG" true                 one `true` per host
    parallel-ssh -h HOSTS -p 64 -x "-F CONFIG" true              one `true` per host
    cmflow run one.flow --fanout 64   (t(1) @ h1 | ... | t(256) @ h256)   one `true` per host
    cmflow run many.flow --fanout 64  (8 x 256 `true`, 2 slots per host)  throughput

and prints, per side, medians of: wall time to the end, cmflow's time to its
first job and to its last job's end, jobs/s, client and sshd CPU, and the peak
memory of the whole client side: the sum of the proportional set size (PSS,
shared pages counted once) of every process it started, ssh clients and
daemonised ControlMasters included (they are found through a cgroup the
measured command is put in). Target: cmflow's 256 x 1 time <= clush's.

Bounds on this box (say which one is hit): connecting is CPU-bound (an ssh
handshake costs client + sshd CPU, all on the same 2 cores); file descriptors
(3 pipes per slot: 1 536 for 256 x 2; the bench raises its soft limit to the
hard one and cmflow does too); MaxStartups is per daemon here, so only the
fanout bounds connections in flight. Run as root.

    python3 bench/many_hosts.py [--hosts 256] [--slots 2] [--jobs-per-host 8] [--reps 3] [--fanout 64]
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
from dataclasses import dataclass, field
from pathlib import Path

from _common import failed, one_job_per_host
from sshhosts import SshdHosts, have_sshd

CG = Path("/sys/fs/cgroup/cpuacct")


@dataclass
class Sample:
    wall: float
    client_cpu: float
    server_cpu: float
    peak_pss: int            # bytes, the client side's processes together
    first_job: float | None = None
    last_end: float | None = None


@dataclass
class Side:
    name: str
    cmd: list[str]
    jobs: int
    run_dir: Path | None = None
    samples: list[Sample] = field(default_factory=list)


def pss(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu(group: Path) -> float:
    return int((group / "cpuacct.usage").read_text()) / 1e9


def measure(side: Side, client: Path, server: Path, cwd: Path) -> Sample:
    """Run one side in the client cgroup; sample the PSS of every process in it until it ends."""
    if side.run_dir is not None:
        shutil.rmtree(side.run_dir, ignore_errors=True)

    def join() -> None:
        (client / "cgroup.procs").write_text(str(os.getpid()))

    c0, s0 = cpu(client), cpu(server)
    t0 = time.time()
    proc = subprocess.Popen(side.cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=join)
    peak = 0
    while proc.poll() is None:
        pids = (client / "cgroup.procs").read_text().split()
        peak = max(peak, sum(pss(p) for p in pids))
        time.sleep(0.1)
    wall = time.time() - t0
    err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
    if proc.returncode != 0:
        failed(" ".join(side.cmd)[:100], proc.returncode, err)
    time.sleep(0.3)   # sshd sessions finish their accounting
    left = (client / "cgroup.procs").read_text().split()
    if left:
        failed(side.name, 0, f"processes left behind in the client cgroup: {left}")
    sample = Sample(wall, cpu(client) - c0, cpu(server) - s0, peak)
    if side.run_dir is not None:
        records = [json.loads(line) for line in (side.run_dir / "jobs.jsonl").read_text().splitlines()]
        if len(records) != side.jobs or not all(r["exit_status"] == 0 for r in records):
            failed(side.name, 1, f"{len(records)} records, want {side.jobs} all OK")
        sample.first_job = min(r["start"] for r in records) - t0
        sample.last_end = max(r["end"] for r in records) - t0
    return sample


def med(values: list[float]) -> float:
    return statistics.median(values)


def show(side: Side) -> float:
    s = side.samples
    wall = med([x.wall for x in s])
    line = (f"  {side.name:<28} {wall:6.2f} s  {side.jobs / wall:7.0f} jobs/s  client CPU {med([x.client_cpu for x in s]):5.2f} s"
            f"  sshd CPU {med([x.server_cpu for x in s]):5.2f} s  peak PSS {med([x.peak_pss for x in s]) / 2**20:6.1f} MiB")
    if s[0].first_job is not None:
        line += (f"  first job {med([x.first_job for x in s]):5.2f} s"   # type: ignore[misc]
                 f"  last end {med([x.last_end for x in s]):5.2f} s")    # type: ignore[misc]
    print(line + f"   walls {', '.join(f'{x.wall:.2f}' for x in s)}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=256)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--jobs-per-host", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fanout", type=int, default=64)
    a = ap.parse_args()
    clush = shutil.which("clush")
    if clush and "/shims/" in clush:   # a pyenv shim costs a bash script per call: run the real one
        clush = subprocess.run(["pyenv", "which", "clush"], capture_output=True, text=True).stdout.strip() or clush
    if not have_sshd() or not clush or not shutil.which("parallel-ssh"):
        sys.exit("needs openssh-server, pssh and clustershell: apt-get install -y openssh-server pssh clustershell")
    if os.geteuid() != 0:
        sys.exit("run as root (a throwaway user for the sshd logins, cgroups for CPU and memory)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))   # inherited by every side
    need = a.hosts * (a.slots * 3 + 8)
    if hard < need:
        sys.exit(f"ulimit -n (hard) is {hard}; {a.hosts} hosts x {a.slots} slots need about {need}")
    groups = {n: CG / f"cmflow-bench-many-{os.getpid()}" / n for n in ("client", "server")}
    for g in groups.values():
        g.mkdir(parents=True)
    base = Path(tempfile.mkdtemp(prefix="cmflow-bench-many-", dir="/tmp"))
    base.chmod(0o755)
    print(f"starting {a.hosts} sshd hosts ...", file=sys.stderr, flush=True)
    t = time.time()
    hosts = SshdHosts(base / "hosts", n=a.hosts, slots=a.slots, cgroup=str(groups["server"] / "cgroup.procs"))
    try:
        hosts.start()
        print(f"  up in {time.time() - t:.0f} s", file=sys.stderr, flush=True)
        work = base / "work"
        work.mkdir()
        one_job_per_host(work, a.hosts)
        many = a.hosts * a.jobs_per_host
        (work / "many.flow").write_text("from bench_tasks import t\n" + " | ".join(f"t({i})" for i in range(many)) + "\n")
        cfg = str(hosts.ssh_config)
        cm = [sys.executable, "-m", "cmflow", "run", "--hosts", str(hosts.inventory_file), "-q", "--no-report",
              "--fanout", str(a.fanout)]
        sides = [
            Side(f"clush -f {a.fanout}", [clush, "-w", f"h[1-{a.hosts}]", "-f", str(a.fanout), "-o", f"-F {cfg}", "true"],
                 a.hosts),
            Side(f"parallel-ssh -p {a.fanout}", ["parallel-ssh", "-h", str(work / "hostlist"), "-p", str(a.fanout),
                                                 "-t", "0", "-x", f"-F {cfg}", "true"], a.hosts),
            Side("cmflow run (1 job/host)", [*cm[:4], "one.flow", *cm[4:], "--run-dir", "run1"], a.hosts, work / "run1"),
            Side(f"cmflow run ({a.jobs_per_host} jobs/host)", [*cm[:4], "many.flow", *cm[4:], "--run-dir", "runN"], many,
                 work / "runN"),
        ]
        for rep in range(a.reps):   # alternate, so every side sees the same machine
            for side in sides:
                side.samples.append(measure(side, groups["client"], groups["server"], work))
                print(f"  rep {rep + 1} {side.name}: {side.samples[-1].wall:.2f} s", file=sys.stderr, flush=True)
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)
        for g in groups.values():
            for _ in range(50):
                try:
                    g.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        try:
            groups["client"].parent.rmdir()
        except OSError:
            pass
    load = os.getloadavg()[0]
    print(f"{a.hosts} loopback sshd hosts x {a.slots} slots, fanout {a.fanout}, {a.reps} reps (median), "
          f"load {load:.1f}:")
    walls = {s.name: show(s) for s in sides}
    one = walls["cmflow run (1 job/host)"]
    print(f"ratio clush / cmflow (1 job per host): {walls[sides[0].name] / one:.2f}x  (target >= 1.0x)")
    print(f"ratio pssh / cmflow (1 job per host): {walls[sides[1].name] / one:.2f}x")


if __name__ == "__main__":
    main()
