#!/usr/bin/env python3
"""Files over 4 loopback sshd hosts x 4 slots: cmflow beside GNU parallel's --transferfile/--return/--cleanup.

Part 1 (the ratio): 1000 jobs, each with its own 10 KB input and a 10 KB output,
alternating in one run:

    ls in/f* | parallel -M -S 4/h1,4/h2,4/h3,4/h4 --ssh WRAPPER --transferfile {} --return {}.out \\
               --cleanup "tr a-z A-Z < {} > {}.out"
    cmflow run files.flow --hosts hosts.yaml     (each job: command(..., inputs=[f], outputs=[f.out]))

Both must bring back all 1000 outputs, byte for byte what `tr` makes locally
(checked after every rep). Prints medians, jobs/s, the ratio, CPU per job.
Target: cmflow >= 10x GNU parallel's jobs/s.

Part 2 (the cache): one 200 MB input shared by 64 jobs on the 4 hosts.
Prints the bytes cmflow sent (its own accounting, `cmflow status`), what the
hosts' caches hold, and the loopback interface's byte counter over the run
(an upper bound: it counts everything on `lo`, other users' traffic included).
Target: bytes sent <= 4 x 200 MB.

Run as root (it creates a throwaway user for the sshd logins).

    python3 bench/files_transfer.py [--jobs 1000] [--reps 3] [--big-mb 200] [--big-jobs 64]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, cgroups, measure, report
from sshhosts import SshdHosts, have_sshd


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}   # this checkout's cmflow, whatever is installed


def lo_bytes() -> int:
    try:
        return int(Path("/sys/class/net/lo/statistics/rx_bytes").read_text())
    except OSError:
        return 0


def workdir_inventory(hosts: SshdHosts, root: Path, slots: int) -> Path:
    """Each host its own workdir (the test hosts share one home): a cache per host, as on real machines."""
    lines = [f"ssh_config: {hosts.ssh_config}", f"defaults: {{slots: {slots}}}", "hosts:"]
    for h in hosts.hosts:
        d = root / h.name
        d.mkdir(parents=True, exist_ok=True)
        shutil.chown(d, hosts.user)
        lines.append(f"  {h.name}: {{workdir: {d}}}")
    inv = root / "hosts.yaml"
    inv.write_text("\n".join(lines) + "\n")
    return inv


def expected(src: Path) -> bytes:
    return src.read_bytes().translate(bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


def check_gp(work: Path, n: int) -> None:
    for i in range(n):
        got = (work / "in" / f"f{i}.out").read_bytes()
        assert got == expected(work / "in" / f"f{i}"), f"GNU parallel: f{i}.out differs"
        (work / "in" / f"f{i}.out").unlink()


def check_cm(work: Path, n: int) -> None:
    for i in range(n):
        got = (work / "run" / "results" / f"{i + 1}-t" / "in" / f"f{i}.out").read_bytes()
        assert got == expected(work / "in" / f"f{i}"), f"cmflow: f{i}.out differs"


def part1(hosts: SshdHosts, base: Path, groups, jobs: int, reps: int) -> None:
    wrapper = base / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec ssh -F {hosts.ssh_config} "$@"\n')
    wrapper.chmod(0o755)
    work = base / "work"
    (work / "in").mkdir(parents=True)
    line = (b"the quick brown fox jumps over the lazy dog 0123456789\n" * 200)[:10_000]
    for i in range(jobs):
        (work / "in" / f"f{i}").write_bytes(line)
    (work / "tk.py").write_text(
        "from cmflow import command\n"
        "def t(i):\n"
        "    return command(f'tr a-z A-Z < in/f{i} > in/f{i}.out', inputs=[f'in/f{i}'], outputs=[f'in/f{i}.out'])\n")
    (work / "files.flow").write_text("from tk import t\n" + " | ".join(f"t({i})" for i in range(jobs)) + "\n")
    inv = workdir_inventory(hosts, base / "wd", 4)
    # parallel transfers relative to the remote home, as its manual shows; cwd is work/
    gp_cmd = (f"ls in/f* | grep -v out | parallel -M -S 4/h1,4/h2,4/h3,4/h4 --ssh {wrapper} "
              f"--transferfile {{}} --return {{}}.out --cleanup 'tr a-z A-Z < {{}} > {{}}.out'")
    cm_cmd = f"{sys.executable} -m cmflow run files.flow --hosts {inv} -q --run-dir run --no-report >/dev/null"
    gp, cm = [], []
    for _ in range(reps):   # alternate, so both see the same machine
        gp.append(measure(gp_cmd, groups, cwd=work))
        check_gp(work, jobs)
        shutil.rmtree(work / "run", ignore_errors=True)
        cm.append(measure(cm_cmd, groups, env=ENV, cwd=work))
        check_cm(work, jobs)
    left = subprocess.run(["find", str(base / "wd"), "-path", "*/.cmflow/work/*"], capture_output=True,
                          text=True).stdout.split()
    print(f"{jobs} jobs, each a 10 KB input and a 10 KB output, 4 loopback sshd hosts x 4 slots, "
          f"{reps} reps each (median); every output checked; CPU from "
          f"{'cgroup cpuacct' if groups else 'getrusage (sshd not counted)'}:")
    g = report("GNU parallel -M --transferfile", jobs, gp)
    c = report("cmflow run (inputs=, outputs=)", jobs, cm)
    print(f"ratio cmflow / GNU parallel: {c / g:.1f}x  (target >= 10x); cmflow work dirs left on hosts: {len(left)}")


def part2(hosts: SshdHosts, base: Path, big_mb: int, big_jobs: int) -> None:
    work = base / "big"
    work.mkdir()
    big = work / "shared.bin"
    with open(big, "wb") as f:
        for _ in range(big_mb):
            f.write(os.urandom(1 << 20)[: 1_000_000])
    size = big.stat().st_size
    (work / "tk.py").write_text(
        "from cmflow import command\n"
        "def use(i):\n"
        "    return command(f'wc -c < shared.bin; echo {i} > o.txt', inputs=['shared.bin'], outputs=['o.txt'])\n")
    (work / "big.flow").write_text("from tk import use\n" + " | ".join(f"use({i})" for i in range(big_jobs)) + "\n")
    inv = workdir_inventory(hosts, base / "wd2", 4)
    lo0, t0 = lo_bytes(), time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cmflow", "run", "big.flow", "--hosts", str(inv), "-q",
                        "--run-dir", "run", "--no-report"], cwd=work, capture_output=True, text=True, env=ENV)
    wall, lo1 = time.perf_counter() - t0, lo_bytes()
    if r.returncode != 0:
        sys.exit(f"cmflow failed: {r.stderr[-2000:]}")
    st = json.loads(subprocess.run([sys.executable, "-m", "cmflow", "status", "run", "--format", "json"], cwd=work,
                                   capture_output=True, text=True, env=ENV).stdout)
    sent = sum(h["bytes_sent"] for h in st["hosts"].values())
    per_host = {n: h["done"] for n, h in st["hosts"].items()}
    caches = sum(1 for p in (base / "wd2").glob("*/.cmflow/cache/*"))
    print(f"\n{big_jobs} jobs sharing one {size / 1e6:.0f} MB input on 4 hosts ({wall:.1f} s; jobs per host {per_host}):")
    print(f"  bytes sent by cmflow: {sent / 1e6:.1f} MB = {sent / size:.2f} x the input "
          f"(target <= 4 x {size / 1e6:.0f} MB = {4 * size / 1e6:.0f} MB): {'OK' if sent <= 4 * size else 'OVER'}")
    print(f"  cache entries on the hosts: {caches}; loopback bytes over the run (all traffic on lo): "
          f"{(lo1 - lo0) / 1e6:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--big-mb", type=int, default=200)
    ap.add_argument("--big-jobs", type=int, default=64)
    ap.add_argument("--skip", choices=["ratio", "cache"], default=None)
    a = ap.parse_args()
    if not shutil.which("parallel") or not shutil.which("rsync") or not have_sshd():
        sys.exit("needs GNU parallel, rsync and openssh-server: apt-get install -y parallel rsync openssh-server")
    groups = cgroups()
    base = Path(tempfile.mkdtemp(prefix="cmflow-bench-files-", dir="/tmp"))
    base.chmod(0o755)
    hosts = SshdHosts(base / "hosts", n=4, slots=4,
                      cgroup=str(groups["server"] / "cgroup.procs") if groups else None).start()
    try:
        # GNU parallel's --transferfile writes into the login's home, which must be the user's own
        home = base / "hosts" / "home"
        os.chmod(base / "hosts", 0o755)
        if a.skip != "ratio":
            part1(hosts, base, groups, a.jobs, a.reps)
        if a.skip != "cache":
            part2(hosts, base, a.big_mb, a.big_jobs)
        assert home.exists()
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
