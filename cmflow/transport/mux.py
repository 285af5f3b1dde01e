"""Talk to an OpenSSH ControlMaster over its socket, without starting an ssh process.

A mux client (``ssh -S PATH host cmd``, ``ssh -O exit``) costs a fork, an exec,
ssh's own start-up (config parsing, libcrypto) and about 1 MB of memory for as
long as its session lasts: with one per slot that is hundreds of processes for
hundreds of hosts. What it does is small: the control protocol is versioned
(OpenSSH's PROTOCOL.mux, version 4 since OpenSSH 5.x); each message is a uint32
length, then a uint32 type and its fields; both sides start with a hello; a new
session's stdin, stdout and stderr are handed over as file descriptors
(SCM_RIGHTS, one per message, as ssh's mm_send_fd sends them).
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
from asyncio import streams

from ..aio import within

MUX_MSG_HELLO = 0x00000001
MUX_C_ALIVE_CHECK = 0x10000004
MUX_C_TERMINATE = 0x10000005
MUX_S_OK = 0x80000001
MUX_S_ALIVE = 0x80000005
VERSION = 4
_MSG = struct.Struct(">III")      # length (8), type, one uint32 (version or request id)


async def terminate(path: str, timeout: float = 5.0) -> bool:
    """Ask the master on `path` to exit now (as ``ssh -O exit``); True once its process has ended.

    False if no master listens there (already gone) or it did not end in time.
    """
    try:
        reader, writer = await within(asyncio.open_unix_connection(path), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    pid = None
    try:
        # its pid first, so that we can wait for the process itself: the master closes its
        # sockets before it has finished exiting, and a caller may count processes next
        writer.write(_MSG.pack(8, MUX_MSG_HELLO, VERSION) + _MSG.pack(8, MUX_C_ALIVE_CHECK, 1)
                     + _MSG.pack(8, MUX_C_TERMINATE, 2))
        pid = await within(_alive(reader), timeout)
        await within(reader.read(-1), timeout)   # its answer, then EOF as it exits
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
    return pid is None or await _ended(pid, timeout)


async def master_pid(path: str, timeout: float = 5.0) -> int | None:
    """The pid of the master on `path` (as ``ssh -O check``), None if none answers."""
    try:
        reader, writer = await within(asyncio.open_unix_connection(path), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(_MSG.pack(8, MUX_MSG_HELLO, VERSION) + _MSG.pack(8, MUX_C_ALIVE_CHECK, 1))
        return await within(_alive(reader), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()


async def _alive(reader: asyncio.StreamReader) -> int | None:
    """The pid in the master's answer to an alive check (after its hello)."""
    while True:
        length = struct.unpack(">I", await reader.readexactly(4))[0]
        body = await reader.readexactly(length)
        kind = struct.unpack(">I", body[:4])[0]
        if kind == MUX_S_ALIVE:      # type, request id, pid
            return struct.unpack(">I", body[8:12])[0]
        if kind != MUX_MSG_HELLO:
            return None


async def _ended(pid: int, timeout: float) -> bool:
    """Wait for a process that is not our child to end (a pidfd turns readable when it does)."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):     # gone already, or no pidfd here: nothing to wait on
        return True
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.add_reader(fd, lambda: ended.done() or ended.set_result(True))
    try:
        return await within(ended, timeout)
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
        os.close(fd)


# ---------------------------------------------------------------- sessions
MUX_C_NEW_SESSION = 0x10000002
MUX_S_PERMISSION_DENIED = 0x80000002
MUX_S_FAILURE = 0x80000003
MUX_S_EXIT_MESSAGE = 0x80000004
MUX_S_SESSION_OPENED = 0x80000006
_U32 = struct.Struct(">I")


class MuxError(Exception):
    """The master refused the session or is not there; the message says why."""


def _string(b: bytes) -> bytes:
    return _U32.pack(len(b)) + b


def _packet(body: bytes) -> bytes:
    return _U32.pack(len(body)) + body


class Session:
    """A session opened over a master's control socket: what an ``ssh -S PATH host CMD`` mux client
    process would give, without the process (its exec, config parsing and ~1 MB of memory per slot).

    The command's stdin, stdout and stderr are pipes whose far ends were handed to the master
    (SCM_RIGHTS, as the ssh client does). Closing the control socket ends the session: the master
    closes the channel, so the remote side sees its stdin close, as when a mux client is killed.
    Offers what the slot code uses of asyncio's Process: stdin, stderr, returncode, wait(), kill(); the
    command's stdout is a raw pipe, taken by the slot (take_stdout: see slots.Frames).
    """

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop):
        self._sock = sock
        self._loop = loop
        self.pid = None
        self.returncode: int | None = None
        self.stdin: asyncio.StreamWriter | None = None
        self._stdout = -1                  # the read end of the command's stdout, until taken
        self.stderr: asyncio.StreamReader | None = None
        self._buf = b""
        self._ended: asyncio.Future[int] = loop.create_future()
        self._watch: asyncio.Task[None] | None = None

    async def _packet(self) -> tuple[int, bytes]:
        """The next message from the master: (type, the rest); EOFError when it closed the socket."""
        while True:
            if len(self._buf) >= 4:
                n = _U32.unpack_from(self._buf)[0]
                if len(self._buf) >= 4 + n and n >= 4:
                    body, self._buf = self._buf[4:4 + n], self._buf[4 + n:]
                    return _U32.unpack_from(body)[0], body[4:]
            data = await self._loop.sock_recv(self._sock, 4096)
            if not data:
                raise EOFError
            self._buf += data

    async def _watch_exit(self) -> None:
        status = 255                       # the master went away without saying how the command ended
        try:
            while True:
                kind, rest = await self._packet()
                if kind == MUX_S_EXIT_MESSAGE and len(rest) >= 8:
                    status = _U32.unpack_from(rest, 4)[0]
        except (EOFError, OSError):
            pass
        finally:
            self._end(status)

    def _end(self, status: int) -> None:
        if self.returncode is None:
            self.returncode = status
        self._sock.close()
        if not self._ended.done():
            self._ended.set_result(self.returncode)

    def take_stdout(self) -> int:
        """The read end of the command's stdout as a raw descriptor; the caller closes it."""
        fd, self._stdout = self._stdout, -1
        return fd

    async def wait(self) -> int:
        return await asyncio.shield(self._ended)

    def kill(self) -> None:
        """End the session now (the master closes its channel); returncode -9 as for a killed client."""
        if self.returncode is None:
            self.returncode = -9
            if self._watch is not None:
                self._watch.cancel()
            self._end(-9)


async def open_session(path: str, command: str, limit: int = 1 << 16, timeout: float = 30.0) -> Session:
    """Open a session running `command` on the master listening on `path`; MuxError if it cannot."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    session = Session(sock, loop)
    theirs: list[int] = []
    ours: list[int] = []
    try:
        try:
            await within(loop.sock_connect(sock, path), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise MuxError(f"no master on its control socket ({e})") from None
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        theirs += [in_r, out_w, err_w]
        ours += [in_w, out_r, err_r]
        request = (_U32.pack(MUX_C_NEW_SESSION) + _U32.pack(1) + _string(b"")
                   + _U32.pack(0) * 4              # no tty, no X11, no agent, not a subsystem
                   + _U32.pack(0xFFFFFFFF)         # no escape character
                   + _string(b"") + _string(command.encode()))
        await loop.sock_sendall(sock, _packet(_U32.pack(MUX_MSG_HELLO) + _U32.pack(VERSION)) + _packet(request))
        for fd in theirs:              # one descriptor per message, as the master reads them
            while True:
                try:
                    socket.send_fds(sock, [b"\0"], [fd])
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        for fd in theirs:
            os.close(fd)
        theirs.clear()
        while True:
            try:
                kind, rest = await within(session._packet(), timeout)
            except (EOFError, OSError, asyncio.TimeoutError) as e:
                raise MuxError(f"the master closed its control socket ({type(e).__name__})") from None
            if kind == MUX_MSG_HELLO:
                if _U32.unpack_from(rest)[0] != VERSION:
                    raise MuxError(f"master speaks mux protocol {_U32.unpack_from(rest)[0]}, not {VERSION}")
            elif kind == MUX_S_SESSION_OPENED:
                break
            elif kind in (MUX_S_FAILURE, MUX_S_PERMISSION_DENIED):
                n = _U32.unpack_from(rest, 4)[0] if len(rest) >= 8 else 0
                raise MuxError("session refused: " + rest[8:8 + n].decode("utf-8", "replace"))
            else:
                raise MuxError(f"unexpected mux message {kind:#x}")
        ours.remove(out_r)          # each descriptor from here on belongs to the session
        session._stdout = out_r
        ours.remove(err_r)
        session.stderr = await _reader(loop, err_r, limit)
        ours.remove(in_w)
        transport, protocol = await loop.connect_write_pipe(lambda: streams.FlowControlMixin(loop=loop),
                                                            os.fdopen(in_w, "wb", buffering=0))
        session.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
    except BaseException as e:
        for fd in theirs + ours:
            os.close(fd)
        if session._stdout >= 0:
            os.close(session.take_stdout())
        sock.close()
        if isinstance(e, OSError):     # the master went away while we asked (or we ran out of descriptors)
            raise MuxError(f"control socket: {e.strerror or e}") from None
        raise
    session._watch = asyncio.ensure_future(session._watch_exit())
    return session


async def _reader(loop: asyncio.AbstractEventLoop, fd: int, limit: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                 os.fdopen(fd, "rb", buffering=0))
    return reader
