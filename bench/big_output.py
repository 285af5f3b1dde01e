#!/usr/bin/env python3
"""16 jobs x 50 MB of stdout over ssh: cmflow beside plain `ssh host cmd > file` (issue 10.1).

Starts its own 4 loopback sshd hosts (tests/sshhosts.py, its own throwaway user
and folders) and alternates, in one run:

    16 x `ssh -F CONFIG hK 'head -c 50M /dev/zero' > FILE`, 4 per host, all at once
    cmflow run big.flow --hosts hosts.yaml           (4 hosts x 4 slots, the same 16 jobs)

Prints the median wall time and MB/s of each, the ratio (target: cmflow >= 0.8x
plain ssh) and cmflow's peak RSS (GNU time's %M: the largest single process,
which is cmflow; target <= 100 MB). It also prints the CPU seconds of both
ends (ssh, sshd, slot servers, cmflow: cgroup cpuacct), whose ratio a busy
machine does not blur: on 2 cores the copy is CPU-bound. Each job's value is a reference to its
output file (over the 1 MiB value limit), so nothing is copied into records.

    python3 bench/big_output.py [--mb 50] [--reps 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, cg_cpu, cgroups, failed  # noqa: F401  (puts tests/ on sys.path)
from sshhosts import SshdHosts, have_sshd

HOSTS, SLOTS = 4, 4


# what each process of the two cgroups is, by its name: client side, then server side
ROLES = {("client", "python3"): "cmflow", ("client", "ssh"): "ssh", ("server", "sshd"): "sshd",
         ("server", "python3"): "slot servers", ("server", "head"): "jobs (head)"}
TICK = os.sysconf("SC_CLK_TCK")


class Split:
    """CPU seconds per role, from /proc/PID/stat of every process in the groups, sampled every 20 ms
    (a process's last moments before it exits are missed: the rest of the groups' total is 'other')."""

    def __init__(self, groups: dict[str, Path]):
        self.groups = groups
        self.seen: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        for side, g in self.groups.items():
            for pid in (g / "cgroup.procs").read_text().split():
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                f = stat[stat.rindex(")") + 2:].split()
                self.seen[int(pid)] = (ROLES.get((side, comm), "other"), (int(f[11]) + int(f[12])) / TICK)

    def finish(self, total: float) -> dict[str, float]:
        self.stop.set()
        self.thread.join()
        roles: dict[str, float] = {}
        for role, cpu in self.seen.values():
            roles[role] = roles.get(role, 0.0) + cpu
        roles["other"] = total - sum(v for k, v in roles.items() if k != "other")
        return roles


def timed(cmd: str, cwd: Path, groups: dict[str, Path] | None) -> tuple[float, int, float, dict[str, float]]:
    """Wall seconds, peak RSS (KB) of the largest process of `cmd`, the CPU seconds of both ends, and
    those split by role (cmflow, ssh, sshd, slot servers, jobs)."""
    rss_file = cwd / "rss"
    cpu0 = sum(cg_cpu(g) for g in (groups or {}).values())
    split = Split(groups) if groups else None

    def join() -> None:
        if groups:
            (groups["client"] / "cgroup.procs").write_text(str(os.getpid()))

    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), "bash", "-c", cmd], cwd=cwd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=join)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        failed(cmd[:80], r.returncode, r.stderr)
    time.sleep(0.3)   # let sshd sessions finish their accounting
    cpu = sum(cg_cpu(g) for g in (groups or {}).values()) - cpu0
    return wall, int(rss_file.read_text().split()[-1]), cpu, split.finish(cpu) if split else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if not have_sshd() or not Path("/usr/bin/time").exists():
        sys.exit("needs openssh-server and GNU time: apt-get install -y openssh-server time")
    jobs = HOSTS * SLOTS
    size = a.mb * 1024 * 1024
    base = Path(tempfile.mkdtemp(prefix="cmflow-bench-big-", dir="/tmp"))
    base.chmod(0o755)
    groups = cgroups()   # CPU of everything on both ends: a ratio that a busy machine does not blur
    hosts = SshdHosts(base / "hosts", n=HOSTS, slots=SLOTS,
                      cgroup=str(groups["server"] / "cgroup.procs") if groups else None).start()
    try:
        work = base / "work"
        work.mkdir()
        (work / "big_tasks.py").write_text(f"def big(i):\n    return 'head -c {size} /dev/zero'\n")
        (work / "big.flow").write_text("from big_tasks import big\n" +
                                       " | ".join(f"big({i})" for i in range(jobs)) + "\n")
        plain = " & ".join(f"ssh -F {hosts.ssh_config} h{i % HOSTS + 1} 'head -c {size} /dev/zero' > out{i}"
                           for i in range(jobs)) + " & wait"
        cm_cmd = f"{sys.executable} -m cmflow run big.flow --hosts {hosts.inventory_file} -q --run-dir run"
        ssh_runs, cm_runs = [], []
        for _ in range(a.reps):   # alternate, so both see the same machine
            ssh_runs.append(timed(plain, work, groups))
            check(sorted(work.glob("out*")), jobs, size)
            for f in work.glob("out*"):
                f.unlink()
            shutil.rmtree(work / "run", ignore_errors=True)
            cm_runs.append(timed(cm_cmd, work, groups))
            check(sorted((work / "run" / "jobs").glob("*.out")), jobs, size)
            shutil.rmtree(work / "run", ignore_errors=True)
            print(f"  rep {len(cm_runs)}: plain {ssh_runs[-1][0]:.2f} s, cmflow {cm_runs[-1][0]:.2f} s,"
                  f" load average {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)
    total_mb = jobs * a.mb
    s = statistics.median(w for w, _, _, _ in ssh_runs)
    c = statistics.median(w for w, _, _, _ in cm_runs)
    s_cpu = statistics.median(u for _, _, u, _ in ssh_runs)
    c_cpu = statistics.median(u for _, _, u, _ in cm_runs)
    print(f"{jobs} jobs x {a.mb} MB stdout over {HOSTS} loopback sshd hosts x {SLOTS} slots, {a.reps} reps (median):")
    print(f"  plain ssh > file   {s:6.2f} s  {total_mb / s:7.1f} MB/s   walls {', '.join(f'{w:.2f}' for w, _, _, _ in ssh_runs)}"
          f"   CPU {s_cpu:.2f} s")
    print(f"  cmflow run         {c:6.2f} s  {total_mb / c:7.1f} MB/s   walls {', '.join(f'{w:.2f}' for w, _, _, _ in cm_runs)}"
          f"   CPU {c_cpu:.2f} s   peak RSS {max(r for _, r, _, _ in cm_runs) / 1024:.0f} MB")
    print(f"ratio cmflow / plain ssh: {s / c:.2f}x  (target >= 0.8x, RSS <= 100 MB)")
    if groups:
        print(f"CPU ratio (both ends, ssh and sshd included): {s_cpu / c_cpu:.2f}x"
              f"   load average {os.getloadavg()[0]:.1f}")
        for name, runs in (("plain ssh", ssh_runs), ("cmflow", cm_runs)):
            order = [*ROLES.values(), "other"]
            roles = sorted({r for *_, split in runs for r in split}, key=order.index)
            print(f"  CPU-s by process, {name:<9} (median): " + ", ".join(
                f"{r} {statistics.median(split.get(r, 0.0) for *_, split in runs):.2f}" for r in roles))


def check(files: list[Path], jobs: int, size: int) -> None:
    """Every job's output there, whole: a side that lost bytes has no time worth a ratio."""
    sizes = [f.stat().st_size for f in files]
    if len(sizes) != jobs or any(n != size for n in sizes):
        failed("a side's outputs", 1, f"expected {jobs} files of {size} bytes, found sizes {sizes}")


if __name__ == "__main__":
    main()
