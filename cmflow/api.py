"""The Python API that the command line, the REPL and the tests share.

    import cmflow.api as cm
    result = cm.run("flows/seed.flow")          # RunResult: ok, value, failures, run_dir
    plan, inv = cm.load("flows/seed.flow")      # compile only
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Sequence

from . import ast
from .aio import within
from .compiler import compile_file, compile_flow
from .errors import UsageError
from .hosts import Host, Inventory, load_inventory
from .options import RunOptions
from .parser import parse_expr
from .plan import Plan
from .tasks import TaskLoader
from .transport import Transport, procs

if TYPE_CHECKING:
    from .executor import Observer, RunResult
    from .rundir import RunBusy
    from .runlog import RunLog
# The executor, run log, journal, status and file mover are imported when a run starts, after its
# ssh connections have been started (see _warm_up): their import is a third of cmflow's start-up.

Display = Literal["auto", "live", "plain", "quiet"]


def inventory(hosts_file: str | None = None) -> Inventory:
    return load_inventory(hosts_file)


def target_kw(inv: Inventory) -> dict[str, Any]:
    """What the compiler may know of hosts: whether a target exists, and the host names
    ``hosts(TARGET)`` loops over (the language itself imports no host code)."""
    return {"is_target": inv.is_target, "target_names": inv.target_names(),
            "hosts_of": lambda target: [h.name for h in inv.resolve(target)]}


def load(flow_file: str, hosts_file: str | None = None, inv: Inventory | None = None) -> tuple[Plan, Inventory]:
    """Compile a flow file against an inventory; raise FlowError/ConfigError on mistakes."""
    inv = inv or load_inventory(hosts_file)
    return compile_file(flow_file, **target_kw(inv)), inv


def load_expr(expr: str, tasks: Sequence[str] = (), hosts_file: str | None = None,
              inv: Inventory | None = None) -> tuple[Plan, Inventory]:
    """Compile one expression with the tasks of the given modules (names or .py paths) in scope."""
    inv = inv or load_inventory(hosts_file)
    tree = parse_expr(expr, "<expr>")
    stmts: list[ast.Stmt] = []
    flow_dir = Path.cwd()
    for t in tasks:
        p = Path(t)
        if p.suffix == ".py":
            flow_dir = p.resolve().parent
            stmts.append(ast.FromImport(p.stem, None, ast.Pos(1, 1)))
        else:
            stmts.append(ast.FromImport(t, None, ast.Pos(1, 1)))
    flow = ast.Flow((*stmts, ast.ExprStmt(tree, ast.Pos(1, 1))), "<expr>")
    loader = TaskLoader.for_flow(None)
    loader.flow_dir = flow_dir
    return compile_flow(flow, expr, loader=loader, **target_kw(inv)), inv


def make_transport(host: Host, inv: Inventory, clusters: Any = None,
                   window: asyncio.Semaphore | None = None) -> Transport:
    """The transport for a host: local for ``local: true``, Slurm for ``slurm:``, else the system ssh client."""
    if host.slurm and clusters is not None:
        return clusters.transport(host)
    if host.local:
        from .transport.local import LocalTransport

        return LocalTransport(host)
    from .transport.ssh import SshTransport

    return SshTransport(host, ssh_config=inv.ssh_config, window=window)


def open_files_for(hosts: Iterable[Host]) -> None:
    """Raise this process's soft limit on open files to what its slots need (up to the hard limit).

    Every slot holds three pipes (and an ssh slot a process); 256 hosts x 2 slots is over the
    usual soft limit of 1024. Jobs inherit the raised limit only when the run needs it.
    """
    import resource

    need = 256 + 4 * sum(h.slots for h in hosts if not h.slurm)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        want = need if hard == resource.RLIM_INFINITY else min(need, hard)
        if want > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


BIG_RUN = 10_000    # jobs: a run this big gives its memory back before its run directory is read back
CLOSE_BOUND = 30.0   # seconds for closing every transport at once (each bounds its own wait too)


async def close_transports(transports: Iterable[Transport] | Iterable[asyncio.Future[None]]) -> None:
    """Close all transports concurrently (or wait for closes under way), in bounded time, even if
    we are cancelled again meanwhile."""
    closing = asyncio.ensure_future(within(asyncio.gather(
        *(t if isinstance(t, asyncio.Future) else t.aclose() for t in transports), return_exceptions=True),
        CLOSE_BOUND))
    while not closing.done():
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            continue     # a second Ctrl-C must not leave slots and masters behind
        except asyncio.TimeoutError:
            break
    if not closing.cancelled():
        closing.exception()


@dataclass
class Run:
    result: RunResult
    run_dir: Path
    plan: Plan
    signal: int | None = None

    @property
    def exit_status(self) -> int:
        if self.signal is not None:
            return 128 + self.signal
        return 0 if self.result.ok else 1


def flow_id(plan: Plan) -> str:
    """How run.json names the flow, so that a resume finds the runs of the same flow file."""
    return plan.filename if plan.filename.startswith("<") else str(Path(plan.filename).resolve())


def resume_source(plan: Plan, run_dir: str | Path | None, root: Path = Path("runs")) -> Path:
    """The run a resume reuses: the given directory, else the latest run of this flow under root."""
    if run_dir is not None:
        src = Path(run_dir)
        if not (src / "journal.jsonl").is_file() and not (src / "run.json").is_file():
            raise UsageError(f"--resume: {src} is not a run directory with a journal")
        return src
    from .rundir import latest_run

    src = latest_run(root, flow_id(plan))
    if src is None:
        raise UsageError(f"--resume: no earlier run of {plan.filename} under {root}/")
    return src


def _busy(e: RunBusy) -> UsageError:
    return UsageError(f"{e}: its jobs would start twice; wait for it to end or stop it first")


def _observers(display: Display, plan: Plan, inv: Inventory) -> list[Any]:
    if display == "quiet":
        return []
    from .progress import LiveProgress, PlainProgress   # not imported by quiet runs

    if display == "live" or (display == "auto" and sys.stderr.isatty()):
        return [LiveProgress(len(plan.jobs) + plan.deferred(), inv)]
    return [PlainProgress(len(plan.jobs) + plan.deferred(), inv)]


def _write_hosts(log: RunLog, inv: Inventory) -> None:
    log.write_json("hosts.json", [{"name": h.name, "hostname": h.hostname, "slots": h.slots, "local": h.local,
                                   "labels": list(h.labels)} for h in inv.hosts])


@dataclass
class _Warm:
    """Transports whose first connection was started before the run itself (see _warm_up)."""

    window: asyncio.Semaphore        # the run's fanout window, shared with every other transport
    transports: dict[str, Transport]


def _warm_up(plan: Plan, inv: Inventory, options: RunOptions, resume: object) -> _Warm:
    """Start connecting to the ssh hosts the run will surely use, before the rest of it is imported.

    A connection is ~150 ms of handshake CPU on both ends, cmflow's imports and run set-up ~0.1 s
    more: started first, the handshakes run while Python works (pssh, which has little to import,
    starts its ssh clients at once). Surely used: a host that some job is placed on alone. Not for
    a resume (the job may be cached) nor Slurm (its hosts exist once the allocation does)."""
    window = asyncio.Semaphore(options.fanout)   # ssh handshakes at once, all hosts together
    warm = _Warm(window, {})
    if resume is not None or any(h.slurm for h in inv.hosts):
        return warm
    open_files_for(inv.hosts)
    for target in {job.target for job in plan.jobs if job.target is not None}:
        try:
            hosts = inv.resolve(target)
        except KeyError:
            continue     # the executor says why
        if len(hosts) == 1 and not hosts[0].local and hosts[0].name not in warm.transports:
            t = warm.transports[hosts[0].name] = make_transport(hosts[0], inv, None, window)
            t.warm()     # type: ignore[attr-defined]   (an SshTransport)
    return warm


class _Retire:
    """Closes a host's connection as soon as every job that may run there has ended, instead of at
    the run's end: a run of one job on each of 256 hosts then holds about as many ssh processes
    as are connecting or running (~1.4 MB each), not 256, and closing overlaps the other hosts'
    handshakes. Only hosts that nothing but their own placed jobs can use (no group, label or
    unplaced job reaches them, no job built at run time), and no job moving files (their work
    folders are removed over the connection at the end)."""

    def __init__(self, plan: Plan, inv: Inventory, transports: dict[str, Transport]):
        self.transports = transports
        self.host_of: dict[int, str] = {}       # job id -> its host, for the jobs counted below
        self.left: dict[str, int] = {}          # host -> its jobs not ended yet
        self.closing: list[asyncio.Future[None]] = []
        ssh = {h.name for h in inv.hosts if not h.local and not h.slurm}
        if plan.deferred() or not ssh:
            return   # (a local run of a million jobs need not resolve each job's target for nothing)
        shared: set[str] = set()
        for job in plan.jobs:
            try:
                hosts = inv.resolve(job.target)
            except KeyError:
                continue
            if len(hosts) != 1 or job.files is not None or job.target is None:
                shared.update(h.name for h in hosts)
            else:
                self.host_of[job.id] = hosts[0].name
        for jid, host in list(self.host_of.items()):
            if host in shared or host not in ssh:
                del self.host_of[jid]
            else:
                self.left[host] = self.left.get(host, 0) + 1

    def _done(self, job_id: int) -> None:
        host = self.host_of.pop(job_id, None)
        if host is not None:
            self.left[host] -= 1
            if not self.left[host] and host in self.transports:
                self.closing.append(asyncio.ensure_future(self.transports[host].aclose()))

    def job_ended(self, record: Any, final: bool, ok: bool) -> None:
        if final or ok:
            self._done(record.job.id)

    def job_cached(self, job: Any) -> None:
        self._done(job.id)

    def job_started(self, job: Any, host: str, attempt: int) -> None:
        pass

    def host_down(self, host: str, reason: str) -> None:
        pass


async def arun(plan: Plan, inv: Inventory, options: RunOptions = RunOptions(), run_dir: str | Path | None = None,
               display: Display = "quiet", observers: Sequence[Observer] = (), resume: str | Path | None = None,
               report: bool = True, _warm: _Warm | None = None, _ended: list[Any] | None = None) -> Run:
    """Run a compiled plan. Cancel the calling task to stop it: every job is killed, the log flushed.

    ``resume``: an earlier run directory whose OK results are reused by key (see journal.py).
    ``_ended``: the RunResult is appended to it, also when the run is cancelled (what failed before)."""
    from .executor import Executor, RunResult
    from .files.mover import FileMover
    from .journal import Journal
    from .resume import ResumeIndex
    from .rundir import RunBusy, RunLock, is_running, point_latest
    from .runlog import RunLog, new_run_id, write_atomic
    from .status import StatusLog

    warm = _warm or _Warm(asyncio.Semaphore(options.fanout), {})
    rdir = Path(run_dir) if run_dir else Path("runs") / new_run_id()
    index = None
    if resume is not None:
        src = Path(resume)
        if src.resolve() == rdir.resolve():
            raise UsageError(f"--resume: the resumed run needs a directory of its own, not {src} itself")
        if is_running(src):
            raise _busy(RunBusy(src, None))
        index = ResumeIndex.load(src)
    rdir.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(rdir)
    except RunBusy as e:
        raise _busy(e) from None
    started = time.time()
    # first, so that even a run killed at once tells a resume which run it was resuming
    write_atomic(rdir / "run.json", json.dumps({
        "id": rdir.name, "flow": flow_id(plan), "argv": ["cmflow", *sys.argv[1:]] if sys.argv[0].endswith(("cmflow", "__main__.py")) else sys.argv, "cwd": os.getcwd(), "started": started,
        "pid": os.getpid(), "controller": socket.gethostname(), "jobs": len(plan.jobs),
        "resumed_from": str(Path(resume).resolve()) if resume is not None else None,
        "options": {"jobs": options.jobs, "timeout": options.timeout, "retries": options.retries,
                    "halt": options.halt, "deep": options.deep}}, indent=2) + "\n")
    log = RunLog(rdir, {h.name for h in inv.hosts if h.local})
    journal = Journal(rdir)
    files = FileMover(rdir, options.keep_remote)
    status: StatusLog | None = None
    _write_hosts(log, inv)
    log.write_plan(plan)
    point_latest(rdir)
    result: RunResult | None = None
    shown: list[Any] = []
    executor: Executor | None = None
    transports: dict[str, Transport] = dict(warm.transports)    # closed at the end, whatever happens
    try:
        async with AsyncExitStack() as stack:
            clusters = None
            if any(h.slurm for h in inv.hosts):
                from .transport.slurm import Clusters

                # Slurm hosts first: an allocation's nodes become hosts of this run
                clusters = Clusters(rdir.resolve().name)
                stack.push_async_callback(clusters.aclose)
                inv = await clusters.open(inv)
                _write_hosts(log, inv)
            # every transport (those warmed up too) closes whatever happens, before the allocations go
            stack.push_async_callback(close_transports, transports.values())
            shown = _observers(display, plan, inv)
            # a deferred call (built at run time) is a job too, at most one each
            status = StatusLog(rdir, len(plan.jobs) + plan.deferred(), {h.name: h.slots for h in inv.hosts})
            open_files_for(inv.hosts)
            for h in inv.hosts:
                if h.name not in transports:
                    transports[h.name] = make_transport(h, inv, clusters, warm.window)
            retire = _Retire(plan, inv, transports)
            stack.push_async_callback(close_transports, retire.closing)   # awaited, after the rest closed
            executor = Executor(plan, inv, transports, log, options, [*shown, status, *observers, retire],
                                files=files, journal=journal, resume=index)
            try:
                result = await executor.run()
            finally:
                await files.close()   # queued work dirs go while the connections still stand
    finally:
        for o in shown:
            o.close()
        done = result or RunResult(False, failures=executor.failures() if executor else [], cancelled=True,
                                   jobs_run=executor.jobs_run if executor else 0,
                                   jobs_cached=executor.jobs_cached if executor else 0,
                                   down_hosts=sorted(executor.scheduler.down) if executor else [])
        log.write_json("summary.json", {
            "ok": done.ok, "value": done.value, "cancelled": result is None, "halted": done.halted,
            "started": started, "ended": time.time(), "jobs": len(plan.jobs),
            "jobs_run": done.jobs_run, "jobs_cached": done.jobs_cached, "down_hosts": done.down_hosts,
            "failures": [{"reason": f.reason, "task": f.job.label if f.job else None, "host": f.host,
                          "exit_status": f.exit_status} for f in done.failures]})
        if _ended is not None:
            _ended.append(done)
        log.finish((j.id, j.command) for j in plan.jobs)
        if status is not None:
            status.close()
        log.close()
        journal.close()
        lock.release()
        executor = None    # every job's result and slot state: gone before the run directory is read back
        if len(plan.jobs) > BIG_RUN:
            gc.collect()   # now, not whenever: each job's run refers back to the executor (a cycle)
        _finish(rdir, report)
    return Run(result, rdir, plan)


def _finish(rdir: Path, report: bool) -> None:
    """trace.tsv and report.html from the finished run directory; a bug there must not fail the run."""
    from .report import finish_run

    try:
        finish_run(rdir, report)
    except Exception as e:  # noqa: BLE001 - the run's own result stands; say what went wrong
        sys.stderr.write(f"cmflow: could not write the report of {rdir}: {type(e).__name__}: {e}\n")


def run_sync(plan: Plan, inv: Inventory, options: RunOptions = RunOptions(), run_dir: str | Path | None = None,
             display: Display = "quiet", resume: str | Path | None = None, report: bool = True) -> Run:
    """Run a plan on a fresh event loop; SIGINT/SIGTERM cancel it cleanly (exit 130/143)."""

    async def main() -> Run:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        got: list[int] = []
        inner: asyncio.Future[Run] | None = None

        def on_signal(signum: int) -> None:
            if not got:
                got.append(signum)
                if inner is not None:
                    inner.cancel()   # the jobs end in order, every wait bounded
                return
            # again: the user will not wait for that; end every process of the run now
            # (the allocations are still released, without waiting for Slurm to confirm)
            n = procs.kill_all()
            sys.stderr.write(f"cmflow: interrupted again: {n} process{'es' if n != 1 else ''} of the run killed\n")

        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, on_signal, s)
        procs.reset()
        warm = _warm_up(plan, inv, options, resume)
        try:
            await asyncio.sleep(0)     # the warmed-up ssh clients start (fork) before the imports below
            from .executor import RunResult
            from .runlog import new_run_id

            rdir = Path(run_dir) if run_dir else Path("runs") / new_run_id()
            ended: list[RunResult] = []
            inner = asyncio.ensure_future(arun(plan, inv, options, rdir, display, resume=resume, report=report,
                                               _warm=warm, _ended=ended))
            if got:
                inner.cancel()
            try:
                return await inner
            except asyncio.CancelledError:
                if not got or (me is not None and me.cancelling()):
                    raise
                # what failed before the signal is still named in the summary
                return Run(ended[0] if ended else RunResult(False, cancelled=True), rdir, plan, got[0])
        finally:
            for s in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(s)
            # arun closes them itself; this is for a run that failed before it could (a busy run dir)
            await close_transports(warm.transports.values())

    return asyncio.run(main())


def run(flow_file: str, hosts_file: str | None = None, **kw: Any) -> Run:
    """Compile and run a flow file (the API behind ``cmflow run``)."""
    plan, inv = load(flow_file, hosts_file)
    opts = {k: kw.pop(k) for k in list(kw) if k in RunOptions.__dataclass_fields__}
    return run_sync(plan, inv, replace(RunOptions(), **opts), **kw)
