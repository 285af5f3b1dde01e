"""Slurm: jobs inside one allocation (the default), or each job its own batch job.

Allocation mode. One pilot allocation per Slurm host (``salloc --no-shell
--no-kill``; or the allocation cmflow runs in, when ``SLURM_JOB_ID`` is set).
Its nodes become hosts of the run (``cluster/n1`` ...; ``cluster`` is then the
group of them), each with a slot per allocated CPU, so the executor's
placement, failover and down-marking work per node as they do for ssh hosts.
Each slot is one long-lived slot server (``server.py``, as over ssh) started
as a job step::

    srun --jobid=ID --overlap -N1 -n1 -w NODE --quiet --unbuffered python3 -I -S -c BOOT

and jobs go down its stdin as frames (``slots.py``). Measured on the test
cluster: a step costs ~40-55 ms of srun and controller work, a job down an
open slot ~1 ms; so a step per job would be the scheduler's cost and the run's
bottleneck. The server ends everything a job started when the job ends (it
is a child subreaper), a timed-out or cancelled one too, and sends its output
home; a step whose server stops answering is ``scancel``ed. Only the pilot is polled
(``squeue``, once a minute, and when a slot fails, to say why). The allocation
is cancelled when the run ends, however it ends.

Job mode (``submit: jobs``) is ``JobsTransport`` in ``slurm_jobs.py``.
"""
from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from dataclasses import dataclass, replace
from typing import Any

from ..aio import within
from ..errors import CmflowError
from ..hosts import Host, Inventory
from . import ConnectionLost, JobSpec, Outcome, procs
from .procs import kill as _kill
from .slots import Slot, SlotTransport, boot_argv, spawn_slot

CMD_TIMEOUT = 60.0        # a Slurm client call that takes longer is treated as failed
PILOT_POLL = 60.0         # seconds between checks that the pilot allocation still runs
SLOT_START_TIMEOUT = 120.0
KILL_WAIT = 15.0          # a cancelled step's srun exits within KillWait; this bounds our wait for it
RELEASE_WAIT = 15.0       # how long closing waits for a cancelled allocation to leave squeue


class SlurmError(CmflowError):
    """Slurm refused or could not be reached; the message says which and why."""

    exit_status = 1


async def slurm_cmd(*argv: str, timeout: float = CMD_TIMEOUT, essential: bool = False) -> tuple[int, str, str]:
    """Run one Slurm client command; (status, stdout, stderr). A missing client is a SlurmError.

    ``essential``: a second Ctrl-C does not kill it (the scancel that releases an allocation)."""
    try:
        proc = await procs.spawn(*argv, essential=essential, stdin=asyncio.subprocess.DEVNULL,
                                 stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise SlurmError(f"`{argv[0]}` is not installed here: run cmflow where the Slurm client commands are "
                         f"(a login node), or install them") from None
    try:
        out, err = await within(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        await _kill(proc)
        return -1, "", f"{argv[0]} did not answer within {timeout:.0f}s"
    except BaseException:
        await asyncio.shield(_kill(proc))
        raise
    return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def _last_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no message"])[-1]


async def hostnames(nodelist: str) -> list[str]:
    """``n[1-3],x`` -> n1 n2 n3 x, as Slurm expands it (``scontrol show hostnames`` is local, no RPC)."""
    rc, out, err = await slurm_cmd("scontrol", "show", "hostnames", nodelist)
    if rc != 0:
        raise SlurmError(f"cannot expand node list {nodelist!r}: {_last_error(err)}")
    return out.split()


def cpus_per_node(text: str) -> list[int]:
    """``SLURM_JOB_CPUS_PER_NODE`` (``2(x3),1``) as one count per node."""
    counts: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"unexpected CPU count {part!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def _count_ids(ids: str) -> int:
    n = 0
    for part in ids.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi) - int(lo) + 1 if hi else 1
    return n


# ----------------------------------------------------------------- the pilot
@dataclass
class Allocation:
    """One Slurm job whose nodes run the jobs of a Slurm host."""

    job_id: str
    nodes: tuple[tuple[str, int], ...] = ()   # (node, CPUs) in Slurm's order
    owned: bool = True                         # we asked for it, so we release it
    state: str = "RUNNING"
    checked: float = 0.0
    _poller: asyncio.Task | None = None

    async def refresh(self, max_age: float = 5.0) -> str:
        """The allocation's Slurm state, asked at most every ``max_age`` seconds."""
        if time.monotonic() - self.checked >= max_age:
            self.checked = time.monotonic()
            rc, out, err = await slurm_cmd("squeue", "-h", "-t", "all", "-j", self.job_id, "-o", "%T")
            if rc == 0:
                self.state = out.strip() or "ENDED"
            elif "invalid job id" in err.lower():
                self.state = "ENDED"
        return self.state

    def why(self) -> str:
        return "" if self.state in ("RUNNING", "") else f"; allocation {self.job_id} is {self.state}"

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(PILOT_POLL)
            await self.refresh(0)

    def watch(self) -> None:
        self._poller = asyncio.ensure_future(self._watch())

    async def release(self) -> None:
        if self._poller:
            self._poller.cancel()
        if not self.owned:
            return
        await slurm_cmd("scancel", "--quiet", self.job_id, timeout=RELEASE_WAIT if procs.hurrying() else CMD_TIMEOUT,
                        essential=True)
        if procs.hurrying():
            return   # a second Ctrl-C: Slurm has been told, that is enough
        # cancelled is not gone: wait (briefly) until it has left the queue, so
        # a run that returned holds nothing of the cluster
        deadline = time.monotonic() + RELEASE_WAIT
        while time.monotonic() < deadline:
            rc, out, _ = await slurm_cmd("squeue", "-h", "-j", self.job_id, "-o", "%T")
            if rc != 0 or not out.strip():
                return
            await asyncio.sleep(0.2)


async def request_allocation(host: Host, job_name: str) -> Allocation:
    """``salloc --no-shell`` for a Slurm host; waits while it is pending; cancelling revokes it."""
    spec = host.slurm
    assert spec is not None
    argv = ["salloc", "--no-shell", "--no-kill", f"--nodes={spec.nodes}", f"--job-name={job_name}"]
    if spec.time:
        argv.append(f"--time={spec.time}")
    argv += [f"--ntasks-per-node={spec.cpus_per_node}"] if spec.cpus_per_node else ["--exclusive"]
    argv += spec.request_args()
    try:
        proc = await procs.spawn(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                 stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise SlurmError("`salloc` is not installed here: run cmflow where the Slurm client commands are "
                         "(a login node), or install them") from None
    job_id = ""
    said: list[str] = []
    assert proc.stderr
    try:
        async for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").strip()
            said.append(line)
            m = re.search(r"(?:Pending|Granted) job allocation (\d+)", line)
            if m:
                job_id = m.group(1)
        await proc.wait()
    except BaseException:
        # Ctrl-C or halt while waiting: salloc revokes a pending request on SIGTERM;
        # scancel covers the moment it was granted (and a salloc that did not answer)
        await asyncio.shield(_end_salloc(proc))
        if job_id:
            await asyncio.shield(slurm_cmd("scancel", "--quiet", job_id, essential=True))
        raise
    if proc.returncode != 0 or not job_id:
        raise SlurmError(f"{host.name}: Slurm refused the allocation ({' '.join(shlex.quote(a) for a in argv)}): "
                         f"{_last_error(chr(10).join(said))}")
    alloc = Allocation(job_id)
    try:
        alloc.nodes = await _allocated_nodes(job_id)
    except BaseException:
        await asyncio.shield(alloc.release())
        raise
    return alloc


async def _end_salloc(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    try:
        await within(proc.wait(), KILL_WAIT)
    except asyncio.TimeoutError:
        await _kill(proc)


async def _allocated_nodes(job_id: str) -> tuple[tuple[str, int], ...]:
    rc, out, err = await slurm_cmd("scontrol", "show", "job", "-d", job_id)
    if rc != 0:
        raise SlurmError(f"cannot read allocation {job_id}: {_last_error(err)}")
    nodes: list[tuple[str, int]] = []
    # detail lines: "Nodes=n[1-4] CPU_IDs=0-1 Mem=0 GRES="
    for m in re.finditer(r"^\s*Nodes=(\S+) CPU_IDs=(\S+)", out, re.M):
        count = _count_ids(m.group(2))
        nodes += [(n, count) for n in await hostnames(m.group(1))]
    if not nodes:
        raise SlurmError(f"allocation {job_id} lists no nodes")
    return tuple(nodes)


async def enclosing_allocation() -> Allocation:
    """The allocation cmflow runs inside (a user's salloc, an sbatch script): used, never released."""
    job_id = os.environ["SLURM_JOB_ID"]
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    cpus = os.environ.get("SLURM_JOB_CPUS_PER_NODE")
    if nodelist and cpus:
        names = await hostnames(nodelist)
        counts = cpus_per_node(cpus)
        if len(counts) == len(names):
            return Allocation(job_id, tuple(zip(names, counts)), owned=False)
    return Allocation(job_id, await _allocated_nodes(job_id), owned=False)


# ------------------------------------------------------------- the clusters
def node_host_name(cluster: str, node: str) -> str:
    return f"{cluster}/{node}"


class Clusters:
    """The Slurm side of one run: pilot allocations (their nodes become hosts) and job-mode hosts."""

    def __init__(self, run_id: str):
        self.job_name = f"cmflow-{run_id}"
        self.allocations: dict[str, Allocation] = {}     # cluster host name -> its allocation
        self._node_of: dict[str, tuple[Allocation, str]] = {}
        self._jobs: dict[str, Any] = {}

    async def open(self, inv: Inventory) -> Inventory:
        """Get every allocation-mode host its allocation; return the inventory with their nodes as hosts."""
        wanted = [h for h in inv.hosts if h.slurm and h.slurm.submit == "allocation"]
        if not wanted:
            return inv
        inside = "SLURM_JOB_ID" in os.environ

        async def get(h: Host) -> None:
            # inside an allocation every allocation-mode host is that allocation: the same
            # inventory works from a login node (pilot) and in an sbatch script
            alloc = await enclosing_allocation() if inside else await request_allocation(h, self.job_name)
            self.allocations[h.name] = alloc
            alloc.watch()

        # a refusal cancels the other requests: no allocation is left pending behind an error
        try:
            async with asyncio.TaskGroup() as tg:
                for h in wanted:
                    tg.create_task(get(h))
        except BaseExceptionGroup as eg:
            first = eg.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
        return self._expand(inv)

    def _expand(self, inv: Inventory) -> Inventory:
        hosts: list[Host] = []
        members: dict[str, tuple[str, ...]] = {}
        for h in inv.hosts:
            alloc = self.allocations.get(h.name)
            if alloc is None:
                hosts.append(h)
                continue
            names = []
            for node, cpus in alloc.nodes:
                name = node_host_name(h.name, node)
                hosts.append(replace(h, name=name, hostname=node, slots=cpus))
                self._node_of[name] = (alloc, node)
                names.append(name)
            members[h.name] = tuple(names)
        groups = [(g, tuple(n for m in ms for n in members.get(m, (m,)))) for g, ms in inv.groups]
        groups += list(members.items())
        return Inventory(tuple(hosts), tuple(groups), inv.ssh_config, inv.source)

    def transport(self, host: Host) -> Any:
        if host.name in self._node_of:
            alloc, node = self._node_of[host.name]
            return StepTransport(host, alloc, node)
        from .slurm_jobs import JobsTransport

        t = self._jobs[host.name] = JobsTransport(host, self.job_name)
        return t

    async def aclose(self) -> None:
        await asyncio.gather(*(a.release() for a in self.allocations.values()), return_exceptions=True)


# ----------------------------------------------------- allocation mode: steps
class StepTransport(SlotTransport):
    """One node of an allocation: a slot server per slot, each server a job step.

    The slot server (server.py, as over ssh) runs as the step's one task::

        srun --jobid=ID --overlap -N1 -n1 -w NODE --quiet --unbuffered python3 -I -S -c BOOT

    It is a child subreaper inside the step, so whatever a job leaves behind
    (``sleep 1000 &``) is ended with the job, not when the step ends; a
    timed-out job's output up to its end still comes home, stderr included.
    A timeout, halt or Ctrl-C asks the server to end the job (the step stays,
    for the next job); a step whose server no longer answers is ``scancel``ed.
    """

    tell = ("SLURM_STEP_ID",)
    start_timeout = SLOT_START_TIMEOUT

    def __init__(self, host: Host, alloc: Allocation, node: str):
        super().__init__(host)
        self.alloc = alloc
        self.node = node

    async def _start(self) -> tuple[asyncio.subprocess.Process, int, Any]:
        # --overlap: the batch step of an sbatch allocation holds its node's CPUs, and a
        # step that asked for memory exclusively would make the next one wait.
        # --unbuffered: slurmstepd otherwise holds a task's output until a newline, and
        # frames are binary (the task's stdout is then a pty in raw mode: bytes pass as
        # they are; stdin stays a pipe).
        argv = ["srun", f"--jobid={self.alloc.job_id}", "--overlap", "-N1", "-n1", "-w", self.node, "--quiet",
                "--unbuffered", f"--job-name={self.host.name}", *boot_argv("python3")]
        try:
            proc, out_fd = await spawn_slot(*argv)
        except FileNotFoundError:
            raise ConnectionLost("`srun` is not installed here") from None
        return proc, out_fd, None

    def _start_failed(self, stderr: str, tag: Any) -> str:
        text = stderr.strip()
        if "python3" in text and ("No such file" in text or "not found" in text):
            return f"{self.node} has no python3 (cmflow runs each slot's server with it)"
        if "cmflow: cannot enter workdir" in text:
            return text.splitlines()[-1]
        return f"no job step on {self.node}: {_last_error(text) if text else 'srun ended'}"

    def _ref(self, slot: Slot) -> str:
        return f"{self.alloc.job_id}.{slot.told.get('SLURM_STEP_ID') or '?'}"

    async def run(self, spec: JobSpec) -> Outcome:
        outcome = await super().run(spec)
        if outcome.connection_failed:
            await self.alloc.refresh()   # "allocation N is TIMEOUT" says more than "srun ended"
            outcome = replace(outcome, message=outcome.message + self.alloc.why())
        return outcome

    async def _discard(self, slot: Slot) -> None:
        await super()._discard(slot)   # its stdin closed: the server ends its job and exits, so does the step
        if slot.proc.returncode != 0 and "SLURM_STEP_ID" in slot.told and not procs.hurrying():
            # srun had to be killed, or lost its step: Slurm ends whatever the step still runs
            await slurm_cmd("scancel", "--quiet", self._ref(slot))


async def probe_cluster(host: Host, timeout: float = 10) -> tuple[bool, str, str]:
    """For `cmflow hosts check`: (answers, what sinfo says, CPUs) of a Slurm host's partition."""
    spec = host.slurm
    assert spec is not None
    argv = ["sinfo", "-h", "-o", "%a %t %D %C"] + ([f"--partition={spec.partition}"] if spec.partition else [])
    try:
        rc, out, err = await slurm_cmd(*argv, timeout=timeout)
    except SlurmError as e:
        return False, str(e), "-"
    if rc != 0:
        return False, f"Slurm: {_last_error(err)}", "-"
    states: dict[str, int] = {}
    cpus = 0
    up = set()
    for line in out.splitlines():
        avail, state, count, alloc_idle_other_total = line.split()
        up.add(avail)
        states[state] = states.get(state, 0) + int(count)
        cpus += int(alloc_idle_other_total.split("/")[-1])
    if not states:
        return False, f"Slurm: no partition {spec.partition or '(default)'}", "-"
    nodes = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return "up" in up, f"Slurm {spec.submit}: partition {spec.partition or '(default)'} {'/'.join(sorted(up))}, " \
                       f"nodes {nodes}", str(cpus)
