"""The client half of a slot: one slot server process (server.py) per slot, jobs sent one at a time.

Shared by the local transport (the server is a child of cmflow) and the ssh
transport (the server runs on the host, at the end of an ssh session). A
slot server is started by sending its source down stdin to ``python3 -I -S``;
it answers with a ready frame, then runs each job it is sent and streams the
job's stdout and stderr back as frames, ending with the exit status. Output
goes straight to the run directory's files as it arrives, so memory stays
flat whatever a job prints.

Ending a job's processes is the server's work (see server.py): on timeout or
cancellation we ask it to kill the job (``K``) and wait for the job's end
frame; if the controller dies, the server notices its stdin close.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import marshal
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..aio import within
from ..hosts import Host
from . import ConnectionLost, JobSpec, Outcome, procs
from .procs import kill as _kill, stderr_text
from .output import StreamedOutput

SERVER_PATH = Path(__file__).with_name("server.py")
SERVER_CODE = SERVER_PATH.read_bytes()
HDR = struct.Struct(">cI")


def _server_bytecode() -> tuple[bytes, bytes]:
    """The server compiled by this Python, and the bytecode magic that says which Pythons may run it.

    Compiling the 21 KB server took ~10 ms of every slot's start-up (16 hosts: 0.17 s of CPU on the
    hosts' side, the half of a slot server's own start). A host whose ``python3`` has the same magic
    (as a .pyc's header) runs the marshalled code instead. This Python's compiled server comes from
    the package's bytecode cache, as imports do (written at install), so it costs no compile either."""
    try:
        from importlib.machinery import SourceFileLoader
        from importlib.util import MAGIC_NUMBER

        code = SourceFileLoader("cmflow_slot_server", str(SERVER_PATH)).get_code("cmflow_slot_server")
        return marshal.dumps(code), MAGIC_NUMBER
    except Exception:    # noqa: BLE001 - no bytecode to offer: every host compiles the source
        return b"", b""


SERVER_BYTECODE, _MAGIC = _server_bytecode()
# What a slot's process is sent first, before the config line: the compiled server, then its source.
SERVER_INPUT = SERVER_BYTECODE + SERVER_CODE
# Reads exactly the two from stdin (nothing after them), then runs the bytecode where this Python's
# magic is the host's, else compiles the source (any Python >= 3.6).
BOOT = ("import os,sys,marshal\n"
        "def r(n):\n b=b''\n while len(b)<n:\n  c=os.read(0,n-len(b))\n  if not c:raise SystemExit(0)\n  b+=c\n return b\n"
        "c=r({nc});s=r({ns})\n"
        "m=getattr(sys.modules.get('_frozen_importlib_external'),'MAGIC_NUMBER',b'')\n"
        "exec(marshal.loads(c) if c and m=={magic!r} else compile(s,'cmflow-slot-server','exec'),{{'__name__':'__main__'}})").format(nc=len(SERVER_BYTECODE), ns=len(SERVER_CODE), magic=_MAGIC)
KILL_GRACE = float(os.environ.get("CMFLOW_KILL_GRACE", "2"))   # seconds between TERM and KILL
CLOSE_WAIT = 5.0             # seconds a server may take to exit once its stdin is closed


async def spawn_slot(*argv: str, spawn: Callable[..., Awaitable[asyncio.subprocess.Process]] | None = None
                     ) -> tuple[asyncio.subprocess.Process, int]:
    """Start a slot's process (procs.spawn, or `spawn(argv, **kw)`: its own session): stdin and stderr
    asyncio pipes, stdout a pipe of ours whose read end is returned raw (see SlotTransport._start)."""
    out_r, out_w = os.pipe()
    try:
        kw: dict[str, Any] = dict(stdin=asyncio.subprocess.PIPE, stdout=out_w, stderr=asyncio.subprocess.PIPE,
                                  limit=1 << 20)
        proc = await (spawn(list(argv), **kw) if spawn else procs.spawn(*argv, **kw))
    except BaseException:
        os.close(out_r)
        raise
    finally:
        os.close(out_w)
    return proc, out_r


def boot_argv(python: str) -> list[str]:
    return [python, "-I", "-S", "-c", BOOT]


def message(kind: bytes, value: Any) -> bytes:
    """A line to the slot server: hex of marshal version 2, which every Python 3 reads and
    which the server decodes without importing json (see server._decode)."""
    return kind + marshal.dumps(value, 2).hex().encode() + b"\n"


class Frames:
    """The frames of one slot server's stdout, read from the raw pipe (no asyncio StreamReader).

    Small frames (a job's end, a short job's output) come in whole reads: one read brings
    every frame that has arrived. The payload of a big output frame is moved from the pipe
    straight into the output file by the kernel (``StreamedOutput.splice_from``): it never
    becomes Python bytes, and the pipe is waited on only when it is empty. Once output
    flows in big frames, headers are read on their own (5 bytes), so that the payload
    behind them stays in the pipe for splice.

    What was read but not yet taken stays here, so a reader cancelled while it waits (a
    timeout, halt) loses nothing and the next reader goes on where it stopped.
    """

    __slots__ = ("fd", "buf", "pos", "kind", "left", "bulk", "grown", "drained", "_loop", "_waiter")

    def __init__(self, fd: int):
        os.set_blocking(fd, False)
        self.fd = fd
        self.buf = b""
        self.pos = 0
        self.kind = b""      # the output frame being copied (O or E) ...
        self.left = 0        # ... and how many of its bytes are still to come
        self.bulk = False    # a payload outlasted what was read: read headers alone
        self.grown = 0       # the pipe: 1 enlarged for the job's big output, -1 could not be, 0 not tried
        self.drained = True  # the last read emptied the pipe: wait before the next (no read that fails)
        self._loop: asyncio.AbstractEventLoop | None = None   # watching the pipe (see _readable)
        self._waiter: asyncio.Future[None] | None = None

    def close(self) -> None:
        if self.fd >= 0:
            self._unwatch()
            self._shrink(False)
            fd, self.fd = self.fd, -1
            os.close(fd)

    async def _readable(self) -> None:
        """Wait until the pipe is readable. The pipe stays watched from one wait to the next (no
        epoll_ctl pair, no selector bookkeeping per wait: a short job waits once, for its end
        frame); it is unwatched when it turns readable with nobody waiting (an idle slot whose
        server died must not wake the loop over and over)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self.fd, self._ready)
        self._waiter = waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _ready(self) -> None:
        waiter = self._waiter
        if waiter is None:
            self._unwatch()
        elif not waiter.done():
            waiter.set_result(None)
        # else: woken already, the waiting task has not run yet

    def _unwatch(self) -> None:
        if self._loop is not None:
            loop, self._loop = self._loop, None
            if not loop.is_closed():
                loop.remove_reader(self.fd)

    async def _more(self, n: int) -> None:
        """Add up to `n` bytes from the pipe to what is unread; at EOF IncompleteReadError."""
        while True:
            if self.drained:
                await self._readable()
            try:
                chunk = os.read(self.fd, n)
            except (BlockingIOError, InterruptedError):
                self.drained = True
                continue
            if not chunk:
                raise asyncio.IncompleteReadError(self.buf[self.pos:], None)
            self.drained = len(chunk) < n
            self.buf, self.pos = self.buf[self.pos:] + chunk, 0
            return

    def _want(self, need: int) -> int:
        """How much to read when `need` more bytes complete the frame at hand."""
        return need if self.bulk else max(need, READ_SIZE)

    async def next(self) -> tuple[bytes, bytes]:
        while True:
            buf, pos = self.buf, self.pos
            need = HDR.size - (len(buf) - pos)
            if need <= 0:
                kind, n = HDR.unpack_from(buf, pos)
                end = pos + HDR.size + n
                if len(buf) >= end:
                    self.pos = end
                    return kind, buf[pos + HDR.size:end]
                need = end - len(buf)
            await self._more(self._want(need))

    async def job(self, out: StreamedOutput, err: StreamedOutput) -> int:
        """Copy a job's output frames to its files; return its status from the end frame."""
        while True:
            if self.left:
                dest = out if self.kind == b"O" else err
                buf, pos = self.buf, self.pos
                if pos < len(buf):
                    k = min(len(buf) - pos, self.left)
                    dest.write(memoryview(buf)[pos:pos + k])
                    self.pos, self.left = pos + k, self.left - k
                    continue
                # what was read is used up: the rest of the payload goes from the pipe to the file
                self.bulk = True
                if not self.grown:
                    self._grow()
                try:
                    k = dest.splice_from(self.fd, self.left)
                except (BlockingIOError, InterruptedError):
                    await self._readable()
                    continue
                if k is None:          # no splice here: read and write
                    await self._more(min(self.left, READ_SIZE))
                    continue
                if not k:
                    raise asyncio.IncompleteReadError(b"", None)
                self.left -= k
                continue
            buf, pos = self.buf, self.pos
            need = HDR.size - (len(buf) - pos)
            if need <= 0:
                kind, n = HDR.unpack_from(buf, pos)
                if kind == b"O" or kind == b"E":
                    self.kind, self.left, self.pos = kind, n, pos + HDR.size
                    continue
                end = pos + HDR.size + n
                if len(buf) >= end:
                    self.pos = end
                    self.bulk = False
                    if kind == b"X":
                        if self.grown:
                            self._shrink(True)
                        return int(buf[pos + HDR.size:end])
                    raise ConnectionLost(f"unexpected frame {kind!r} from the slot server")
                need = end - len(buf)
            await self._more(self._want(need))

    def _grow(self) -> None:
        """A big output flows through this pipe: enlarge it (fewer, larger writes for its writer,
        ssh, and fewer wake-ups here: by CPU 0.69x plain ssh with 64 KiB, 0.86x with 1 MiB), until
        the job ends. Bounded: a user's pipe memory past /proc/sys/fs/pipe-user-pages-soft (64 MiB)
        would shrink every new pipe of theirs to a page or two."""
        global _grown
        self.grown = -1
        if _grown < GROW_PIPES:
            try:
                fcntl.fcntl(self.fd, F_SETPIPE_SZ, GROWN_PIPE_SIZE)
            except OSError:
                return   # over pipe-max-size or the user's limit: the pipe keeps its size
            _grown += 1
            self.grown = 1

    def _shrink(self, resize: bool) -> None:
        """The job has ended (or the pipe closes): give its pipe memory back."""
        global _grown
        if self.grown > 0:
            if resize:
                try:
                    fcntl.fcntl(self.fd, F_SETPIPE_SZ, PIPE_SIZE)
                except OSError:
                    return   # still holds more than that (never after an end frame): stays counted
            _grown -= 1
        self.grown = 0


READ_SIZE = 1 << 16          # a read of small frames
F_SETPIPE_SZ = 1031
GROWN_PIPE_SIZE = int(os.environ.get("CMFLOW_PIPE_SIZE", 1 << 20))   # (set: for bench/big_output.py comparisons)
GROW_PIPES = 32              # at most this many pipes enlarged at once per cmflow process (32 MiB)
PIPE_SIZE = 1 << 16          # a pipe's default size, given back at a big output's end
_grown = 0


@dataclass(eq=False)
class Slot:
    proc: asyncio.subprocess.Process
    pid: int                 # the server's pid, on its host
    tag: Any = None          # the transport's own (ssh: which master it rides on)
    frames: Frames | None = None
    told: dict[str, str] = field(default_factory=dict)   # the server's values of the transport's `tell`


class SlotTransport:
    """A pool of slot servers for one host; subclasses say how a server process is started."""

    host: Host
    tell: tuple[str, ...] = ()              # environment variables the server reports when ready
    start_timeout: float | None = None      # how long a server may take to come up (Slurm: a step)

    def __init__(self, host: Host):
        self.host = host
        self._idle: list[Slot] = []
        self._all: set[Slot] = set()
        self._closed = False
        self._config = message(b"C", {"env": dict(host.env), "workdir": host.workdir or None,
                                      "grace": KILL_GRACE, "tell": list(self.tell)})

    # ---------------------------------------------------------- for subclasses
    async def _start(self) -> tuple[asyncio.subprocess.Process, int, Any]:
        """Start a process whose stdin/stdout reach a fresh slot server (own session, three pipes).

        Returns the process (its stdin a StreamWriter, its stderr a StreamReader), the read end of
        the server's stdout as a raw descriptor, which the slot owns from then on (Frames reads it
        and splices output from it; `spawn_slot` makes one), and the transport's tag.
        """
        raise NotImplementedError

    def _start_failed(self, stderr: str, tag: Any) -> str:
        """Why a server did not come up, from what its process said on stderr."""
        return stderr.strip().splitlines()[-1] if stderr.strip() else f"slot server on {self.host.name} did not start"

    def _unopened(self, tag: Any) -> None:
        """A process from _start did not become a slot."""

    def _opened(self, tag: Any) -> None:
        """A process from _start answered ready: its server runs (ssh: its connection is up)."""

    def _lost(self, slot: Slot) -> None:
        """A slot's session died (ssh: its master may be dead too)."""

    def _ref(self, slot: Slot) -> str:
        """The batch system's name for where a job ran (Outcome.ref; Slurm: its step)."""
        return ""

    # ------------------------------------------------------------------ slots
    async def _open_slot(self) -> Slot:
        proc, out_fd, tag = await self._start()
        frames = Frames(out_fd)
        try:
            assert proc.stdin
            proc.stdin.write(SERVER_INPUT + self._config)
            try:
                kind, payload = await within(frames.next(), self.start_timeout)
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
                kind, payload = b"", b""
            if kind != b"R":
                err = await _drain(proc)
                raise ConnectionLost(self._start_failed(err, tag))
        except BaseException:
            frames.close()
            self._unopened(tag)
            if proc.returncode is None:
                await asyncio.shield(_kill(proc))
            raise
        pid, _, told = payload.partition(b" ")
        slot = Slot(proc, int(pid), tag, frames, json.loads(told) if told else {})
        self._all.add(slot)
        self._opened(tag)
        return slot

    async def _discard(self, slot: Slot) -> None:
        self._all.discard(slot)
        try:
            await _close(slot.proc)
        finally:
            if slot.frames is not None:
                slot.frames.close()

    # ------------------------------------------------------------------ jobs
    async def run(self, spec: JobSpec) -> Outcome:
        start = time.time()
        try:
            slot = self._idle.pop() if self._idle else await self._open_slot()
        except ConnectionLost as e:
            return Outcome(None, start=start, end=time.time(), connection_failed=True, message=str(e))
        start = time.time()  # the job's own time starts once it has a slot
        proc, frames = slot.proc, slot.frames
        assert proc.stdin and frames
        out, err = StreamedOutput(spec.stdout), StreamedOutput(spec.stderr)
        ended: list[int] = []    # the end frame was read (by us or by _stop): the slot may serve again
        try:
            proc.stdin.write(message(b"J", {"s": int(spec.seq), "c": spec.command, "d": bool(spec.detach)}))
            timed_out = False
            # no Task per job: the frames are read right here (Frames keeps what a cancelled read left)
            if spec.timeout is None:
                status = await frames.job(out, err)
            else:
                try:
                    async with asyncio.timeout(spec.timeout):
                        status = await frames.job(out, err)
                except TimeoutError:
                    timed_out = True
                    status = await self._stop(slot, spec.seq, out, err)
            ended.append(status)
            return _outcome(status, start, out.close(), err.close(), timed_out, self._ref(slot))
        except asyncio.CancelledError:
            # halt now, Ctrl-C, SIGTERM: the server ends the job's whole tree before we go on
            await _uncancellable(self._stop(slot, spec.seq, out, err, ended))
            raise
        except (ConnectionLost, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            self._lost(slot)
            msg = (await _drain(proc)).strip()
            why = f"session to {self.host.name} lost" if not isinstance(e, asyncio.TimeoutError) else \
                f"the slot server on {self.host.name} did not end the job"
            return Outcome(None, start=start, end=time.time(), connection_failed=True, ref=self._ref(slot),
                           message=why + (f": {msg.splitlines()[-1]}" if msg else ""))
        finally:
            out.close()
            err.close()
            if ended and not self._closed:
                self._idle.append(slot)
            else:
                await asyncio.shield(self._discard(slot))

    async def _stop(self, slot: Slot, seq: int, out: StreamedOutput, err: StreamedOutput,
                    ended: list[int] | None = None) -> int:
        """Ask the server to kill the running job; its end frame comes once every process is gone."""
        assert slot.proc.stdin and slot.frames
        slot.proc.stdin.write(f"K{seq}\n".encode())
        status = await within(slot.frames.job(out, err), KILL_GRACE + 15)
        if ended is not None:
            ended.append(status)
        return status

    # ------------------------------------------------------------------ close
    async def aclose(self) -> None:
        """Close every slot at once: a server exits as soon as its stdin closes."""
        self._closed = True
        slots = list(self._all)
        self._idle.clear()
        await asyncio.gather(*(self._discard(s) for s in slots))


def _outcome(status: int, start: float, out_bytes: int, err_bytes: int, timed_out: bool, ref: str) -> Outcome:
    if status < 0:
        return Outcome(None, -status, start, time.time(), timed_out, stdout_bytes=out_bytes, stderr_bytes=err_bytes,
                       ref=ref)
    return Outcome(status, 0, start, time.time(), timed_out, stdout_bytes=out_bytes, stderr_bytes=err_bytes, ref=ref)


async def _uncancellable(coro: Any) -> None:
    """Run to its end even if we are cancelled again meanwhile (it is bounded by its own timeout)."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            continue
        except Exception:
            return
    if not task.cancelled():
        task.exception()   # retrieved: a dead session here is not news


async def _close(proc: asyncio.subprocess.Process) -> None:
    """End a slot's process: close its stdin (the server cleans up and exits), KILL only if it lingers."""
    if proc.stdin and not proc.stdin.is_closing():
        proc.stdin.close()
    if proc.returncode is None:
        try:
            await within(proc.wait(), CLOSE_WAIT + KILL_GRACE)
        except asyncio.TimeoutError:
            await _kill(proc)


async def _drain(proc: asyncio.subprocess.Process) -> str:
    """What the process said on stderr before it died (only ssh and a failing server write there)."""
    await _close(proc)
    return await stderr_text(proc)
