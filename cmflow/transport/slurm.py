"""Slurm: jobs inside one allocation (the default), or each job its own batch job.

Allocation mode. One pilot allocation per Slurm host (``salloc --no-shell
--no-kill``; or the allocation cmflow runs in, when ``SLURM_JOB_ID`` is set).
Its nodes become hosts of the run (``cluster/n1`` ...; ``cluster`` is then the
group of them), each with a slot per allocated CPU, so the executor's
placement, failover and down-marking work per node as they do for ssh hosts.
Each slot is one long-lived ``sh`` started as a job step::

    srun --jobid=ID --overlap -N1 -n1 -w NODE --quiet sh

and jobs go down its stdin framed exactly as over ssh (``ssh.py``). Measured
on the test cluster: a step costs ~40-55 ms of srun and controller work, a job
down an open slot shell well under a millisecond; so a step per job would be
the scheduler's cost and the run's bottleneck. A timeout, halt or Ctrl-C
``scancel``s the slot's step: Slurm itself kills everything the job started on
the node; the slot gets a new step when next needed. Only the pilot is polled
(``squeue``, once a minute, and when a slot fails, to say why). The allocation
is cancelled when the run ends, however it ends.

Job mode (``submit: jobs``) is ``JobsTransport`` in ``slurm_jobs.py``.
"""
from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import time
from dataclasses import dataclass, replace
from typing import Any

from ..aio import within
from ..errors import CmflowError
from ..hosts import Host, Inventory
from . import ConnectionLost, JobSpec, Outcome, procs
from .output import StreamedOutput
from .framing import _drain, _kill

CMD_TIMEOUT = 60.0        # a Slurm client call that takes longer is treated as failed
PILOT_POLL = 60.0         # seconds between checks that the pilot allocation still runs
SLOT_START_TIMEOUT = 120.0
KILL_WAIT = 15.0          # a cancelled step's srun exits within KillWait; this bounds our wait for it
RELEASE_WAIT = 15.0       # how long closing waits for a cancelled allocation to leave squeue
_CHUNK = 1 << 16


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
@dataclass(eq=False)
class _Slot:
    proc: asyncio.subprocess.Process
    step: str                # JOBID.STEPID of its step
    said: bytearray          # the tail of what srun and the slot shell wrote to stderr
    drain: asyncio.Task | None = None


async def _keep_tail(reader: asyncio.StreamReader, tail: bytearray, limit: int = 4096) -> None:
    """Read srun's stderr as it comes (a full pipe would stall the step), keeping its tail."""
    while chunk := await reader.read(_CHUNK):
        tail += chunk
        del tail[:-limit]


class StepTransport:
    """One node of an allocation: a long-lived shell per slot, each a job step."""

    def __init__(self, host: Host, alloc: Allocation, node: str):
        self.host = host
        self.alloc = alloc
        self.node = node
        self.token = "CMFLOW_" + secrets.token_hex(16)
        self._marker = ("\n" + self.token + " ").encode()
        self._idle: list[_Slot] = []
        self._all: set[_Slot] = set()
        self._closed = False

    def _srun(self) -> list[str]:
        # --overlap: the batch step of an sbatch allocation holds its node's CPUs, and a
        # step that asked for memory exclusively would make the next one wait
        return ["srun", f"--jobid={self.alloc.job_id}", "--overlap", "-N1", "-n1", "-w", self.node, "--quiet",
                f"--job-name={self.host.name}", "sh"]

    async def _open_slot(self) -> _Slot:
        try:
            proc = await procs.spawn(
                *self._srun(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=_CHUNK)
        except FileNotFoundError:
            raise ConnectionLost("`srun` is not installed here") from None
        try:
            assert proc.stdin and proc.stdout
            proc.stdin.write(self._init_script().encode())
            try:
                line = await within(proc.stdout.readline(), SLOT_START_TIMEOUT)
            except (ConnectionError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                line = b""
            parts = line.decode("utf-8", "replace").split()
            if len(parts) != 3 or parts[0] != self.token:
                err = await _drain(proc)
                await self.alloc.refresh()
                raise ConnectionLost(f"no job step on {self.node}: "
                                     f"{_last_error(err) if err.strip() else 'srun ended'}{self.alloc.why()}")
        except BaseException:
            if proc.returncode is None:
                await asyncio.shield(_kill(proc))
            raise
        assert proc.stderr
        slot = _Slot(proc, f"{self.alloc.job_id}.{parts[2]}", bytearray())
        slot.drain = asyncio.ensure_future(_keep_tail(proc.stderr, slot.said))
        self._all.add(slot)
        return slot

    def _init_script(self) -> str:
        lines = [f"export {k}={shlex.quote(v)}" for k, v in self.host.env]
        if self.host.workdir:
            wd = self.host.workdir
            target = "~" + shlex.quote(wd[1:]) if wd.startswith("~") else shlex.quote(wd)
            lines.append(f"cd {target} || {{ echo 'cmflow: cannot cd to {wd}' >&2; exit 97; }}")
        # the job's stderr goes to a file on the node and follows its stdout on the one stream
        lines.append('E=$(mktemp "${TMPDIR:-/tmp}/cmflow-err.XXXXXX") || exit 98')
        lines.append('trap \'rm -f "$E"\' EXIT')
        lines.append(f"printf '%s %s %s\\n' {self.token} $$ \"$SLURM_STEP_ID\"")
        return "\n".join(lines) + "\n"

    async def run(self, spec: JobSpec) -> Outcome:
        start = time.time()
        try:
            slot = self._idle.pop() if self._idle else await self._open_slot()
        except ConnectionLost as e:
            return Outcome(None, start=start, end=time.time(), connection_failed=True, message=str(e))
        start = time.time()
        proc = slot.proc
        assert proc.stdin and proc.stdout and proc.stderr
        # One stream back, not two: srun carries a step's stdout and stderr over one TCP
        # connection, and a second small write right after the first waits ~40 ms for
        # the delayed ACK (Nagle). So stderr is sent after the status line, counted.
        script = (f"sh -c {shlex.quote(spec.command)} </dev/null 2>\"$E\"; s=$?; "
                  f"if [ -s \"$E\" ]; then n=$(wc -c <\"$E\"); printf '\\n%s %d %d\\n' {self.token} $s $n; "
                  f"head -c $n \"$E\"; else printf '\\n%s %d 0\\n' {self.token} $s; fi\n")
        out, err = StreamedOutput(spec.stdout), StreamedOutput(spec.stderr)
        reusable = False
        try:
            proc.stdin.write(script.encode())
            waiting = asyncio.ensure_future(self._collect(proc, out, err))
            try:
                status = await within(asyncio.shield(waiting), spec.timeout)
            except asyncio.TimeoutError:
                waiting.cancel()
                await self._end_step(slot)
                return Outcome(None, 9, start, time.time(), timed_out=True, stdout_bytes=out.close(),
                               stderr_bytes=err.close(), ref=slot.step)
            except BaseException:
                waiting.cancel()
                raise
            reusable = True
            return Outcome(status, 0, start, time.time(), stdout_bytes=out.close(), stderr_bytes=err.close(),
                           ref=slot.step)
        except (ConnectionLost, ConnectionError, BrokenPipeError):
            await _kill(proc)
            if slot.drain:
                try:
                    await within(slot.drain, 5)
                except (asyncio.TimeoutError, ConnectionError):
                    pass
            msg = slot.said.decode("utf-8", "replace")
            await self.alloc.refresh()
            return Outcome(None, start=start, end=time.time(), connection_failed=True, ref=slot.step,
                           message=f"job step {slot.step} on {self.node} lost: "
                                   f"{_last_error(msg) if msg.strip() else 'srun ended'}{self.alloc.why()}")
        except asyncio.CancelledError:
            # halt now / Ctrl-C: Slurm ends the step and everything the job started in it
            await asyncio.shield(self._end_step(slot))
            raise
        finally:
            out.close()
            err.close()
            if reusable and not self._closed:
                self._idle.append(slot)
            else:
                await asyncio.shield(self._discard(slot))

    async def _collect(self, proc: asyncio.subprocess.Process, out: StreamedOutput, err: StreamedOutput) -> int:
        """Copy the job's stdout up to the status line '<TOKEN> STATUS N', then N bytes of its stderr."""
        assert proc.stdout
        reader, marker = proc.stdout, self._marker
        buf = b""
        keep = len(marker) - 1
        while True:
            chunk = await reader.read(_CHUNK)
            if not chunk:
                raise ConnectionLost("step ended")
            buf += chunk
            i = buf.find(marker)
            if i >= 0:
                out.write(buf[:i])
                rest = buf[i + len(marker):]
                break
            out.write(buf[:-keep])
            buf = buf[-keep:]
        while b"\n" not in rest:
            more = await reader.read(_CHUNK)
            if not more:
                raise ConnectionLost("step ended")
            rest += more
        line, rest = rest.split(b"\n", 1)
        status, size = (int(x) for x in line.split())
        while len(rest) < size:
            more = await reader.read(max(size - len(rest), 1))
            if not more:
                raise ConnectionLost("step ended")
            rest += more
        err.write(rest[:size])
        return status

    async def _end_step(self, slot: _Slot) -> None:
        """scancel the slot's step and wait for its srun to go: nothing of the job is left on the node."""
        await slurm_cmd("scancel", "--quiet", slot.step)
        try:
            await within(slot.proc.wait(), KILL_WAIT)
        except asyncio.TimeoutError:
            pass
        await self._discard(slot)

    async def _discard(self, slot: _Slot) -> None:
        self._all.discard(slot)
        await _kill(slot.proc)
        if slot.drain:
            slot.drain.cancel()

    async def aclose(self) -> None:
        self._closed = True
        self._idle.clear()
        await asyncio.gather(*(self._close_slot(s) for s in list(self._all)))

    async def _close_slot(self, slot: _Slot) -> None:
        if slot.proc.stdin and not slot.proc.stdin.is_closing():
            slot.proc.stdin.close()   # the slot shell exits at end of input, its step ends
        try:
            await within(slot.proc.wait(), 5)
        except asyncio.TimeoutError:
            pass
        await self._discard(slot)


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
