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
from typing import Any, Callable, Mapping, Protocol, Sequence

from . import values
from .files.mover import FileMover, Moved, safe_name
from .files.runtime import job_files, stage_arguments
from .files.spec import Command, SpecError
from .files.value import Files
from . import _gc
from .hosts import Host, Inventory
from .journal import Journal, KeyParts, Keys, job_inputs
from .options import RunOptions  # noqa: F401 - the API and tests import it from here too
from .plan import Deferred, Job, JobRef, Local, Plan, PlanNode, PPar, PSeq, PSum, fill
from .resume import ResumeIndex, adopt
from .runlog import JobRecord, RunLog
from .scheduler import Closed, Eligible, Scheduler
from .tasks import user_frames
from .transport import JobSpec, Outcome, Transport

# A stdout larger than this is not read into a value (parse "auto"/"text"): the value is
# {"stdout_file": PATH, "bytes": N}, and the output is read from that file (README).
VALUE_LIMIT = 1 << 20
HOST_DOWN_AFTER = 3   # consecutive connection failures before a host is marked down
# USER_CODE: a user's def, @local function, fold step or parse= called during a run may raise anything:
# SystemExit, GeneratorExit, a bare BaseException, even KeyboardInterrupt (a real Ctrl-C reaches a run
# as a signal, handled by run_sync, never as an exception out of a def). Each is that code's error: what
# needs its value fails, independent work carries on; none may end cmflow (exit 0 silently, or a traceback).


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
_SILENT = Ok("")   # the value of a job that succeeded with an empty stdout (read_value("", "auto"))


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


def stdout_value(out: Path, size: int, parse: Any) -> Any:
    """The value of a job whose stdout (`size` bytes) is in file `out`."""
    if size > VALUE_LIMIT and parse in ("auto", "text"):
        # stored once, in its file: records, summary and sums get a reference, not a copy
        return {"stdout_file": str(out), "bytes": size}
    return read_value(out.read_bytes().decode("utf-8", "replace") if size else "", parse)


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0    # nothing written: no file


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
    if isinstance(node, (Deferred, Local)):
        return f"{node.label} at {node.where}"
    return f"the expression at {filename}:{node.pos.line}:{node.pos.column}"


_NO_CALLBACK = ()


class _Result:
    """The result to come of a node or a job: a Future without the event loop.

    Callbacks run as soon as the result is set, not in a later turn of the loop
    (an asyncio Future costs a call_soon, a Handle and a loop turn per job, and
    more memory per pending job). A chain of results that are set at once (a
    long ``;`` of reused jobs) must not recurse without bound: past a depth, the
    rest runs from the loop instead.
    """

    __slots__ = ("value", "callbacks")
    depth = 0          # callbacks running inside callbacks right now (one loop, one thread)

    def __init__(self) -> None:
        self.value: Result | None = None
        # None once done; else no callback (), one callback, or a list of them: most results
        # have exactly one waiter, and a list for it would be most of a pending job's memory
        self.callbacks: Any = _NO_CALLBACK

    def done(self) -> bool:
        return self.value is not None

    def result(self) -> Result:
        assert self.value is not None
        return self.value

    def add_done_callback(self, fn: Callable[["_Result"], None]) -> None:
        cbs = self.callbacks
        if cbs is None:
            self._call((fn,))
        elif cbs is _NO_CALLBACK:
            self.callbacks = fn
        elif type(cbs) is list:
            cbs.append(fn)
        else:
            self.callbacks = [cbs, fn]

    def set_result(self, result: Result) -> None:
        cbs = self.callbacks
        if cbs is None:
            raise asyncio.InvalidStateError("result already set")
        self.callbacks, self.value = None, result
        if cbs is not _NO_CALLBACK:
            self._call(cbs if type(cbs) is list else (cbs,))

    def _call(self, callbacks: list[Callable[["_Result"], None]]) -> None:
        if _Result.depth >= 40:
            call_soon = asyncio.get_running_loop().call_soon
            for fn in callbacks:
                call_soon(fn, self)
            return
        _Result.depth += 1
        try:
            for fn in callbacks:
                fn(self)
        finally:
            _Result.depth -= 1


_NONE: frozenset[str] = frozenset()


class _JobRun(_Result):
    """A job from its first request for a slot to its final result, which it holds itself.

    While it waits it is this object in a scheduler queue (a scheduler Request
    in all but its base class: one object per pending job, not two), not a Task:
    a Task exists only for an attempt that holds a slot.
    """

    __slots__ = ("seq", "base", "cancelled",     # what the scheduler reads and writes (scheduler.Request)
                 "ex", "job", "attempt", "command_failures", "conn_failures", "avoid", "ready", "keyed")

    def __init__(self, ex: "Executor", job: Job):
        self.value = None
        self.callbacks = _NO_CALLBACK
        self.seq = 0
        self.base: Eligible | None = None
        self.cancelled = False
        self.ex = ex
        self.job = job
        self.attempt = self.command_failures = self.conn_failures = 0
        self.avoid: frozenset[str] = _NONE
        self.ready = 0.0                                  # when it asked for a slot first
        self.keyed: tuple[KeyParts, str] | None = None    # its resume key, once known

    def granted(self, host: str) -> None:
        assert self.ex._tg is not None
        self.ex._tg.create_task(self.ex._slot(self, host))

    def refused(self, error: Exception) -> None:
        job = self.job
        if isinstance(error, Closed):
            result = Failure(f"{job.label} not started: the run was halted", job, cause=False)
        else:
            names = self.base.names if self.base else ()
            result = self.ex._fail(Failure(f"no host left to run it: {', '.join(names)} "
                                           f"{'is' if len(names) == 1 else 'are all'} down", job))
        if not self.done():
            self.finish(result)

    def finish(self, result: Result) -> None:
        """The job's final result. This object stays as the job's memo entry: it drops what only a
        running job needs (its resume key parts are most of its size)."""
        self.keyed = None
        self.base = None
        self.set_result(result)

    def cancel(self) -> None:
        self.cancelled = True


class _Then:
    """A done-callback: fn(i, result). A slotted object, not a closure: one waits for every pending job."""

    __slots__ = ("ex", "fn", "i")

    def __init__(self, ex: "Executor", fn: Callable[[int, Result], None], i: int):
        self.ex, self.fn, self.i = ex, fn, i

    def __call__(self, fut: _Result) -> None:
        try:
            self.fn(self.i, fut.value)
        except BaseException as e:  # noqa: BLE001 - a bug in evaluation: handed to run(), which re-raises it
            self.ex._bug(e)


class Executor:
    def __init__(self, plan: Plan, inventory: Inventory, transports: Mapping[str, Transport], log: RunLog,
                 options: RunOptions = RunOptions(), observers: Sequence[Observer] = (),
                 journal: Journal | None = None, resume: ResumeIndex | None = None, files: FileMover | None = None):
        self.plan = plan
        self.files = files   # data movement for jobs that declare inputs or outputs (cmflow/files)
        self.inventory = inventory
        self.transports = transports
        self.log = log
        self.options = options
        self.observers = list(observers)
        # the two events of every job, bound once (not looked up by name per job)
        self._on_started = [o.job_started for o in self.observers]
        self._on_ended = [o.job_ended for o in self.observers]
        self.scheduler = Scheduler(inventory.hosts, options.jobs)
        self._jobs: dict[int, _Result] = {}    # job id -> its result (memo)
        self._nodes: dict[Any, _Result] = {}   # id(node) -> its result (memo)
        self._targets: dict[str | None, tuple[Eligible, tuple[Host, ...]] | str] = {}  # target -> class, hosts
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fatal: asyncio.Future | None = None
        self._depth = 0
        self._halt_now = asyncio.Event()
        self._failures: list[Failure] = []
        self._conn_failures: Counter[str] = Counter()
        self.jobs_run = 0
        self.jobs_cached = 0
        self._next_job_id = len(plan.jobs)   # deferred jobs are numbered after the plan's
        self._static: dict[tuple, Job] | None = None
        self._signatures: dict[int, Any] = {}    # id(def) -> its signature (the plan keeps the defs alive)
        self.journal = journal
        self.resume = resume
        self._phase_marks: dict[tuple[int, int], list[tuple[str, float]]] = {}   # (job, attempt) -> (state, time)
        self.keys = Keys(options.deep, log.dir)

    # ---------------------------------------------------------------- driver
    async def run(self) -> RunResult:
        if self.plan.root is None:
            return RunResult(True, None)
        with _gc.relaxed():
            return await self._run(self.plan.root)

    async def _run(self, root_node: PlanNode) -> RunResult:
        result: Result | None = None
        halted = False
        self._loop = asyncio.get_running_loop()
        self._fatal = self._loop.create_future()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                root = self._loop.create_future()
                self._eval(root_node).add_done_callback(lambda r: root.done() or root.set_result(r.value))
                halt = tg.create_task(self._halt_now.wait())
                await asyncio.wait([root, halt, self._fatal], return_when=asyncio.FIRST_COMPLETED)
                if self._fatal.done():
                    self._fatal.result()   # a bug in evaluation: surface it, the TaskGroup cancels every job
                if self._halt_now.is_set():
                    raise _HaltNow()   # the TaskGroup cancels every job; transports kill them
                halt.cancel()
                result = root.result()
        except* _HaltNow:
            halted = True
        failures = self.failures()
        if isinstance(result, Failure) and result.cause and result not in failures:
            failures.append(result)
        ok = isinstance(result, Ok) and not failures
        return RunResult(ok, result.value if isinstance(result, Ok) else None, failures,
                         halted or self.scheduler.closed, False, self.jobs_run, self.jobs_cached,
                         sorted(self.scheduler.down))

    def failures(self) -> list[Failure]:
        """The failures so far that are causes (not "skipped because another failed")."""
        return [f for f in self._failures if f.cause]

    def _future(self) -> _Result:
        return _Result()

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run an evaluation callback; an exception in one is a bug that ends the run, not a log line."""
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to run(), which re-raises it
            self._bug(e)

    def _bug(self, e: BaseException) -> None:
        if self._fatal is not None and not self._fatal.done():
            self._fatal.set_exception(e)

    def _memo(self, node: PlanNode, start: Callable[[Any, _Result], None]) -> _Result:
        """The memoised evaluation of a node written as callbacks (no Task)."""
        fut = self._nodes.get(id(node))
        if fut is None:
            fut = self._nodes[id(node)] = self._future()
            if self._depth < 100:
                self._depth += 1
                try:
                    start(node, fut)
                finally:
                    self._depth -= 1
            else:   # a deeply nested plan: go on in a later loop turn instead of recursing
                assert self._loop is not None
                self._loop.call_soon(self._guarded, start, node, fut)
        return fut

    def _eval(self, node: PlanNode) -> _Result:
        """The one evaluation of a node (memoised: shared nodes and repeated jobs run once)."""
        if type(node) is JobRef:   # by far the most common node: no pattern match for it
            job = node.job
            fut = self._jobs.get(job.id)
            return fut if fut is not None else self._submit(job)
        match node:
            case JobRef(job):
                fut = self._jobs.get(job.id)
                return fut if fut is not None else self._submit(job)
            case PSeq():
                return self._memo(node, self._seq)
            case PPar():
                return self._memo(node, self._par)
            case PSum():
                return self._memo(node, self._sum)
            case Deferred():
                return self._memo(node, self._deferred)
            case Local():
                return self._memo(node, self._local)
        raise TypeError(node)

    def _then(self, fut: _Result, fn: Callable[[int, Result], None], i: int) -> None:
        """Call fn(i, result) when fut has its result (never if the run ends first)."""
        fut.add_done_callback(_Then(self, fn, i))

    # ------------------------------------------------------------ structure
    def _seq(self, node: PSeq, out: _Result) -> None:
        items = node.items

        def step(i: int, result: Result) -> None:
            if isinstance(result, Failure):
                rest = len(items) - i - 1
                if rest:
                    out.set_result(Failure(f"{rest} later step(s) of {_describe(node, self.plan.filename)} skipped: "
                                           f"{result.reason}", result.job, cause=False))
                else:
                    out.set_result(Failure(result.reason, result.job, cause=False))
            elif i + 1 < len(items):
                self._then(self._eval(items[i + 1]), step, i + 1)
            else:
                out.set_result(result)

        if items:
            self._then(self._eval(items[0]), step, 0)
        else:
            out.set_result(Ok(None))

    def _par(self, node: PPar, out: _Result) -> None:
        values: list[Any] = [None] * len(node.items)
        left = [len(node.items)]

        def item_done(i: int, r: Result) -> None:
            if out.done():
                return
            if isinstance(r, Failure):
                out.set_result(Failure(r.reason, r.job, cause=False))
                return
            values[i] = r.value
            left[0] -= 1
            if not left[0]:
                out.set_result(Ok(values))

        if not node.items:
            out.set_result(Ok(values))
        for i, item in enumerate(node.items):
            self._then(self._eval(item), item_done, i)

    def _sum(self, node: PSum, out: _Result) -> None:
        # Eager, order-preserving reduction: runs of finished neighbours are
        # combined as soon as both sides exist, so the result equals the
        # left-to-right fold whatever order the operands finish in.
        starts: dict[int, tuple[int, Any]] = {}   # start index -> (end index, value)
        ends: dict[int, int] = {}                 # end index -> start index
        left = [len(node.items)]

        def item_done(i: int, r: Result) -> None:
            if out.done():
                return
            if isinstance(r, Failure):
                out.set_result(Failure(r.reason, r.job, cause=False))
                return
            lo, hi, value = i, i, r.value
            if i - 1 in ends:
                lo = ends.pop(i - 1)
                _, lvalue = starts.pop(lo)
                value = self._add(node, lvalue, (lo, i - 1), value, (i, i))
                if isinstance(value, Failure):
                    out.set_result(value)
                    return
            if i + 1 in starts:
                hi, right = starts.pop(i + 1)
                del ends[hi]
                value = self._add(node, value, (lo, i), right, (i + 1, hi))
                if isinstance(value, Failure):
                    out.set_result(value)
                    return
            starts[lo] = (hi, value)
            ends[hi] = lo
            left[0] -= 1
            if not left[0]:
                out.set_result(Ok(starts[0][1]))

        if not node.items:
            out.set_result(Ok(None))
        for i, item in enumerate(node.items):
            self._then(self._eval(item), item_done, i)

    def _add(self, node: PSum, left: Any, lspan: tuple[int, int], right: Any, rspan: tuple[int, int]) -> Any:
        if node.fn is not None:   # fold(f, ...): the user's step, which may raise anything
            try:
                return node.fn(left, right)
            except BaseException as e:  # noqa: BLE001 - see USER_CODE
                return self._fail(Failure(f"{node.fn_name}({_short(left)}, {_short(right)}) in fold at "
                                          f"{self.plan.filename}:{node.pos.line}:{node.pos.column} raised "
                                          f"{type(e).__name__}: {e}" + _frames(e, "the function's own frames")))
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

    # --------------------------------------------------- run-time arguments
    def _inputs(self, node: Deferred | Local, out: _Result,
                then: Callable[[list[Any]], None]) -> None:
        """Evaluate a call's run-time arguments at once (as ``|``); ``then(values)`` when all
        have values. A failed argument skips the call: ``out`` gets a Failure that is not a cause."""
        got: list[Any] = [None] * len(node.inputs)
        left = [len(node.inputs)]

        def item_done(i: int, r: Result) -> None:
            if out.done():
                return
            if isinstance(r, Failure):
                out.set_result(Failure(f"{node.label} at {node.where} skipped: {r.reason}", r.job, cause=False))
                return
            got[i] = r.value
            left[0] -= 1
            if not left[0]:
                then(got)

        if not node.inputs:
            then(got)
        for i, item in enumerate(node.inputs):
            self._then(self._eval(item), item_done, i)

    def _deferred(self, node: Deferred, out: _Result) -> None:
        def ready(got: list[Any]) -> None:
            args, kwargs = fill(node, got)
            # memoised on the values: report(x) runs once per distinct value of x, and not
            # again if the plan already has that very call (twice(sq(3)) and twice(9))
            key = ("call", id(node.fn), self._invocation(node.fn, args, kwargs.items()), node.target)
            fut = self._nodes.get(key)
            if fut is None:
                static = self._static_calls().get(key)
                fut = self._nodes[key] = self._eval(JobRef(static)) if static is not None else \
                    self._build_and_submit(node, args, kwargs)
            self._then(fut, lambda _i, r: out.set_result(r), 0)   # _then passes (index, result)

        self._inputs(node, out, ready)

    def _static_calls(self) -> dict[tuple, Job]:
        """The plan's jobs by the key a deferred call with the same values would have (made once, lazily)."""
        if self._static is None:
            self._static = {("call", id(j.fn), self._invocation(j.fn, j.args, j.kwargs), j.target): j
                            for j in self.plan.jobs if j.fn is not None}
        return self._static

    def _invocation(self, fn: Callable, args: Sequence[Any], kwargs: Any) -> tuple:
        """A call's arguments keyed as the compiler keys them: bound to the def's signature."""
        from .compiler import _signature_of, invocation_key

        if id(fn) not in self._signatures:
            self._signatures[id(fn)] = _signature_of(fn)
        return invocation_key(self._signatures[id(fn)], args, list(kwargs))

    def _build_and_submit(self, node: Deferred, args: list[Any], kwargs: dict[str, Any]) -> _Result:
        """Call the def with the values to build the command, then queue the job as any other.

        Files values among the arguments become the job's inputs; the def sees the names
        they get in its work directory (cmflow/files/runtime.py)."""
        self._next_job_id += 1
        args, kwargs, staged = stage_arguments(args, kwargs)
        job = Job(self._next_job_id, node.task, tuple(args), tuple(kwargs.items()), node.target, "",
                  node.options, node.filename, node.pos, None, node.fn)
        try:
            built = node.fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - see USER_CODE
            failure = Failure(f"task '{node.task}' raised {type(e).__name__}: {e}" + _frames(e), job)
        else:
            if isinstance(built, (str, Command)):
                try:
                    command, files = job_files(built, node.options, Path(node.base), staged)
                except SpecError as e:
                    failure = Failure(f"task '{node.task}': {e}", job)
                else:
                    return self._submit(Job(job.id, job.task, job.args, job.kwargs, job.target, command,
                                            job.options, job.filename, job.pos, files, node.fn))
            else:
                failure = Failure(f"task '{node.task}' returned {type(built).__name__}, not a command string", job)
        fut = self._future()
        fut.set_result(self._fail(failure))
        return fut

    def _local(self, node: Local, out: _Result) -> None:
        def ready(got: list[Any]) -> None:
            args, kwargs = fill(node, got)
            try:
                out.set_result(Ok(node.fn(*args, **kwargs)))
            except BaseException as e:  # noqa: BLE001 - see USER_CODE
                out.set_result(self._fail(Failure(f"{node.label} at {node.where} raised {type(e).__name__}: {e}"
                                                  + _frames(e, "the function's own frames"))))

        self._inputs(node, out, ready)

    # ------------------------------------------------------------------ jobs
    def _emit(self, name: str, *args: Any) -> None:
        for o in self.observers:
            getattr(o, name)(*args)

    def _emit_optional(self, name: str, *args: Any) -> None:
        """An event not every observer listens to (job_files: staging, running, fetching)."""
        for o in self.observers:
            fn = getattr(o, name, None)
            if fn is not None:
                fn(*args)

    def _target(self, target: str | None) -> tuple[Eligible, tuple[Host, ...]] | str:
        """The scheduler class and hosts of a target, resolved once per distinct target; or why it has none."""
        got = self._targets.get(target)
        if got is None:
            try:
                hosts = self.inventory.resolve(target)
                got = (self.scheduler.eligible(h.name for h in hosts), hosts)
            except KeyError as e:
                got = f"unknown host {e}"
            self._targets[target] = got
        return got

    def _submit(self, job: Job) -> _Result:
        """Queue a job for a slot; its future gets the final result (after any retries)."""
        fut = run = self._jobs[job.id] = _JobRun(self, job)
        target = self._targets.get(job.target) or self._target(job.target)
        if isinstance(target, str):
            fut.set_result(self._fail(Failure(target, job)))
            return fut
        if self.resume is not None:
            parts = self.keys.parts(job, target[1], job_inputs(job))
            key = parts.key()
            reused = self._reuse(job, parts, key)
            if reused is not None:
                fut.set_result(reused)
                return fut
            run.keyed = (parts, key)
        run.ready = time.time()
        self.scheduler.request(run, target[0])
        return fut

    async def _slot(self, run: _JobRun | None, host: str) -> None:
        """A granted slot's worker: runs its job, then the oldest waiting job that may use the slot,
        until none does (so a Task is made per busy slot, not per job)."""
        while run is not None:
            again = await self._attempt(run, host)
            # the halt policy closed the scheduler before this point if the job failed for good
            following = self.scheduler.handoff(host)
            if again is not None:
                self._retry(run, again)
            run = following

    def _retry(self, run: _JobRun, backoff: float) -> None:
        assert run.base is not None
        if not backoff:
            self.scheduler.request(run, run.base, run.avoid)
            return

        async def later() -> None:
            await asyncio.sleep(backoff)
            self.scheduler.request(run, run.base, run.avoid)   # type: ignore[arg-type]
        assert self._tg is not None
        self._tg.create_task(later())

    async def _attempt(self, run: _JobRun, host: str) -> float | None:
        """One attempt of a job on a slot it holds. Returns None when the job has its result,
        else the backoff before it asks for a slot again."""
        job = run.job
        options = job.options
        timeout = options.timeout if options.timeout is not None else self.options.timeout
        run.attempt += 1
        attempt = run.attempt
        out, err = self.log.paths(job.id, attempt)
        for hook in self._on_started:
            hook(job, host, attempt)
        started = time.time()
        keyed = None
        if self.journal is not None:
            if run.keyed is None:   # computed this late so a pending job does not hold it
                target = self._target(job.target)
                assert not isinstance(target, str)
                parts = self.keys.parts(job, target[1], job_inputs(job))
                run.keyed = (parts, parts.key())
            keyed = (*run.keyed, run.ready)
            self.journal.started(job.id, keyed[1], host, attempt, run.ready, started)
        moved: Moved | None = None
        try:
            spec = JobSpec(job.id, job.command, out, err, timeout, options.detach)
            if job.files:
                outcome, moved = await self._with_files(job, host, attempt, spec)
            else:
                outcome = await self.transports[host].run(spec)
        except BaseException as e:
            # cancelled by halt now or a signal (or a transport's bug): the run is ending, so the
            # slot goes to nobody; the log still says so
            self.scheduler.close()
            self.scheduler.release(host)
            if isinstance(e, asyncio.CancelledError):
                # what it wrote before it was killed is in its files (closed by the transport by now)
                ended = Outcome(None, signal.SIGTERM, started, time.time(), stdout_bytes=_size(out),
                                stderr_bytes=_size(err))
                self._record(job, host, attempt, ended, out, err, Failure("cancelled", job, host), True, killed=True,
                             keyed=keyed)
            raise
        self.jobs_run += 1
        result = self._result_of(job, host, outcome, out, err, moved)
        final = True
        if result is _SILENT:   # the commonest case, first
            self._conn_failures[host] = 0
            self._record(job, host, attempt, outcome, out, err, result, final, keyed=keyed)
            run.finish(result)
            return None
        if outcome.connection_failed:
            run.conn_failures += 1
            self._conn_failures[host] += 1
            run.avoid = run.avoid | {host}
            final = run.conn_failures > max(2, len(run.base.names if run.base else ()) + 1)
        else:
            self._conn_failures[host] = 0
            if isinstance(result, Failure):
                run.command_failures += 1
                retries = job.options.retries if job.options.retries is not None else self.options.retries
                final = run.command_failures > retries
        if moved is not None and moved.outputs and self.journal is not None and keyed is not None:
            # a verified fetch is a journal event: a resume reuses these files only if they are still whole
            self.journal.fetched(job.id, keyed[1], [{"path": os.path.relpath(i.path, self.log.dir.resolve()),
                                                     "size": i.size, "sha256": i.sha256} for i in moved.outputs])
        self._record(job, host, attempt, outcome, out, err, result, final, keyed=keyed, moved=moved)
        if final and isinstance(result, Failure):
            result = self._fail(result)   # the halt policy closes the scheduler before the slot is handed on
        if outcome.connection_failed and self._conn_failures[host] >= HOST_DOWN_AFTER \
                and host not in self.scheduler.down:
            self.scheduler.mark_down(host)
            self._emit("host_down", host, outcome.message)
        if final or isinstance(result, Ok):
            run.finish(result)
            return None
        if outcome.connection_failed and run.conn_failures > 1:
            # backoff between reconnect attempts; failover needs none
            return min(0.2 * 2 ** (run.conn_failures - 2), 5.0)
        return 0.0

    async def _with_files(self, job: Job, host: str, attempt: int, spec: JobSpec) -> tuple[Outcome, Moved]:
        """Stage inputs, run in a work directory, fetch outputs verified (cmflow/files)."""
        if self.files is None:
            self.files = FileMover(self.log.dir, self.options.keep_remote)

        marks = self._phase_marks[(job.id, attempt)] = []

        def emit(state: str, sent: int = 0, fetched: int = 0) -> None:
            marks.append((state, time.time()))   # the report draws staging/running/fetching from these
            self._emit_optional("job_files", job, host, attempt, state, sent, fetched)

        assert job.files is not None
        return await self.files.attempt(self.transports[host], spec, job.files, f"{job.id}-{safe_name(job.task)}",
                                        emit)

    def _result_of(self, job: Job, host: str, outcome: Outcome, out: Path, err: Path,
                   moved: Moved | None = None) -> Result:
        if outcome.exit_status == 0 and not outcome.stdout_bytes and moved is None and not outcome.timed_out \
                and not outcome.connection_failed and job.options.parse == "auto":
            return _SILENT   # the commonest job of all: it succeeded and printed nothing

        def failure(reason: str) -> Failure:
            if moved is not None and moved.kept:
                reason += f" (work dir kept: {moved.kept})"
            return Failure(reason, job, host, outcome.exit_status, _tail(err) if outcome.stderr_bytes else "")

        if outcome.connection_failed:
            return failure(f"connection failed: {outcome.message}")
        if moved is not None and moved.failure:
            return failure(moved.failure)
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
        if moved is not None and moved.files is not None:
            return Ok(moved.files)   # a job with outputs: its value is its files, fetched and verified
        try:
            return Ok(stdout_value(out, outcome.stdout_bytes, job.options.parse))
        except BaseException as e:  # noqa: BLE001 - a task's own parse= callable (USER_CODE)
            return failure(f"cannot read its value ({job.options.parse if isinstance(job.options.parse, str) else 'parse'}): "
                           f"{type(e).__name__}: {e}")

    def _reuse(self, job: Job, parts: KeyParts, key: str) -> Result | None:
        """The earlier run's result for this key, adopted into this run; None if the job must run."""
        assert self.resume is not None
        has_outputs = bool(job.files and job.files.outputs)
        decision = self.resume.decide(job, parts, key, has_outputs=has_outputs)
        if not decision.cached or decision.entry is None:
            return None
        doc = decision.entry.doc
        out, err = self.log.paths(job.id, 0)
        try:
            out_p, err_p = adopt(decision.entry, self.log.dir, out, err)
            if has_outputs:   # the value of a job with outputs is its files, now adopted into this run
                value: Any = Files(str((self.log.dir / f["path"]).resolve()) for f in decision.entry.files)
            else:
                # read as the earlier run read it: a big stdout stays a reference to its (adopted) file
                value = stdout_value(out_p, out_p.stat().st_size, job.options.parse) if out_p else \
                    read_value("", job.options.parse)
        except BaseException:   # noqa: BLE001 - a vanished file or a parse= that now fails (USER_CODE): run it instead
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
                "from": str(decision.entry.run_dir), "from_seq": doc.get("seq"),
                **({"command": job.command} if job.id > len(self.plan.jobs) else {})})
            if has_outputs:   # adopted under the same paths: a resume of this run reuses them in turn
                self.journal.fetched(job.id, key, decision.entry.files)
        # the joblog and jobs.jsonl show it as the earlier run ran it, with attempt 0 meaning "reused":
        # GNU parallel's --resume-failed must skip it as well
        self.log.record(JobRecord(
            job, str(doc.get("host", "")), 0, float(doc.get("start") or 0), float(doc.get("end") or 0), 0, 0,
            False, False, str(out_p or ""), str(err_p or ""), int(doc.get("stdout_bytes") or 0), value))
        self.jobs_cached += 1
        self._emit("job_cached", job)
        return Ok(value)

    def _attempts(self, job: Job) -> int:
        return 1 + (job.options.retries if job.options.retries is not None else self.options.retries)

    def _record(self, job: Job, host: str, attempt: int, outcome: Outcome, out: Path, err: Path,
                result: Result, final: bool, killed: bool = False,
                keyed: tuple[KeyParts, str, float] | None = None, moved: Moved | None = None) -> None:
        ok = type(result) is Ok
        rec = JobRecord(
            job, host, attempt, outcome.start, outcome.end,
            outcome.exit_status, outcome.signal, outcome.timed_out, outcome.connection_failed,
            str(out) if outcome.stdout_bytes else "", str(err) if outcome.stderr_bytes else "",
            outcome.stdout_bytes, result.value if ok else None, "" if ok else result.reason, killed, outcome.ref,
            moved.bytes_sent if moved else 0, moved.bytes_fetched if moved else 0,
            1 + (job.options.retries if job.options.retries is not None else self.options.retries))
        # the joblog keeps a job's last attempt only: GNU parallel's --retry-failed reads one line per job
        self.log.record(rec, final or ok)
        if self.journal is not None and keyed is not None:
            parts, key, ready = keyed
            more = {"bytes_sent": moved.bytes_sent, "bytes_fetched": moved.bytes_fetched} if moved else {}
            if self._phase_marks:
                more.update(_phases(self._phase_marks.pop((job.id, attempt), ()), time.time()))
            if job.id > len(self.plan.jobs):   # a run-time call: plan.json has not its command, the report needs it
                more["command"] = job.command
            self.journal.ended_attempt(
                job, key, parts, rec.label, host, attempt, (ready, outcome.start, outcome.end), ok, final,
                outcome.exit_status, outcome.signal, outcome.timed_out, outcome.connection_failed, rec.error,
                f"jobs/{out.name}" if outcome.stdout_bytes else "", f"jobs/{err.name}" if outcome.stderr_bytes else "",
                outcome.stdout_bytes, outcome.stderr_bytes, more)
        for hook in self._on_ended:
            hook(rec, final, ok)

    def _fail(self, failure: Failure) -> Failure:
        self._failures.append(failure)
        if self.options.halt == "now":
            self.scheduler.close()
            self._halt_now.set()
        elif self.options.halt == "soon":
            self.scheduler.close()
        return failure


def _phases(marks: Sequence[tuple[str, float]], end: float) -> dict[str, Any]:
    """State changes of a job with files -> {"phases": {"staging": [t0, t1], ...}} for the journal."""
    spans: dict[str, list[float]] = {}
    for i, (state, t) in enumerate(marks):
        if state in ("staging", "running", "fetching"):
            nxt = marks[i + 1][1] if i + 1 < len(marks) else end
            spans[state] = [round(t, 6), round(max(nxt, t), 6)]
    return {"phases": spans} if spans else {}


def _frames(exc: BaseException, heading: str = "the task's own frames") -> str:
    lines = user_frames(exc, heading)
    return "\n" + "\n".join(lines) if lines else ""


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
