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

A third line is the floor of any tool that runs each job as `sh -c CMD` over ssh
(floor.sh): one master connection per host, then per slot one session running a
remote shell loop that reads its share of the commands, handed out in advance,
and execs `sh -c` for each (no scheduling, no output kept, no process-tree
cleanup). What it costs here is the handshakes and process creation itself.
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
        floor_cmd = f"bash {floor_script(base, hosts.ssh_config, a.jobs, a.hosts, a.slots)}"
        gp, cm, fl = [], [], []
        for _ in range(a.reps):   # alternate, so all see the same machine
            gp.append(measure(gp_cmd, groups))
            shutil.rmtree(work / "run", ignore_errors=True)
            cm.append(measure(cm_cmd, groups, cwd=work))
            fl.append(measure(floor_cmd, groups))
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"{a.jobs} x `true` over {a.hosts} loopback sshd hosts x {a.slots} slots, {a.reps} reps each (median); "
          f"CPU from {'cgroup cpuacct' if groups else 'getrusage (sshd not counted)'}:")
    g = report("GNU parallel -M (ControlMaster)", a.jobs, gp)
    c = report("cmflow run (persistent shells)", a.jobs, cm)
    f = report("floor: remote `sh -c` loops", a.jobs, fl)
    print(f"ratio cmflow / GNU parallel: {c / g:.1f}x  (target >= 30x; the floor is {f / g:.1f}x GNU parallel)")


def floor_script(base: Path, config: Path, jobs: int, hosts: int, slots: int) -> Path:
    """floor.sh: masters up (all at once), then hosts x slots sessions over them, each a remote loop of
    `sh -c` over its share of the jobs (given on stdin), then the masters closed."""
    share = base / "floor"
    share.mkdir()
    sessions = hosts * slots
    for k in range(sessions):
        (share / f"{k}.cmds").write_text("true\n" * (jobs // sessions + (k < jobs % sessions)))
    ssh = f"ssh -F {config} -o ControlPath={share}/%n.sock"
    loop = "'while read -r c; do sh -c \"$c\"; echo $?; done'"
    wait = 'for p in "${pids[@]}"; do wait "$p"; done; pids=()'    # set -e: any failure fails the floor
    lines = ["set -e", "pids=()"]
    lines += [f"{ssh} -o ControlMaster=yes -o ControlPersist=yes -fN h{i} & pids+=($!)" for i in range(1, hosts + 1)]
    lines.append(wait)
    lines += [f"{ssh} h{1 + k // slots} {loop} < {share}/{k}.cmds > /dev/null & pids+=($!)" for k in range(sessions)]
    lines.append(wait)
    lines += [f"{ssh} -O exit h{i} 2>/dev/null" for i in range(1, hosts + 1)]
    script = base / "floor.sh"
    script.write_text("\n".join(lines) + "\n")
    return script


if __name__ == "__main__":
    main()
