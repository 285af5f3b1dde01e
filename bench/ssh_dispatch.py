#!/usr/bin/env python3
"""Trivial jobs over loopback sshd hosts (default 16 hosts x 8 slots): cmflow beside GNU parallel -M.

Starts its own stock sshd daemons (tests/sshhosts.py: MaxSessions 10,
MaxStartups 10:30:100, strict host keys, a unix user of its own created for
this run and removed after it, folders of its own), then alternates, in one run:

    seq 5000 | parallel -M -N0 -S 8/h1,...,8/h16 --ssh WRAPPER true
    cmflow run many.flow --hosts hosts.yaml         (16 hosts x 8 slots)

where WRAPPER is a one-word script running `ssh -F CONFIG "$@"` (GNU parallel
ignores -M when --ssh has spaces). Prints jobs/s of each, the ratio, and
client and sshd CPU per job. Target (issue 10): cmflow >= 30x GNU parallel's jobs/s.
Run as root (it creates a throwaway user for the sshd logins).

    python3 bench/ssh_dispatch.py [--jobs 5000] [--hosts 16] [--slots 8] [--reps 3]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from _common import cgroups, flow_of, measure, report
from sshhosts import SshdHosts, have_sshd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=16)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if not shutil.which("parallel") or not have_sshd():
        sys.exit("needs GNU parallel and openssh-server: apt-get install -y parallel openssh-server")
    groups = cgroups()
    base = Path(tempfile.mkdtemp(prefix="cmflow-bench-", dir="/tmp"))
    base.chmod(0o755)
    hosts = SshdHosts(base / "hosts", n=a.hosts, slots=a.slots,
                      cgroup=str(groups["server"] / "cgroup.procs") if groups else None).start()
    try:
        wrapper = base / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec ssh -F {hosts.ssh_config} "$@"\n')
        wrapper.chmod(0o755)
        work = base / "work"
        work.mkdir()
        flow = flow_of(a.jobs, work)
        servers = ",".join(f"{a.slots}/h{i}" for i in range(1, a.hosts + 1))
        gp_cmd = f"seq {a.jobs} | parallel -M -N0 -S {servers} --ssh {wrapper} true"
        cm_cmd = (f"{sys.executable} -m cmflow run {flow} --hosts {hosts.inventory_file} -q "
                  f"--run-dir {work}/run >/dev/null")
        gp, cm = [], []
        for _ in range(a.reps):   # alternate, so both see the same machine
            gp.append(measure(gp_cmd, groups))
            shutil.rmtree(work / "run", ignore_errors=True)
            cm.append(measure(cm_cmd, groups, cwd=work))
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{a.jobs} x `true` over {a.hosts} loopback sshd hosts x {a.slots} slots, {a.reps} reps each (median); "
          f"CPU from {'cgroup cpuacct' if groups else 'getrusage (sshd not counted)'}:")
    g = report("GNU parallel -M (ControlMaster)", a.jobs, gp)
    c = report("cmflow run (persistent shells)", a.jobs, cm)
    print(f"ratio cmflow / GNU parallel: {c / g:.1f}x  (target >= 30x)")


if __name__ == "__main__":
    main()
