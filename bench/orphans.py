#!/usr/bin/env python3
"""Orphan count: 8 job shapes x {timeout, Ctrl-C, SIGTERM, SIGKILL} x {local, ssh} (issue 8.2/8.3).

Each cell runs the eight shapes of tests/procs.py at once on one host with 8
slots (local, or a loopback sshd with its own throwaway user), stops the run
that way, and counts the processes still carrying the run's argv marker
(for SIGKILL: after the slot servers' grace). Prints the table and the total,
which must be 0.

    python3 bench/orphans.py
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from _common import ROOT  # noqa: F401  (puts tests/ on sys.path)
from procs import kill_survivors, stop_run
from sshhosts import SshdHosts, have_sshd

WAYS = ["timeout", "SIGINT", "SIGTERM", "SIGKILL"]


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="cmflow-bench-orphans-", dir="/tmp"))
    base.chmod(0o755)
    hosts = SshdHosts(base / "hosts", n=1, slots=8).start() if have_sshd() else None
    try:
        invs = {"local": base / "local.yaml"}
        invs["local"].write_text("hosts:\n  here: {local: true, slots: 8}\n")
        if hosts:
            invs["ssh"] = base / "ssh.yaml"
            invs["ssh"].write_text(f"ssh_config: {hosts.ssh_config}\nhosts:\n  h1: {{slots: 8}}\n")
        total = 0
        print(f"{'':8}" + "".join(f"{w:>10}" for w in WAYS))
        for kind, inv in invs.items():
            row = []
            for how in WAYS:
                folder = base / f"{kind}-{how}"
                folder.mkdir()
                tmp = Path(tempfile.mkdtemp(prefix="cmfo-", dir="/tmp"))
                try:
                    trial = stop_run(folder, inv, how, env={"TMPDIR": str(tmp)})
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
                kill_survivors(trial.survivors)
                row.append(len(trial.survivors))
            total += sum(row)
            print(f"{kind:8}" + "".join(f"{n:>10}" for n in row))
        print(f"orphans in total: {total} (8 shapes x {len(WAYS)} ways x {len(invs)} transports; must be 0)")
    finally:
        if hosts:
            hosts.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
