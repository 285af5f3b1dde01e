"""Local transport: each job is ``sh -c COMMAND`` in its own process group.

The child is started with ``subprocess.Popen`` (vfork + exec, argv list) with
stdout and stderr going straight into the run directory's files (see
output.py), and its exit
is awaited through a pidfd on the event loop: no pipe copying, no watcher
thread per child, which is what makes a thousand tiny jobs cheap.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from ..hosts import Host
from . import JobSpec, Outcome
from .output import OutputFiles

KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL


class LocalTransport:
    def __init__(self, host: Host):
        self.host = host
        self._env = {**os.environ, **dict(host.env)} if host.env else None
        self._cwd = os.path.expanduser(host.workdir) if host.workdir else None
        self._outputs = OutputFiles()
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)   # every job's stdin

    async def run(self, spec: JobSpec) -> Outcome:
        start = time.time()
        out, err = self._outputs.open(spec.stdout), self._outputs.open(spec.stderr)
        try:
            try:
                proc = subprocess.Popen(["/bin/sh", "-c", spec.command], stdin=self._devnull, stdout=out.fd,
                                        stderr=err.fd, env=self._env, cwd=self._cwd, process_group=0,
                                        close_fds=True)
            except OSError as e:
                return Outcome(None, start=start, end=time.time(), connection_failed=True,
                               message=f"cannot start /bin/sh: {e.strerror}")
            try:
                if spec.timeout is None:
                    await _exited(proc)
                else:
                    await asyncio.wait_for(_exited(proc), spec.timeout)
            except asyncio.TimeoutError:
                await kill_tree(proc)
                return _outcome(proc, start, out.close(), err.close(), timed_out=True)
            except BaseException:
                # cancelled (halt now, Ctrl-C): nothing of the job may outlive us
                await asyncio.shield(kill_tree(proc))
                raise
            return _outcome(proc, start, out.close(), err.close())
        finally:
            out.close()
            err.close()

    async def aclose(self) -> None:
        self._outputs.close()
        if self._devnull >= 0:
            os.close(self._devnull)
            self._devnull = -1


def _outcome(proc: subprocess.Popen, start: float, out_bytes: int, err_bytes: int,
             timed_out: bool = False) -> Outcome:
    rc = proc.returncode
    if rc is not None and rc < 0:
        return Outcome(None, -rc, start, time.time(), timed_out, stdout_bytes=out_bytes, stderr_bytes=err_bytes)
    return Outcome(rc, 0, start, time.time(), timed_out, stdout_bytes=out_bytes, stderr_bytes=err_bytes)


async def _exited(proc: subprocess.Popen) -> int:
    """Wait for a child's exit through its pidfd, then reap it."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(proc.pid)
    except OSError:  # already reaped or no pidfd support: fall back to a thread
        return await loop.run_in_executor(None, proc.wait)
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return proc.wait()


async def kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the job's process group, SIGKILL it after a grace period; reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if sig == signal.SIGTERM:
            try:
                await asyncio.wait_for(_exited(proc), KILL_GRACE)
            except asyncio.TimeoutError:
                continue
            # the leader is gone; make sure nothing else of its group lingers
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
    if proc.returncode is None:
        await _exited(proc)
