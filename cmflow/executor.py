"""Evaluate a Plan: memoised jobs, eager ordered ``+``, failure and halt policy.

Structured concurrency: every job and every node evaluation is a task of one
``asyncio.TaskGroup``; nothing outlives ``Executor.run``. A node evaluation
never raises for a failed job, it returns a ``Failure``, so independent work
carries on (as ``make -k`` does) unless the halt policy says otherwise.
Cancellation reaches each transport, which kills its job's process tree.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Mapping, Protocol, Sequence

from .hosts import Inventory
from .journal import Journal, KeyParts, Keys, job_inputs
from .plan import Job, JobRef, Plan, PlanNode, PPar, PSeq, PSum
from .resume import ResumeIndex, adopt
from .runlog import JobRecord, RunLog
from .scheduler import Closed, NoHost, Scheduler
from .transport import JobSpec, Outcome, Transport

Halt = Literal["never", "soon", "now"]
HOST_DOWN_AFTER = 3   # consecutive connection failures before a host is marked down


@dataclass(frozen=True)
class RunOptions:
    jobs: int | None = None          # global cap on jobs at once
    timeout: float | None = None     # default per-job timeout, seconds
    retries: int = 0                 # default re-runs after a command failure
    halt: Halt = "never"
    deep: bool = False               # keys hash input files' content, not size and mtime


@dataclass(frozen=True)
class Ok:
    value: Any


@dataclass(frozen=True)
class Failure:
    reason: str
    job: Job | None = None
    host: str | None = None
    exit_status: int | None = None
    stderr_tail: str = ""
    cause: bool = True   # False for "skipped because something else failed"


Result = Ok | Failure


class Observer(Protocol):
    def job_cached(self, job: Job) -> None: ...
    def job_started(self, job: Job, host: str, attempt: int) -> None: ...
    def job_ended(self, record: JobRecord, final: bool, ok: bool) -> None: ...
    def host_down(self, host: str, reason: str) -> None: ...


@dataclass
class RunResult:
    ok: bool
    value: Any = None
    failures: list[Failure] = field(default_factory=list)
    halted: bool = False
    cancelled: bool = False
    jobs_run: int = 0
    jobs_cached: int = 0
    down_hosts: list[str] = field(default_factory=list)


class _HaltNow(Exception):
    pass


def read_value(text: str, parse: Any) -> Any:
    """A job's value from its stdout: JSON where it parses, else the text (or the task's reading)."""
    text = text.rstrip()
    match parse:
        case "auto":
            if text[:1] in "-0123456789[{\"tfn" and text:
                try:
                    return json.loads(text)
                except ValueError:
                    pass
            return text
        case "json":
            return json.loads(text)
        case "text":
            return text
        case "lines":
            return text.splitlines()
        case fn if callable(fn):
            return fn(text)
    raise ValueError(f"unknown parse option {parse!r}")


def _tail(path: Path, lines: int = 5, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(size - limit, 0))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.rstrip().splitlines()[-lines:])


def _describe(node: PlanNode, filename: str) -> str:
    if isinstance(node, JobRef):
        return f"{node.job.label} at {filename}:{node.pos.line}:{node.pos.column}"
    return f"the expression at {filename}:{node.pos.line}:{node.pos.column}"


class Executor:
    def __init__(self, plan: Plan, inventory: Inventory, transports: Mapping[str, Transport], log: RunLog,
                 options: RunOptions = RunOptions(), observers: Sequence[Observer] = (),
                 journal: Journal | None = None, resume: ResumeIndex | None = None):
        self.plan = plan
        self.inventory = inventory
        self.transports = transports
        self.log = log
        self.options = options
        self.observers = list(observers)
        self.scheduler = Scheduler(inventory.hosts, options.jobs)
        self._tasks: dict[Any, asyncio.Task[Result]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._halt_now = asyncio.Event()
        self._failures: list[Failure] = []
        self._conn_failures: Counter[str] = Counter()
        self.jobs_run = 0
        self.jobs_cached = 0
        self.journal = journal
        self.resume = resume
        self.keys = Keys(options.deep)

    # ---------------------------------------------------------------- driver
    async def run(self) -> RunResult:
        if self.plan.root is None:
            return RunResult(True, None)
        result: Result | None = None
        halted = False
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                root = self._eval(self.plan.root)
                halt = tg.create_task(self._halt_now.wait())
                await asyncio.wait([root, halt], return_when=asyncio.FIRST_COMPLETED)
                if self._halt_now.is_set():
                    raise _HaltNow()   # the TaskGroup cancels every job; transports kill them
                halt.cancel()
                result = root.result()
        except* _HaltNow:
            halted = True
        failures = [f for f in self._failures if f.cause]
        if isinstance(result, Failure) and result.cause and result not in failures:
            failures.append(result)
        ok = isinstance(result, Ok) and not failures
        return RunResult(ok, result.value if isinstance(result, Ok) else None, failures,
                         halted or self.scheduler.closed, False, self.jobs_run, self.jobs_cached,
                         sorted(self.scheduler.down))

    def _spawn(self, key: Any, make: Callable[[], Awaitable[Result]]) -> asyncio.Task[Result]:
        task = self._tasks.get(key)
        if task is None:
            assert self._tg is not None
            task = self._tasks[key] = self._tg.create_task(make())  # type: ignore[arg-type]
        return task

    def _eval(self, node: PlanNode) -> asyncio.Task[Result]:
        """The one evaluation of a node (memoised: shared nodes and repeated jobs run once)."""
        match node:
            case JobRef(job):
                return self._spawn(("job", job.id), lambda: self._job(job))
            case PSeq():
                return self._spawn(id(node), lambda: self._seq(node))
            case PPar():
                return self._spawn(id(node), lambda: self._par(node))
            case PSum():
                return self._spawn(id(node), lambda: self._sum(node))
        raise TypeError(node)

    # ------------------------------------------------------------ structure
    async def _seq(self, node: PSeq) -> Result:
        result: Result = Ok(None)
        for i, item in enumerate(node.items):
            result = await self._eval(item)
            if isinstance(result, Failure):
                rest = len(node.items) - i - 1
                if rest:
                    return Failure(f"{rest} later step(s) of {_describe(node, self.plan.filename)} skipped: "
                                   f"{result.reason}", result.job, cause=False)
                return Failure(result.reason, result.job, cause=False)
        return result

    async def _completions(self, node: PPar | PSum):
        """(index, result) pairs in the order the operands finish."""
        tasks = [self._eval(item) for item in node.items]
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i, t in enumerate(tasks):
            t.add_done_callback(lambda _t, i=i: queue.put_nowait(i))
        for _ in tasks:
            i = await queue.get()
            yield i, tasks[i].result()

    async def _par(self, node: PPar) -> Result:
        values: list[Any] = [None] * len(node.items)
        async for i, r in self._completions(node):
            if isinstance(r, Failure):
                return Failure(r.reason, r.job, cause=False)
            values[i] = r.value
        return Ok(values)

    async def _sum(self, node: PSum) -> Result:
        # Eager, order-preserving reduction: runs of finished neighbours are
        # combined as soon as both sides exist, so the result equals the
        # left-to-right fold whatever order the operands finish in.
        starts: dict[int, tuple[int, Any]] = {}   # start index -> (end index, value)
        ends: dict[int, int] = {}                 # end index -> start index
        async for i, r in self._completions(node):
            if isinstance(r, Failure):
                return Failure(r.reason, r.job, cause=False)
            lo, hi, value = i, i, r.value
            if i - 1 in ends:
                lo = ends.pop(i - 1)
                _, left = starts.pop(lo)
                value = self._add(node, left, (lo, i - 1), value, (i, i))
            if isinstance(value, Failure):
                return value
            if i + 1 in starts:
                hi, right = starts.pop(i + 1)
                del ends[hi]
                value = self._add(node, value, (lo, i), right, (i + 1, hi))
                if isinstance(value, Failure):
                    return value
            starts[lo] = (hi, value)
            ends[hi] = lo
        return Ok(starts[0][1])

    def _add(self, node: PSum, left: Any, lspan: tuple[int, int], right: Any, rspan: tuple[int, int]) -> Any:
        try:
            return left + right
        except TypeError:
            def side(span: tuple[int, int], value: Any) -> str:
                items = node.items[span[0]:span[1] + 1]
                what = _describe(items[0], self.plan.filename) if len(items) == 1 else \
                    f"the sum of {_describe(items[0], self.plan.filename)} .. {_describe(items[-1], self.plan.filename)}"
                return f"{type(value).__name__} {_short(value)} ({what})"
            failure = Failure(f"cannot add {side(lspan, left)} and {side(rspan, right)}")
            self._failures.append(failure)
            return failure

    # ------------------------------------------------------------------ jobs
    def _emit(self, name: str, *args: Any) -> None:
        for o in self.observers:
            getattr(o, name)(*args)

    async def _job(self, job: Job) -> Result:
        retries = job.options.retries if job.options.retries is not None else self.options.retries
        timeout = job.options.timeout if job.options.timeout is not None else self.options.timeout
        try:
            hosts = self.inventory.resolve(job.target)
        except KeyError as e:
            return self._fail(Failure(f"unknown host {e}", job))
        eligible = tuple(h.name for h in hosts)
        parts = self.keys.parts(job, hosts, job_inputs(job))
        key = parts.key()
        if self.resume is not None:
            reused = self._reuse(job, parts, key)
            if reused is not None:
                return reused
        ready = time.time()
        command_failures = conn_failures = attempt = 0
        avoid: set[str] = set()
        while True:
            attempt += 1
            try:
                host = await self.scheduler.acquire(eligible, frozenset(avoid))
            except Closed:
                return Failure(f"{job.label} not started: the run was halted", job, cause=False)
            except NoHost:
                return self._fail(Failure(f"no host left to run it: {', '.join(eligible)} "
                                          f"{'is' if len(eligible) == 1 else 'are all'} down", job))
            out, err = self.log.paths(job.id, attempt)
            self._emit("job_started", job, host, attempt)
            started = time.time()
            if self.journal is not None:
                self.journal.started(job.id, key, host, attempt, ready, started)
            try:
                outcome = await self.transports[host].run(JobSpec(job.id, job.command, out, err, timeout))
            except asyncio.CancelledError:
                # killed by halt now or a signal: the log still says so
                self._record(job, host, attempt, Outcome(None, signal.SIGTERM, started, time.time()), out, err,
                             Failure("cancelled", job, host), True, killed=True, keyed=(parts, key, ready))
                raise
            finally:
                self.scheduler.release(host)
            self.jobs_run += 1
            result = self._result_of(job, host, outcome, out, err)
            final = True
            if outcome.connection_failed:
                conn_failures += 1
                self._conn_failures[host] += 1
                if self._conn_failures[host] >= HOST_DOWN_AFTER and host not in self.scheduler.down:
                    self.scheduler.mark_down(host)
                    self._emit("host_down", host, outcome.message)
                avoid.add(host)
                final = conn_failures > max(2, len(eligible) + 1)
            else:
                self._conn_failures[host] = 0
                if isinstance(result, Failure):
                    command_failures += 1
                    final = command_failures > retries
            self._record(job, host, attempt, outcome, out, err, result, final, keyed=(parts, key, ready))
            if final or isinstance(result, Ok):
                return result if isinstance(result, Ok) else self._fail(result)
            if outcome.connection_failed and conn_failures > 1:
                # backoff between reconnect attempts; failover needs none
                await asyncio.sleep(min(0.2 * 2 ** (conn_failures - 2), 5.0))

    def _result_of(self, job: Job, host: str, outcome: Outcome, out: Path, err: Path) -> Result:
        def failure(reason: str) -> Failure:
            return Failure(reason, job, host, outcome.exit_status, _tail(err) if outcome.stderr_bytes else "")

        if outcome.connection_failed:
            return failure(f"connection failed: {outcome.message}")
        # a transport may say more (Slurm: "OUT_OF_MEMORY", "walltime limit")
        more = f" ({outcome.message})" if outcome.message else ""
        if outcome.timed_out:
            return failure(f"timed out after {outcome.end - outcome.start:.1f}s{more}")
        if outcome.exit_status is None and outcome.message and not outcome.signal:
            return failure(outcome.message)     # the transport could not start it (e.g. no workdir)
        if outcome.exit_status is None:
            return failure(f"killed by signal {outcome.signal}{more}")
        if outcome.exit_status != 0:
            return failure(f"exit status {outcome.exit_status}{more}")
        try:
            text = out.read_bytes().decode("utf-8", "replace") if outcome.stdout_bytes else ""
            return Ok(read_value(text, job.options.parse))
        except (Exception, SystemExit, GeneratorExit) as e:  # a task's own parse= callable may raise anything
            return failure(f"cannot read its value ({job.options.parse if isinstance(job.options.parse, str) else 'parse'}): "
                           f"{type(e).__name__}: {e}")

    def _reuse(self, job: Job, parts: KeyParts, key: str) -> Result | None:
        """The earlier run's result for this key, adopted into this run; None if the job must run."""
        assert self.resume is not None
        decision = self.resume.decide(job, parts, key, has_outputs=bool(getattr(job, "outputs", ())))
        if not decision.cached or decision.entry is None:
            return None
        doc = decision.entry.doc
        out, err = self.log.paths(job.id, 0)
        try:
            out_p, err_p = adopt(decision.entry, self.log.dir, out, err)
            value = read_value(out_p.read_bytes().decode("utf-8", "replace") if out_p else "", job.options.parse)
        except Exception:   # noqa: BLE001 - a vanished file or a parse= that now fails: run it instead
            return None
        if self.journal is not None:
            # the reused result becomes this run's own, so a resume of this run finds it too
            self.journal.cached({
                "seq": job.id, "key": key, "parts": parts.to_json(), "task": job.task, "label": job.label,
                "where": job.where, "host": doc.get("host"), "attempt": doc.get("attempt"),
                "start": doc.get("start"), "end": doc.get("end"), "ok": True,
                "stdout": f"{out_p.parent.name}/{out_p.name}" if out_p else "",
                "stderr": f"{err_p.parent.name}/{err_p.name}" if err_p else "",
                "stdout_bytes": doc.get("stdout_bytes", 0), "stderr_bytes": doc.get("stderr_bytes", 0),
                "from": str(decision.entry.run_dir), "from_seq": doc.get("seq")})
        # the joblog and jobs.jsonl show it as the earlier run ran it, with attempt 0 meaning "reused":
        # GNU parallel's --resume-failed must skip it as well
        self.log.record(JobRecord(
            job.id, job.task, job.label, list(job.args), dict(job.kwargs), job.where, str(doc.get("host", "")), 0,
            float(doc.get("start") or 0), float(doc.get("end") or 0), 0, 0, False, False, job.command,
            str(out_p or ""), str(err_p or ""), int(doc.get("stdout_bytes") or 0), value))
        self.jobs_cached += 1
        self._emit("job_cached", job)
        return Ok(value)

    def _attempts(self, job: Job) -> int:
        return 1 + (job.options.retries if job.options.retries is not None else self.options.retries)

    def _record(self, job: Job, host: str, attempt: int, outcome: Outcome, out: Path, err: Path,
                result: Result, final: bool, killed: bool = False,
                keyed: tuple[KeyParts, str, float] | None = None) -> None:
        rec = JobRecord(
            job.id, job.task, job.label, list(job.args), dict(job.kwargs), job.where, host, attempt, outcome.start, outcome.end,
            outcome.exit_status, outcome.signal, outcome.timed_out, outcome.connection_failed, job.command,
            str(out) if outcome.stdout_bytes else "", str(err) if outcome.stderr_bytes else "",
            outcome.stdout_bytes, result.value if isinstance(result, Ok) else None,
            result.reason if isinstance(result, Failure) else "", killed, outcome.ref, self._attempts(job))
        # the joblog keeps a job's last attempt only: GNU parallel's --retry-failed reads one line per job
        self.log.record(rec, final or isinstance(result, Ok))
        if self.journal is not None and keyed is not None:
            parts, key, ready = keyed
            self.journal.ended({
                "seq": job.id, "key": key, "parts": parts.to_json(), "task": job.task, "label": job.label,
                "where": job.where, "host": host, "attempt": attempt, "ready": round(ready, 6),
                "start": round(outcome.start, 6), "end": round(outcome.end, 6), "ok": isinstance(result, Ok),
                "final": final, "exit": outcome.exit_status, "signal": outcome.signal,
                "timed_out": outcome.timed_out, "connection_failed": outcome.connection_failed,
                "error": rec.error, "stdout": f"jobs/{out.name}" if outcome.stdout_bytes else "",
                "stderr": f"jobs/{err.name}" if outcome.stderr_bytes else "",
                "stdout_bytes": outcome.stdout_bytes, "stderr_bytes": outcome.stderr_bytes})
        self._emit("job_ended", rec, final, isinstance(result, Ok))

    def _fail(self, failure: Failure) -> Failure:
        self._failures.append(failure)
        if self.options.halt == "now":
            self.scheduler.close()
            self._halt_now.set()
        elif self.options.halt == "soon":
            self.scheduler.close()
        return failure


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
