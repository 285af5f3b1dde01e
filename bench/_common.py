"""Shared by the benchmarks: run a command, time it, account its CPU (and the sshd side's).

CPU accounting uses cgroup-v1 cpuacct groups when they are writable (as
../shared/bench/measure.py does): everything the measured command starts is
in 'client' (ssh ControlMasters that daemonise included), every sshd and its
sessions in 'server'. Without cgroups it falls back to getrusage of children.
"""
from __future__ import annotations

import atexit
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
# Every `python3 -m cmflow` a benchmark starts runs this checkout, installed or not.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def _compile_bytecode() -> None:
    """Run cmflow as an installed copy runs: from its bytecode, which pip compiles at install (and
    Debian's packages of the peers, pssh and clush, ship). A checkout run with PYTHONDONTWRITEBYTECODE
    set (as on the shared box) would compile all of cmflow at every start: ~0.15 s of CPU per command."""
    import compileall

    compileall.compile_dir(str(ROOT / "cmflow"), quiet=1)


_compile_bytecode()


def failed(what: str, rc: int, stderr: str) -> None:
    """A side that failed has no time worth a ratio: stop the benchmark, loudly."""
    sys.exit(f"benchmark aborted: {what} exited {rc}: {stderr[:300]} ... {stderr[-300:]}")

# Per benchmark process: two benchmarks at once must not count each other's CPU.
CG_ROOT = Path(f"/sys/fs/cgroup/cpuacct/cmflow-bench-{os.getpid()}")


def cgroups() -> dict[str, Path] | None:
    try:
        groups = {n: CG_ROOT / n for n in ("client", "server")}
        for g in groups.values():
            g.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    atexit.register(_remove_cgroups, groups)
    return groups


def _remove_cgroups(groups: dict[str, Path]) -> None:
    """Leave no group behind (a group still holding a process stays, and says so)."""
    for g in (*groups.values(), CG_ROOT):
        try:
            g.rmdir()
        except OSError as e:
            print(f"note: cgroup {g} not removed: {e}", file=sys.stderr)


def cg_cpu(group: Path | None) -> float:
    if group is None:
        return 0.0
    return int((group / "cpuacct.usage").read_text()) / 1e9


@dataclass
class Sample:
    wall: float
    client_cpu: float
    server_cpu: float
    rc: int


def measure(cmd: str, groups: dict[str, Path] | None, env: dict | None = None, cwd: Path | None = None) -> Sample:
    client = groups["client"] if groups else None
    server = groups["server"] if groups else None

    def join() -> None:
        if client:
            (client / "cgroup.procs").write_text(str(os.getpid()))

    c0, s0 = cg_cpu(client), cg_cpu(server)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-c", cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          preexec_fn=join, env={**os.environ, **(env or {})}, cwd=cwd)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.3)   # let sshd sessions finish their accounting
    c1, s1 = cg_cpu(client), cg_cpu(server)
    if proc.returncode != 0:
        failed(cmd[:80], proc.returncode, proc.stderr)
    rusage = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Sample(wall, (c1 - c0) if client else rusage, s1 - s0, proc.returncode)


def report(name: str, jobs: int, samples: list[Sample]) -> float:
    walls = [s.wall for s in samples]
    med = sorted(samples, key=lambda s: s.wall)[len(samples) // 2]
    rate = jobs / med.wall
    print(f"{name:<34} median {med.wall:6.2f} s  {rate:7.0f} jobs/s   walls {', '.join(f'{w:.2f}' for w in walls)}"
          f"   CPU/job client {1000 * med.client_cpu / jobs:5.1f} ms, sshd {1000 * med.server_cpu / jobs:5.1f} ms")
    return rate


def flow_of(jobs: int, folder: Path, command: str = "true", form: str = "text") -> Path:
    """A flow of `jobs` distinct trivial jobs run side by side: written out as
    `t(0) | t(1) | ...` (form "text") or as one fan-out, `par(t(i) for i in range(N))` ("gen")."""
    (folder / "bench_tasks.py").write_text(f"def t(i):\n    return {command!r}\n")
    flow = folder / f"many_{form}.flow"
    with open(flow, "w") as f:
        f.write("from bench_tasks import t\n")
        if form == "gen":
            f.write(f"par(t(i) for i in range({jobs}))\n")
        else:
            f.writelines(f"t({i}) | " for i in range(jobs - 1))
            f.write(f"t({jobs - 1})\n")
    return flow


def one_job_per_host(folder: Path, hosts: int, name: str = "one") -> Path:
    """A pssh host list (`hostlist`: h1..hN) and a flow of one `true` on each of those hosts."""
    (folder / "hostlist").write_text("".join(f"h{i}\n" for i in range(1, hosts + 1)))
    (folder / "bench_tasks.py").write_text("def t(i):\n    return 'true'\n")
    flow = folder / f"{name}.flow"
    flow.write_text("from bench_tasks import t\n" + " | ".join(f"t({i}) @ h{i}" for i in range(1, hosts + 1)) + "\n")
    return flow
