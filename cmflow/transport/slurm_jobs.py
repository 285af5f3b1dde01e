"""Slurm job mode (``submit: jobs``): each job its own batch job, submitted and tracked in bulk.

What the scheduler sees, whatever the number of jobs:

- submission: the jobs ready at one moment go in one ``sbatch --array`` (up to
  the cluster's ``MaxArraySize``, or ``max_array``), one call per batch, at most
  ``submit_rate`` calls a second. A batch's script holds every job's command;
  the array task picks its own by ``SLURM_ARRAY_TASK_ID``.
- tracking: one ``sacct`` call per interval for all the run's jobs (accounting,
  not the controller), every ``poll`` seconds while jobs end, backing off to a
  minute while none does.
- cancelling: one ``scancel`` for all the jobs stopped at one moment (a timeout
  of Slurm's own, halt, Ctrl-C); the run's end cancels whatever is left.

A job writes its stdout and stderr straight to the run directory, so the run
directory must be on a file system the nodes share (it usually is: home or
project space). A timeout runs the command under ``timeout``; Slurm's
``--time`` is only the backstop. Slurm's own ends of a job become reasons:
TIMEOUT, OUT_OF_MEMORY, CANCELLED; NODE_FAIL/PREEMPTED/BOOT_FAIL are not the
job's fault: the job is submitted again (up to 3 times, listed in the run's
``slurm/stats-HOST.json``), then reported as a lost connection.
"""
from __future__ import annotations

import asyncio
import json
import math
import os
import re
import shlex
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..hosts import Host
from ..runlog import write_atomic
from . import JobSpec, Outcome
from .slurm import _last_error, slurm_cmd

GATHER = 0.05             # seconds to let a burst of ready jobs join one batch
MAX_POLL = 60.0           # back-off ceiling between sacct calls
SUBMIT_RETRY_MAX = 60.0   # back-off ceiling when Slurm refuses a submission for a limit
TIMEOUT_GRACE = 5         # seconds between timeout's TERM and KILL
LOST_RETRIES = 3          # resubmissions after NODE_FAIL/PREEMPTED/BOOT_FAIL before it is reported
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "RESIZING", "SUSPENDED", "CONFIGURING", "COMPLETING",
           "STAGE_OUT", "SIGNALING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
_LOST = {"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}   # not the job's fault: run it again


@dataclass(eq=False)
class _Job:
    spec: JobSpec
    future: asyncio.Future
    id: str = ""               # Slurm's: "123" or "123_4"
    cancelled: bool = False
    submitted: float = 0.0
    lost: int = 0              # times a node failure or preemption lost it


@dataclass
class Stats:
    """Scheduler calls made (the benchmark prints them)."""

    calls: Counter = field(default_factory=Counter)
    lost: list = field(default_factory=list)   # {"seq", "job", "state", "node"} of each resubmission
    jobs: int = 0
    batches: int = 0
    first_submit: float = 0.0   # epoch seconds of the first and the last sbatch
    last_submit: float = 0.0
    opened: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        span = max(time.time() - self.opened, 1e-9)
        return {"jobs": self.jobs, "batches": self.batches, "calls": dict(self.calls), "lost": self.lost,
                "submit_seconds": round(self.last_submit - self.first_submit, 3),
                "seconds": round(span, 3), "calls_per_minute": round(sum(self.calls.values()) * 60 / span, 2)}


class JobsTransport:
    def __init__(self, host: Host, job_name: str):
        assert host.slurm is not None
        self.host = host
        self.spec = host.slurm
        self.job_name = job_name
        self.stats = Stats()
        self._queue: list[_Job] = []
        self._live: dict[str, _Job] = {}          # submitted, not ended
        self._wake = asyncio.Event()
        self._submitted = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._to_cancel: set[str] = set()
        self._canceller: asyncio.Task | None = None
        self._max_array: int | None = self.spec.max_array
        self._batch = 0
        self._last_submit = 0.0
        self._closed = False
        self._folder: Path | None = None    # the run directory's slurm/: batch scripts, stats.json

    # ------------------------------------------------------------------ jobs
    async def run(self, spec: JobSpec) -> Outcome:
        if self._closed:
            return Outcome(None, start=time.time(), end=time.time(), connection_failed=True, message="closed")
        job = _Job(spec, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._submitter()), asyncio.ensure_future(self._poller())]
        self._wake.set()
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:
            # halt now, Ctrl-C: the batch job must not outlive us
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)
            elif job.id:
                self._live.pop(job.id, None)
                await asyncio.shield(self._cancel([job.id]))
            raise

    # ------------------------------------------------------------ submitting
    async def _submitter(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(GATHER)
            backoff = 1.0
            while self._queue:
                wait = self._last_submit + 1.0 / self.spec.submit_rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                limit = await self._array_limit()
                first = self._queue[0].spec.timeout
                batch = [j for j in self._queue if j.spec.timeout == first][:limit]
                for j in batch:
                    self._queue.remove(j)
                refused = await self._submit(batch)
                if refused:
                    # a submit limit (MaxSubmitJobs, QOS): the jobs wait their turn, we wait longer
                    self._queue[:0] = batch
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, SUBMIT_RETRY_MAX)
                else:
                    backoff = 1.0

    async def _array_limit(self) -> int:
        if self._max_array is None:
            rc, out, _ = await slurm_cmd("scontrol", "show", "config")
            self.stats.calls["scontrol"] += 1
            m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M) if rc == 0 else None
            # indices run 0..MaxArraySize-1; MaxArraySize=0 means arrays are not allowed
            self._max_array = max(1, int(m.group(1))) if m else 1000
        return self._max_array

    def _script(self, batch: list[_Job]) -> str:
        lines = ["#!/bin/sh", f"# cmflow {self.job_name}: {len(batch)} job(s); array task i runs case i",
                 'case "${SLURM_ARRAY_TASK_ID:-0}" in']
        for i, j in enumerate(batch):
            lines.append(f"{i}) o={shlex.quote(str(j.spec.stdout.resolve()))} "
                         f"e={shlex.quote(str(j.spec.stderr.resolve()))} "
                         f"s={shlex.quote(str(_status_path(j.spec).resolve()))} c={shlex.quote(j.spec.command)} ;;")
        lines += ["*) exit 99 ;;", "esac", 'exec </dev/null >"$o" 2>"$e"']
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.host.env]
        if self.host.workdir:
            wd = self.host.workdir
            target = "~" + shlex.quote(wd[1:]) if wd.startswith("~") else shlex.quote(wd)
            lines.append(f"cd {target} || {{ echo 'cmflow: cannot cd to {wd}' >&2; exit 97; }}")
        t = batch[0].spec.timeout
        if t is not None:
            lines.append(f'timeout -k {TIMEOUT_GRACE} {max(t, 0.001):g} sh -c "$c"')
        else:
            lines.append('sh -c "$c"')
        # The command's exit status, as the job itself saw it, written whole (temp + rename):
        # sacct reads slurmdbd, which has been seen to say COMPLETED 0:0 for a job `timeout`
        # ended with 124. A command killed by a signal is killed again here with the same signal,
        # so Slurm records the signal as it would have with `exec`.
        lines += ['r=$?', 'printf "%s\\n" "$r" >"$s.tmp" && mv -f "$s.tmp" "$s"',
                  'if [ "$r" -gt 128 ] && [ "$r" -lt 160 ]; then ulimit -c 0; trap - $((r-128)); kill -$((r-128)) $$; fi',
                  'exit "$r"']
        return "\n".join(lines) + "\n"

    async def _submit(self, batch: list[_Job]) -> bool:
        """One sbatch for the batch; True when Slurm refused it for a limit (try again later)."""
        self._batch += 1
        folder = self._folder = batch[0].spec.stdout.parent.parent / "slurm"
        folder.mkdir(exist_ok=True)
        script = folder / f"batch-{self._batch}.sh"
        write_atomic(script, self._script(batch))
        argv = ["sbatch", "--parsable", f"--job-name={self.job_name}", "--output=/dev/null", "--error=/dev/null",
                "--no-requeue", "--ntasks=1", f"--chdir={Path.cwd()}"]
        t = batch[0].spec.timeout
        if self.spec.time:
            argv.append(f"--time={self.spec.time}")
        elif t is not None:
            argv.append(f"--time={math.ceil((t + TIMEOUT_GRACE) / 60) + 1}")
        if len(batch) > 1:
            argv.append(f"--array=0-{len(batch) - 1}")
        argv += [*self.spec.request_args(), str(script)]
        self._last_submit = time.monotonic()
        self.stats.first_submit = self.stats.first_submit or time.time()
        rc, out, err = await slurm_cmd(*argv)
        self.stats.calls["sbatch"] += 1
        self.stats.last_submit = time.time()
        if rc != 0:
            msg = _last_error(err)
            if re.search(r"limit|MaxSubmit|QOSMax|AssocMax|temporarily|try again|Socket timed out", msg, re.I):
                return True
            for j in batch:
                self._finish(j, Outcome(None, start=time.time(), end=time.time(), connection_failed=True,
                                        message=f"sbatch refused the job: {msg}"))
            return False
        job_id = out.strip().split(";")[0]
        self.stats.batches += 1
        self.stats.jobs += len(batch)
        now = time.time()
        stale = []
        for i, j in enumerate(batch):
            j.id = f"{job_id}_{i}" if len(batch) > 1 else job_id
            j.submitted = now
            if j.cancelled:
                stale.append(j.id)
            else:
                self._live[j.id] = j
        self._submitted.set()
        if stale:
            await self._cancel(stale)
        return False

    # -------------------------------------------------------------- tracking
    async def _poller(self) -> None:
        interval = self.spec.poll
        while True:
            if not self._live:
                self._submitted.clear()
                await self._submitted.wait()
                interval = self.spec.poll
            await asyncio.sleep(interval)
            if await self._poll():
                interval = self.spec.poll
            else:
                interval = min(interval * 1.5, max(self.spec.poll, MAX_POLL))

    async def _poll(self) -> bool:
        """One sacct call for every live job; True if any of them ended."""
        bases = sorted({i.split("_")[0] for i in self._live})
        if not bases:
            return False
        rc, out, err = await slurm_cmd("sacct", "-n", "-P", "-X", "-j", ",".join(bases),
                                       "--format=JobID,State,ExitCode,Start,End,NodeList")
        self.stats.calls["sacct"] += 1
        if rc != 0:
            if "accounting storage is disabled" in err.lower():
                for j in list(self._live.values()):
                    self._finish(j, Outcome(None, start=time.time(), end=time.time(), connection_failed=True,
                                            message="job mode needs Slurm accounting (sacct); use allocation mode"))
                self._live.clear()
            return False
        ended = False
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) < 6:
                continue
            jid, state, code, start, end, node = parts[:6]
            job = self._live.get(jid)
            state = state.split()[0] if state else ""
            if job is None or state in _ACTIVE or not state:
                continue
            del self._live[jid]
            ended = True
            if state in _LOST and job.lost < LOST_RETRIES:
                # the node's fault, not the job's: submit it again here rather than report a
                # lost connection, which counts against the host, and the host is the whole cluster
                job.lost += 1
                self.stats.lost.append({"seq": job.spec.seq, "job": jid, "state": state, "node": node})
                job.id = ""
                self._queue.append(job)
                self._wake.set()
                continue
            self._finish(job, self._outcome(job, state, code, start, end, node))
        return ended

    def _outcome(self, job: _Job, state: str, code: str, start: str, end: str, node: str) -> Outcome:
        t0, t1 = _epoch(start) or job.submitted, _epoch(end) or time.time()
        status, _, sig = code.partition(":")
        exit_status = int(status) if status.isdigit() else None
        signal = int(sig) if sig.isdigit() else 0
        said = _read_status(job.spec)
        if said is not None and state in ("COMPLETED", "FAILED"):
            # the job's own word on how its command ended wins over accounting's
            if said > 128 and (signal or exit_status == 0):
                exit_status, signal, state = None, said - 128, "FAILED"
            else:
                exit_status, signal = said, 0
                state = "COMPLETED" if said == 0 else "FAILED"
        out, err = _settle(job.spec.stdout), _settle(job.spec.stderr)
        ref = f"{job.id}@{node}" if node and node not in ("None", "(null)") else job.id
        base = dict(start=t0, end=t1, stdout_bytes=out, stderr_bytes=err, ref=ref)
        t = job.spec.timeout
        if state == "COMPLETED":
            return Outcome(exit_status or 0, **base)
        if state == "FAILED":
            # `timeout` exits 124 when it had to stop the command
            # (124: TERM sufficed; KILL after the grace shows as signal 9 or 137)
            if t is not None and (exit_status in (124, 137) or signal == 9) and t1 - t0 >= t - 1:
                return Outcome(None, 9, timed_out=True, **base)
            if exit_status == 0 and signal:
                return Outcome(None, signal, **base)
            return Outcome(exit_status, signal, **base)
        if state == "TIMEOUT":
            return Outcome(None, 9, timed_out=True, message="Slurm TIMEOUT: the job reached its time limit", **base)
        if state in _LOST:
            return Outcome(None, connection_failed=True,
                           message=f"Slurm {state}" + (f" on {node}" if node else "") + f" (job {job.id})", **base)
        if state == "OUT_OF_MEMORY":
            return Outcome(None, 9, message="Slurm OUT_OF_MEMORY: the job exceeded its memory limit", **base)
        return Outcome(None, signal or 9, message=f"Slurm {state}", **base)

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        if not job.future.done():
            job.future.set_result(outcome)

    # ------------------------------------------------------------ cancelling
    async def _cancel(self, ids: list[str]) -> None:
        """scancel these jobs, joined with every other cancellation of the same moment in one call."""
        self._to_cancel.update(ids)
        if self._canceller is None or self._canceller.done():
            self._canceller = asyncio.ensure_future(self._cancel_all())
        await asyncio.shield(self._canceller)

    async def _cancel_all(self) -> None:
        await asyncio.sleep(0)   # the other jobs cancelled with this one join
        while self._to_cancel:
            ids = sorted(self._to_cancel)
            self._to_cancel.clear()
            await slurm_cmd("scancel", "--quiet", *ids)
            self.stats.calls["scancel"] += 1

    async def aclose(self) -> None:
        self._closed = True
        for t in self._tasks:
            t.cancel()
        left = list(self._live) + [j.id for j in self._queue if j.id]
        self._live.clear()
        self._queue.clear()
        if left:
            await self._cancel(left)
        if self._folder is not None:
            # what the run cost the scheduler, for the user and the benchmark
            write_atomic(self._folder / f"stats-{self.host.name}.json", json.dumps(self.stats.to_json()) + "\n")


def _epoch(stamp: str) -> float | None:
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _status_path(spec: JobSpec) -> Path:
    return spec.stdout.with_name(spec.stdout.name.removesuffix(".out") + ".status")


def _read_status(spec: JobSpec) -> int | None:
    """The exit status the batch script wrote for its command (None: it never got there,
    e.g. Slurm killed it); the file is removed, it was only for us."""
    path = _status_path(spec)
    try:
        text = path.read_text()
        os.unlink(path)
    except OSError:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _settle(path: Path) -> int:
    """A job's output as the executor expects it: its size; an empty file is removed."""
    try:
        size = path.stat().st_size
    except OSError:
        return 0
    if not size:
        try:
            os.unlink(path)
        except OSError:
            pass
    return size
