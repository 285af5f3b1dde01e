"""A real 4-node Slurm cluster on this machine, for the tests and the benchmarks.

tests/slurmcluster.sh does the work (config, munged, MariaDB + slurmdbd,
slurmctld, one slurmd per node, all on 127.0.0.1, ports picked free, every
file under one folder); this wraps it for Python:

    cluster = SlurmCluster(Path("/tmp/x")).start()
    subprocess.run(["sinfo"], env=cluster.env)
    cluster.stop()
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "slurmcluster.sh"
NEEDED = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/slurmdbd", "/usr/sbin/munged",
          "/usr/sbin/mariadbd", "/usr/bin/sbatch", "/usr/bin/sacct")


def have_slurm() -> str | None:
    """None when everything the cluster needs is installed, else what is missing."""
    missing = [p for p in NEEDED if not os.access(p, os.X_OK)]
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root"
    return ", ".join(missing) if missing else None


@dataclass
class SlurmCluster:
    workdir: Path
    nodes: int = 4
    cpus: int = 2
    slurmd_timeout: int = 300   # how long a dead node goes unnoticed (a node-crash test wants it short)

    @property
    def conf(self) -> Path:
        return self.workdir / "etc" / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment a Slurm client (and cmflow) needs to talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": "/usr/sbin:/usr/bin:" + os.environ.get("PATH", "")}

    def _script(self, action: str, timeout: float = 180) -> subprocess.CompletedProcess:
        env = {**os.environ, "SLURM_RECIPE_NODES": str(self.nodes), "SLURM_RECIPE_CPUS": str(self.cpus),
               "SLURM_RECIPE_PORT_BASE": "auto", "SLURM_RECIPE_NO_INSTALL": "1",
               "SLURM_RECIPE_SLURMD_TIMEOUT": str(self.slurmd_timeout)}
        return subprocess.run(["bash", str(SCRIPT), action, str(self.workdir)], env=env, capture_output=True,
                              text=True, timeout=timeout)

    def start(self, tries: int = 3) -> "SlurmCluster":
        """Start it; a failed start is torn down and tried again on other ports (another
        program may take a port between the check that it is free and the daemon's bind)."""
        for attempt in range(tries):
            try:
                r = self._script("up", timeout=300)
                if r.returncode == 0:
                    return self
                said = r.stderr[-3000:]
            except subprocess.TimeoutExpired:
                said = "slurmcluster.sh up did not finish in 300 s"
            logs = self.workdir / "log"
            tail = "".join(f"\n--- {p.name}\n" + p.read_text(errors="replace")[-1500:]
                           for p in sorted(logs.glob("*")) if p.is_file()) if logs.is_dir() else ""
            self.stop()
        raise RuntimeError(f"the test Slurm cluster did not start ({tries} tries):\n{said}{tail}")

    def stop(self) -> None:
        self._script("down")
        shutil.rmtree(self.workdir, ignore_errors=True)

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        """A Slurm client command against this cluster; its stdout."""
        r = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
        return r.stdout

    def queue(self) -> list[str]:
        """Every job and step Slurm still has pending, running or completing: 'JOBID STATE NAME'."""
        jobs = self.run("squeue", "-h", "-o", "%i %T %j").split("\n")
        steps = self.run("squeue", "-h", "-s", "-o", "%i %j").split("\n")
        return [j for j in jobs if j.strip()] + [f"step {s}" for s in steps if s.strip()]

    def job_state(self, job: str) -> str:
        """A job's state as slurmctld knows it now (scontrol): sacct reads slurmdbd, which hears
        of a job's start and end some time after they happen and may still say PENDING."""
        out = self.run("scontrol", "show", "job", "-o", job)
        m = re.search(r"\bJobState=(\S+)", out)
        return m.group(1) if m else ""

    def wait_queue_empty(self, timeout: float = 30) -> list[str]:
        """Wait until nothing is queued (a cancelled job completes within KillWait); what is left."""
        deadline = time.monotonic() + timeout
        left = self.queue()
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = self.queue()
        return left

    def kill_node(self, node: str) -> None:
        """A node crash: its slurmd and every step daemon and task it was running, SIGKILLed."""
        pidfile = self.workdir / "run" / f"slurmd-{node}.pid"
        victims = [int(pidfile.read_text())]
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                env = (p / "environ").read_bytes().split(b"\0")
                stat = (p / "stat").read_text()
            except OSError:
                continue
            if f"SLURM_CONF={self.conf}".encode() in env and f"SLURMD_NODENAME={node}".encode() in env:
                victims.append(int(p.name))
                victims.append(int(stat.rsplit(")", 1)[1].split()[1]))   # its slurmstepd
        # all stopped first, then killed: as in a real crash, no survivor reports the others' deaths
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in set(victims):
                if pid > 1:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass

    def restart_node(self, node: str) -> None:
        """Start a killed node's slurmd again and wait until Slurm has it back."""
        subprocess.run(["slurmd", "-f", str(self.conf), "-N", node, "-c"], env=self.env, check=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-n", node, "-o", "%t").strip()
            if state in ("idle", "mix", "alloc"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{node} did not come back: {state}")
