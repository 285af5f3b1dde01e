"""ssh transport: the system OpenSSH client, one slot server per slot, one master per 8 slots.

Why it is fast: a new ssh connection costs ~200 ms of CPU; a job sent down a
session that is already open costs well under a millisecond. So each host gets
``ceil(slots / SESSIONS_PER_MASTER)`` ControlMaster connections, and each slot
one long-lived session multiplexed over a master, running the slot server
(server.py, sent down the session to the host's ``python3``). Jobs, their
output and their ends travel as frames on that session (see slots.py).
A connection is opened by its first slot, whose own ssh is the master, in
the foreground, without ControlPersist: one ssh process per connection, as
pssh has one per host; it lives while any session on it does. The other slots
ask it for their sessions over its control socket (mux.py), without an ssh
process each; closing ends the masters the same way.

Why a server and not a plain ``sh`` per slot: a job's outputs are its own
pipes, so a process a job leaves behind cannot write into the next job's
output, and the server (a child subreaper) ends everything the job started
before the job counts as over. When cmflow dies, its ssh clients, control
connections and pipes close, so the master closes their sessions; the server sees
its stdin close, kills the running job and exits; the master ends with its last
session (a master started for helpers alone, ``-N -f``, ControlPersist seconds later).

Limits of a stock sshd: ``MaxSessions 10`` channels per connection (we use at
most 8 slots per master) and ``MaxStartups 10:30:100`` unauthenticated
connections (masters of one host are opened one at a time). A hung host is
noticed after ``ServerAliveInterval`` x ``ServerAliveCountMax`` (15 s x 3 by
default; an inventory's ``ssh_options`` win over these defaults).
"""
from __future__ import annotations

import asyncio
import functools
import os
import shlex
import shutil
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..hosts import Host
from . import ConnectionLost, Helper, mux, procs, tmpdirs
from .procs import kill as _kill
from .slots import Slot, SlotTransport, _close as _close_proc, boot_argv, spawn_slot

SESSIONS_PER_MASTER = 8
CONNECT_TIMEOUT = 10
CONTROL_PERSIST = 3       # seconds a master outlives its last session (cmflow killed: it goes soon)

def classify_ssh_error(stderr: str, host: Host) -> str:
    """One line that says why ssh could not connect, with the fix where there is one."""
    text = stderr.strip()
    low = text.lower()
    if "host key verification failed" in low or "no ed25519 host key is known" in low or \
            "host key for" in low and "not known" in low or "remote host identification has changed" in low:
        changed = "changed" in low
        return (f"host key of {host.name} {'has CHANGED' if changed else 'is not known'}; check it, then run "
                f"`cmflow hosts trust {host.name}{' --replace' if changed else ''}`")
    if "permission denied" in low:
        return f"authentication failed for {host.user + '@' if host.user else ''}{host.hostname}"
    if "timed out" in low:
        return f"connection to {host.hostname} timed out"
    if "connection refused" in low:
        return f"connection to {host.hostname} refused"
    if "could not resolve" in low:
        return f"cannot resolve host name {host.hostname}"
    last = text.splitlines()[-1] if text else "ssh exited with status 255"
    return last


# Every ssh call below ends its options with "--" before the host: a host name can
# never be read as an option (hosts.py also refuses names that start with '-').
def ssh_base_argv(host: Host, ssh_config: str | None, connect_timeout: float = CONNECT_TIMEOUT) -> list[str]:
    """ssh options for a host: the inventory's settings, never a shell; host keys stay strict."""
    argv = ["ssh"]
    ssh_config = host.ssh_config or ssh_config     # an included inventory's hosts keep their own config
    if ssh_config:
        argv += ["-F", ssh_config]
    for opt in host.ssh_options:   # first: for each option ssh keeps the first value it is given
        argv += ["-o", opt]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(connect_timeout)}",
             "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3", "-T"]
    if host.port:
        argv += ["-p", str(host.port)]
    if host.user:
        argv += ["-l", host.user]
    if host.identity:
        argv += ["-i", host.identity, "-o", "IdentitiesOnly=yes"]
    return argv


@dataclass(eq=False)
class _Leader:
    """The first slot of a master: its own ssh is the ControlMaster (one process, one handshake)."""

    done: asyncio.Future[None]
    held: list[asyncio.Lock | asyncio.Semaphore]   # this host's connect lock and the run's fanout window
    why: str = ""


class SshTransport(SlotTransport):
    def __init__(self, host: Host, ssh_config: str | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 window: asyncio.Semaphore | None = None):
        super().__init__(host)
        self._window = window     # the run's fanout: connections being opened at once, all hosts
        self.base = ssh_base_argv(host, ssh_config, connect_timeout)
        self._dir: str | None = None
        self._n_masters = max(1, -(-host.slots // SESSIONS_PER_MASTER))
        self._masters: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._paths: list[str] = []
        self._sessions: Counter[int] = Counter()
        self._master_lock = asyncio.Lock()   # one new connection at a time per host (MaxStartups)
        self._helper_lock: asyncio.Lock | None = None
        self._early: asyncio.Task[Slot] | None = None    # a slot opened before a job asked (warm)
        self._masters_left: list[Slot] = []     # leaders whose slot went, their ssh still master of others
        self._closing: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ connections
    def _new_control_path(self, index: int) -> str:
        if self._dir is None:
            # short and private: unix socket paths are limited to ~107 bytes
            self._dir = tmpdirs.make("h")
        # a fresh path per (re)connection: a dead master's stale socket never blocks a new one
        path = os.path.join(self._dir, f"m{index}.{len(self._paths)}")
        self._paths.append(path)
        return path

    def _mux(self, path: str) -> list[str]:
        return ["-o", "ControlMaster=no", "-o", f"ControlPath={path}"]

    def _usable(self, index: int) -> bool:
        """A master that is up, or being brought up by a leader or `-N -f`."""
        entry = self._masters.get(index)
        return entry is not None and (not entry[1].done() or entry[1].exception() is None)

    async def _master(self, index: int) -> str:
        entry = self._masters.get(index)
        if entry is not None and self._usable(index):
            await asyncio.shield(entry[1])
            return entry[0]
        # no slot is opening one (a helper came first): a master without a session
        path = self._new_control_path(index)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._masters[index] = (path, fut)
        try:
            async with self._master_lock:
                if self._window is None:
                    await self._start_master(path)
                else:
                    async with self._window:
                        await self._start_master(path)
        except BaseException as e:
            _fail(fut, e)
            raise
        fut.set_result(None)
        return path

    def _forget_master(self, index: int, path: str) -> None:
        if self._masters.get(index, ("",))[0] == path:
            del self._masters[index]

    async def _start_master(self, path: str) -> None:
        # -f: fork to the background once authenticated, so our child's exit is the
        # "ready" signal; a short ControlPersist ends an orphaned master soon after
        # its sessions close (cmflow killed), and ends nothing while a slot is open.
        argv = [*self.base, "-o", "ControlMaster=yes", "-o", f"ControlPath={path}",
                "-o", f"ControlPersist={CONTROL_PERSIST}", "-N", "-f", "--", self.host.hostname]
        proc = await _spawn(argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                            stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await proc.communicate()
        except BaseException:
            await _kill(proc)   # cancelled while connecting: no half-made master left behind
            raise
        if proc.returncode != 0:
            raise ConnectionLost(classify_ssh_error(err.decode("utf-8", "replace"), self.host))

    # ------------------------------------------------------------------ slots
    def warm(self) -> None:
        """Open the first slot (and with it the connection) now, before any job asks for one: a run
        warms up the hosts it will surely use while it sets itself up. The first job takes it."""
        if self._early is None and not self._all and not self._closed:
            self._early = asyncio.ensure_future(super()._open_slot())

    async def _open_slot(self) -> Slot:
        early, self._early = self._early, None
        if early is not None:
            return await early      # cancelled with the job that waits for it, as an opening slot is
        return await super()._open_slot()

    async def _start(self) -> tuple[Any, int, Any]:
        """A slot's session: the first of a connection is its master's own (see _start_leader);
        the others are asked of the master over its control socket (mux.py), as an ``ssh -S``
        client would, without that client's process (exec, config parsing, ~1 MB per slot)."""
        # the master with the fewest sessions; never more than 8 on one connection
        index = min(range(self._n_masters), key=lambda i: self._sessions[i])
        self._sessions[index] += 1
        why = ""
        try:
            for _ in range(2):
                if not self._usable(index):
                    return await self._start_leader(index)
                path = await self._master(index)
                try:
                    session = await mux.open_session(path, REMOTE_COMMAND, limit=1 << 20)
                    return session, session.take_stdout(), (index, path, None)
                except mux.MuxError as e:
                    # the master is gone (its connection died, or it outlived ControlPersist with no
                    # session): a new connection, once; a second failure is the host's
                    self._forget_master(index, path)
                    why = str(e)
            raise ConnectionLost(f"session to {self.host.name} not opened: {why}")
        except BaseException:
            self._sessions[index] -= 1
            raise

    async def _start_leader(self, index: int) -> tuple[asyncio.subprocess.Process, int, Any]:
        """Open a connection whose first session is this slot's, as pssh opens one ssh per host.

        With ControlMaster=yes and no ControlPersist, the ssh process is the master and this
        session's client at once (with ControlPersist it would fork a second process, the
        master, ~1 MB more per host). It outlives its own session while others use it (see
        _discard). The slot's ready frame is the master's ready signal: the other slots of the
        host wait for it and multiplex over the master. The host's connect lock and a place in
        the fanout window are held until then (released in _opened/_unopened).
        """
        path = self._new_control_path(index)
        leader = _Leader(asyncio.get_running_loop().create_future(), [])
        self._masters[index] = (path, leader.done)
        try:
            for gate in (self._master_lock, self._window):
                if gate is not None:
                    await gate.acquire()
                    leader.held.append(gate)
            # the session's stdout: a raw pipe for the slot (see slots.Frames)
            proc, out_r = await spawn_slot(*self.base, "-o", "ControlMaster=yes", "-o", f"ControlPath={path}",
                                           "--", self.host.hostname, REMOTE_COMMAND, spawn=_spawn)
        except BaseException as e:
            _release(leader)
            _fail(leader.done, e)
            raise
        return proc, out_r, (index, path, leader)

    def _opened(self, tag: Any) -> None:
        leader = tag[2]
        if leader is not None:
            _release(leader)
            if not leader.done.done():
                leader.done.set_result(None)

    def _unopened(self, tag: Any) -> None:
        index, path, leader = tag
        self._sessions[index] -= 1
        if leader is not None:
            _release(leader)
            _fail(leader.done, ConnectionLost(leader.why or f"no connection to {self.host.name}"))
            self._forget_master(index, path)

    def _start_failed(self, stderr: str, tag: Any) -> str:
        index, path, leader = tag
        text = stderr.strip()
        if "python3" in text and ("not found" in text or "No such file" in text):
            why = f"{self.host.name} has no python3 (cmflow runs each slot's server with it)"
        elif "cmflow: cannot enter workdir" in text:
            why = text.splitlines()[-1]
        else:
            self._forget_master(index, path)
            why = classify_ssh_error(text, self.host) if text else f"slot server on {self.host.name} did not start"
        if leader is not None:
            leader.why = why     # the slots waiting for this master fail with the same reason
        return why

    def _lost(self, slot: Slot) -> None:
        index, path, _ = slot.tag
        self._forget_master(index, path)

    async def _discard(self, slot: Slot) -> None:
        index, _, leader = slot.tag
        if slot in self._all:
            self._sessions[index] -= 1
        if leader is not None and self._sessions[index] > 0 and slot.proc.returncode is None:
            # this slot's ssh is the master of the other slots' sessions: it ends its own session
            # (stdin closed) and stays their master, until the last of them ends (aclose waits)
            self._all.discard(slot)
            if slot.proc.stdin and not slot.proc.stdin.is_closing():
                slot.proc.stdin.close()
            self._masters_left.append(slot)
            return
        await super()._discard(slot)

    # ---------------------------------------------------------------- helpers
    async def exec(self, script: str, stdin: int | None = None, stdout: int | None = None) -> Helper:
        """Run a short ``sh`` script on the host over an existing master (no new authentication).

        For data movement (cmflow/files): ``stdin``/``stdout`` may be file descriptors, so a file
        streams through the session without passing through Python. One helper at a time per
        host: a master carries 8 slot sessions and one helper (MaxSessions 10).
        """
        if self._helper_lock is None:
            self._helper_lock = asyncio.Lock()
        async with self._helper_lock:
            try:
                path = await self._master(0)
            except ConnectionLost as e:
                return Helper(None, b"", str(e))
            argv = [*self.base, *self._mux(path), "--", self.host.hostname, f"sh -c {shlex.quote(script)}"]
            proc = await _spawn(argv, stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else asyncio.subprocess.PIPE,
                                stderr=asyncio.subprocess.PIPE)
            try:
                out, err = await proc.communicate()
            except BaseException:
                await asyncio.shield(_kill(proc))
                raise
            text = err.decode("utf-8", "replace")
            if proc.returncode == 255:   # ssh's own failure: the session or the master is gone
                self._forget_master(0, path)
                return Helper(None, out or b"", classify_ssh_error(text, self.host) if text.strip()
                              else f"session to {self.host.name} lost")
            return Helper(proc.returncode, out or b"", text)

    # ------------------------------------------------------------------ close
    async def aclose(self) -> None:
        """Close every slot and master. A second call while the first runs (a run retires a host's
        connection once its jobs are over, then closes every transport) waits for it to end."""
        while self._closing is not None and not self._closing.done():
            await asyncio.shield(self._closing)
        self._closing = asyncio.ensure_future(self._close_all())
        await asyncio.shield(self._closing)

    async def _close_all(self) -> None:
        early, self._early = self._early, None
        if early is not None:     # warmed up and never taken: an open slot (closed below), or not yet
            early.cancel()
            await asyncio.gather(early, return_exceptions=True)
        await super().aclose()
        await asyncio.gather(*(self._exit_master(p) for p in self._paths if os.path.exists(p)),
                             *(_end_master(s) for s in self._masters_left))
        self._masters_left.clear()
        self._masters.clear()
        if self._dir:
            tmpdirs.remove(self._dir)
            self._dir = None

    async def _exit_master(self, path: str) -> None:
        await mux.terminate(path)


@functools.lru_cache(maxsize=None)
def _program(name: str) -> str:
    """Where `name` is on PATH: looked up once per process, not by every exec of ssh (a pure lookup,
    forgotten when the program turns out to be gone)."""
    return shutil.which(name) or name


async def _spawn(argv: list[str], **kw: Any) -> asyncio.subprocess.Process:
    """Start an ssh client in its own session (a Ctrl-C reaches cmflow only, which ends jobs in order)."""
    try:
        return await procs.spawn(_program(argv[0]), *argv[1:], **kw)
    except FileNotFoundError:
        _program.cache_clear()
        raise ConnectionLost("no ssh client on this machine (install openssh-client)") from None


async def _end_master(slot: Slot) -> None:
    """A leader's ssh that stayed master of other sessions: it ends with the last (bounded wait)."""
    try:
        await _close_proc(slot.proc)
    finally:
        if slot.frames is not None:
            slot.frames.close()


def _release(leader: _Leader) -> None:
    while leader.held:
        leader.held.pop().release()


def _fail(fut: asyncio.Future[None], e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e if isinstance(e, Exception) else ConnectionLost("cancelled"))
        fut.exception()  # retrieved: the slots waiting for it say why themselves


# run by the remote user's login shell: the slot server's bootstrap, reading the server from stdin
REMOTE_COMMAND = "exec python3 " + " ".join(shlex.quote(a) for a in boot_argv("python3")[1:])
