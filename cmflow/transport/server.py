"""The slot server: runs a slot's jobs one at a time, on this machine or a remote one.

This file is sent as it is to ``python3 -I -S`` on every slot (over ssh, or
locally), so it is self-contained: standard library only, Python >= 3.6, no
imports from cmflow. It is not imported by cmflow itself.

Why a server and not a plain ``sh``: a job must own its outputs and must not
outlive itself. The server

* is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): whatever a job
  starts (``setsid``, double forks, ``nohup``) stays its descendant instead of
  escaping to init, and it runs one job at a time, so every descendant that
  is not a detached leftover belongs to the running job;
* gives each job its own stdout and stderr pipes, so nothing a job leaves
  behind can write into a later job's output;
* ends a job when its main process has exited *and* every other descendant
  is dead: TERM, a grace period, then stop-and-KILL (stopped first, so
  none can fork while it is being killed);
* kills the running job and exits when its stdin closes: the controller (the
  ssh session or cmflow itself) is gone.

Protocol: the first stdin line is ``C<config>``; then ``J<job>`` lines
(``{"s": seq, "c": command, "d": detach}``; both as hex of marshal version 2,
see ``_decode``) and ``K<seq>`` (kill the
running job). Stdout carries frames: 1 byte type, 4 bytes big-endian length,
payload. ``R`` ready (payload: pid; then, if the config's ``tell`` lists
environment variables, a space and a JSON object of their values), ``O``/``E``
job stdout/stderr, ``X`` end of job (payload: exit status, or -signal). A
short job's frames leave in one write (see ``hold``).
"""
import errno
import marshal
import os
import select
import struct
import sys
import time

try:      # the C module itself: `signal` imports enum, a third of a bare interpreter's start-up
    import _signal as signal
except ImportError:
    import signal

try:
    import fcntl
    import termios
except ImportError:      # not a Unix: no FIONREAD, output is read and written
    fcntl = termios = None

HDR = struct.Struct(">cI")
CHUNK = 1 << 18
PIPE_SIZE = 1 << 18      # a job's stdout pipe: fewer, larger reads for big outputs
F_SETPIPE_SZ = 1031
PR_SET_CHILD_SUBREAPER = 36
GATHER = 1 << 16         # once a job's output passed this, it is sent in frames of this much or more ...
GATHER_WAIT = 0.0005     # ... by waiting this long (seconds) when less is in the pipe
SPLICE_MIN = GATHER      # less output than this in the pipe is read, and held to go out with what follows
HOLD_WAIT = 0.05         # seconds held output may wait for the job's end (or more output) before it is sent


def _pending(fd):
    """Bytes waiting in pipe `fd` (None where FIONREAD is not available)."""
    if termios is None:
        return None
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return None
    return struct.unpack("i", buf)[0]



def _subreaper():
    try:
        return _prctl(PR_SET_CHILD_SUBREAPER, 1) == 0
    except Exception:  # not Linux, or no ctypes: orphans escape to init (documented limit)
        return False


def _prctl(option, arg):
    """prctl(2) through _ctypes, the C half of ctypes: the ctypes package's Python half (its
    classes, struct, ...) cost a quarter of a slot server's start-up. ctypes itself where that fails."""
    try:
        import _ctypes

        class Int(_ctypes._SimpleCData):
            _type_ = "i"

        class Func(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = Int

        class Libc(object):
            _handle = _ctypes.dlopen(None, os.RTLD_LAZY)

        return Func(("prctl", Libc()))(option, arg, 0, 0, 0)
    except (ImportError, AttributeError, OSError, TypeError):
        import ctypes
        return ctypes.CDLL(None).prctl(option, arg, 0, 0, 0)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


class ControllerGone(Exception):
    pass


class Server:
    def __init__(self, cfg):
        self.me = os.getpid()
        self.env = dict(os.environ)
        self.env.update(cfg.get("env") or {})
        self.grace = float(cfg.get("grace", 2.0))
        self.tell = cfg.get("tell") or []
        self.held = bytearray()      # frames not written yet (see hold)
        self.held_since = 0.0
        self.workdir_error = None
        wd = cfg.get("workdir")
        if wd:
            wd = os.path.expanduser(wd)
            try:
                os.chdir(wd)
                self.env["PWD"] = wd
            except OSError as e:
                # every job then fails naming the folder: a job failure, not a dead host
                self.workdir_error = "cmflow: cannot enter workdir %r: %s\n" % (cfg.get("workdir"), e.strerror)
        self.subreaper = _subreaper()
        self.exempt = set()          # pids of detached leftovers: never killed, never waited for
        self.inbuf = b""
        self.stdin_open = True
        self.job = None              # seq of the running job
        self.kill_asked = False
        self.main_status = None
        self.main_pid = None
        self.children_left = True    # the last reap found children still alive (False: none at all)
        r, w = os.pipe()
        for fd in (r, w):
            os.set_blocking(fd, False)
        self.wake = r
        signal.set_wakeup_fd(w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(s, self._stop)
        self.devnull = os.open(os.devnull, os.O_RDONLY)
        self.splice = hasattr(os, "splice")    # a job's output moved to our stdout in the kernel
        self.relayed = {}                       # pipe fd -> bytes of it sent so far

    def _stop(self, *_):
        self.stdin_open = False
        self.kill_asked = True

    # ------------------------------------------------------------------ frames
    # A short job's frames (its output, then its end) leave in ONE write. Two small writes
    # in a row on a TCP stream without TCP_NODELAY (srun's I/O connection to a step; ssh)
    # make the second wait for the first one's delayed ACK: ~40 ms a job.
    def send(self, kind, payload=b""):
        """Write a frame now, after anything held."""
        self.hold(kind, payload)
        self.flush()

    def hold(self, kind, payload):
        """Queue a frame; it goes with the next send, at CHUNK bytes, or after HOLD_WAIT."""
        if not self.held:
            self.held_since = time.monotonic()
        self.held += HDR.pack(kind, len(payload)) + payload
        if len(self.held) >= CHUNK:
            self.flush()

    def flush(self):
        if self.held:
            data = bytes(self.held)
            del self.held[:]
            self.send_raw(data)

    def hold_left(self):
        """Seconds until held output must go (None: nothing held)."""
        return max(0.0, self.held_since + HOLD_WAIT - time.monotonic()) if self.held else None

    def send_header(self, kind, n):
        self.flush()
        self.send_raw(HDR.pack(kind, n))

    def send_raw(self, data):
        try:
            _write_all(1, data)
        except (BrokenPipeError, OSError):
            raise ControllerGone()

    # ------------------------------------------------------------------ input
    def read_stdin(self):
        try:
            data = os.read(0, CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.stdin_open = False
            self.kill_asked = True
            return
        self.inbuf += data

    def next_message(self):
        i = self.inbuf.find(b"\n")
        if i < 0:
            return None
        line, self.inbuf = self.inbuf[:i], self.inbuf[i + 1:]
        return line

    def handle(self, line):
        kind, rest = line[:1], line[1:]
        if kind == b"K":
            if self.job is not None and rest.decode() == str(self.job):
                self.kill_asked = True
        elif kind == b"J":
            if self.job is not None:
                raise SystemExit("cmflow slot server: a job was sent while another runs")
            self.run_job(_decode(rest))

    # ------------------------------------------------------------------ processes
    def children(self, pid):
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            return []
        kids = []
        for t in tids:
            try:
                with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                    kids.extend(int(x) for x in f.read().split())
            except OSError:
                return None   # no children files (old kernel): scan by parent pid
        return kids

    def descendants(self):
        """Every live descendant of this server, detached leftovers and their trees left out."""
        found = []
        stack = [self.me]
        by_parent = None
        while stack:
            p = stack.pop()
            kids = self.children(p) if by_parent is None else by_parent.get(p, [])
            if kids is None:
                by_parent = self._by_parent()
                kids = by_parent.get(p, [])
            for k in kids:
                if k not in self.exempt:
                    found.append(k)
                    stack.append(k)
        return found

    def _by_parent(self):
        table = {}
        try:
            names = os.listdir("/proc")
        except OSError:
            names = []
        if names:
            for name in names:
                if name.isdigit():
                    try:
                        with open("/proc/%s/stat" % name, "rb") as f:
                            stat = f.read()
                    except OSError:
                        continue
                    ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
                    table.setdefault(ppid, []).append(int(name))
            return table
        import subprocess   # no /proc at all: POSIX ps
        out = subprocess.run(["ps", "-A", "-o", "pid=", "-o", "ppid="], stdout=subprocess.PIPE).stdout
        for line in out.decode().splitlines():
            pid, ppid = (int(x) for x in line.split())
            table.setdefault(ppid, []).append(pid)
        return table

    def reap(self):
        """Collect every child that has exited; note the main process's status, and whether any child is left."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children_left = False
                return
            if pid == 0:
                self.children_left = True
                return
            self.exempt.discard(pid)
            if pid == self.main_pid:
                self.main_status = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)

    def wait_wake(self, timeout):
        try:
            r, _, _ = select.select([self.wake], [], [], max(timeout, 0))
        except InterruptedError:
            r = []
        if r:
            self.clear_wake()
        else:
            self.reap()

    def clear_wake(self):
        """A signal came (the wake-up pipe is readable): empty the pipe, then reap."""
        try:
            while os.read(self.wake, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        self.reap()

    def signal_all(self, pids, sig):
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass

    def kill_tree(self, grace):
        """End every descendant: TERM, up to `grace` seconds, then stop them all and KILL."""
        pids = self.descendants()
        if not pids:
            return
        if grace > 0:
            self.signal_all(pids, signal.SIGTERM)
            self.signal_all(pids, signal.SIGCONT)   # a stopped process must wake to see TERM
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.wait_wake(min(0.05, deadline - time.monotonic()))
                if not self.descendants():
                    return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # stop until the set no longer grows: nothing can fork once stopped
            seen = set()
            while True:
                pids = [p for p in self.descendants() if p not in seen]
                if not pids:
                    break
                self.signal_all(pids, signal.SIGSTOP)
                seen.update(pids)
            if not seen:
                return
            self.signal_all(seen, signal.SIGKILL)
            self.wait_wake(0.05)

    # ------------------------------------------------------------------ jobs
    def spawn(self, command):
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            import fcntl
            fcntl.fcntl(out_r, F_SETPIPE_SZ, PIPE_SIZE)
        except (ImportError, OSError):
            pass   # not Linux, or over /proc/sys/fs/pipe-max-size: the default size works too
        argv = ["/bin/sh", "-c", command]
        if hasattr(os, "posix_spawn") and sys.version_info >= (3, 8):
            pid = os.posix_spawn("/bin/sh", argv, self.env, setsid=True,
                                 setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD),
                                 file_actions=[(os.POSIX_SPAWN_DUP2, self.devnull, 0),
                                               (os.POSIX_SPAWN_DUP2, out_w, 1),
                                               (os.POSIX_SPAWN_DUP2, err_w, 2)])
        else:
            pid = os.fork()
            if pid == 0:
                try:
                    os.setsid()
                    for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
                        signal.signal(s, signal.SIG_DFL)
                    os.dup2(self.devnull, 0)
                    os.dup2(out_w, 1)
                    os.dup2(err_w, 2)
                    os.execve("/bin/sh", argv, self.env)
                finally:
                    os._exit(127)
        os.close(out_w)
        os.close(err_w)
        return pid, out_r, err_r

    def run_job(self, job):
        self.job = job["s"]
        self.kill_asked = False
        detach = bool(job.get("d"))
        if self.workdir_error:
            self.hold(b"E", self.workdir_error.encode())
            self.finish(1)
            return
        self.main_status = None
        self.main_pid, out_r, err_r = self.spawn(job["c"])
        pipes = {out_r: b"O", err_r: b"E"}
        killed = False
        while True:
            if self.kill_asked and not killed:
                killed = True
                self.kill_tree(self.grace)     # timeout, cancel or controller gone: the whole tree
            if self.main_status is not None:
                if detach and not killed:
                    # the job's leftovers may live on; what they write after this is not the job's
                    self.exempt.update(self.descendants())
                    self.drain(pipes, 0)
                    break
                # No child left at all means no descendant either (the usual case, and no /proc walk):
                # the job's orphans are re-parented to us (subreaper) before its main process can be
                # reaped, and any other descendant lives under a child of ours.
                if self.children_left and self.descendants():
                    # left behind by the job: ended now, so it cannot touch the next job
                    killed = True
                    self.kill_tree(self.grace)
                # every writer is dead (without a subreaper one may live outside our tree: a short bound)
                self.drain(pipes, 0 if self.subreaper else 1.0, bounded=False)
                break
            line = self.next_message()    # a kill that came in the same read as the job
            if line is not None:
                self.handle(line)
                continue
            if self.hold_left() == 0:
                self.flush()
            watch = list(pipes) + [self.wake] + ([0] if self.stdin_open else [])
            try:
                ready, _, _ = select.select(watch, [], [], self.hold_left())
            except InterruptedError:
                continue
            for fd in ready:
                if fd == self.wake:
                    self.clear_wake()
                elif fd == 0:
                    self.read_stdin()
                    line = self.next_message()
                    while line is not None:
                        self.handle(line)
                        line = self.next_message()
                else:
                    self.relay(pipes, fd)
        for fd in pipes:
            os.close(fd)
        self.finish(self.main_status if self.main_status is not None else -signal.SIGKILL)

    def relay(self, pipes, fd):
        avail = _pending(fd)
        if avail is not None and avail < GATHER and self.main_status is None \
                and self.relayed.get(fd, 0) >= GATHER:
            # A big output written in small pieces (head, cat: 4-8 KiB) wakes us for each;
            # a moment's wait lets it fill the pipe, so it travels in few large frames (fewer
            # wake-ups here, fewer frames for the controller). Small outputs never wait.
            time.sleep(GATHER_WAIT)
            avail = _pending(fd)
        if avail and self.splice and avail >= SPLICE_MIN:
            n = min(avail, CHUNK)
            self.send_header(pipes[fd], n)
            try:
                self.splice_out(fd, n)
            except OSError as e:
                if e.errno == errno.EPIPE:
                    raise ControllerGone()
                raise
            self.relayed[fd] = self.relayed.get(fd, 0) + n
            return
        try:
            data = os.read(fd, min(avail, CHUNK) if avail else CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            self.hold(pipes[fd], data)
            self.relayed[fd] = self.relayed.get(fd, 0) + len(data)
        else:
            os.close(fd)
            del pipes[fd]
            self.relayed.pop(fd, None)

    def splice_out(self, fd, n):
        """Move exactly n bytes (known to be in the pipe) from `fd` to our stdout, in the kernel."""
        while n:
            try:
                moved = os.splice(fd, 1, n)
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                self.splice = False     # this stdout takes no splice: copy, from now on
                while n:
                    data = os.read(fd, n)
                    self.send_raw(data)
                    n -= len(data)
                return
            if moved == 0:
                raise ControllerGone()
            n -= moved

    def drain(self, pipes, timeout, bounded=True):
        """Send what is left in the job's pipes: to EOF, or what arrives within `timeout` (+2 s at
        most) when `bounded` (a detached job's leftovers may write for ever). Not bounded (every
        writer is dead, the data is finite), a slow controller only slows it down: it stops short of
        EOF only when nothing arrives for `timeout` + 2 s (a pipe held open outside the job's tree)."""
        deadline = time.monotonic() + timeout
        while pipes:
            left = deadline - time.monotonic()
            if bounded and left < -2:
                break
            try:
                ready, _, _ = select.select(list(pipes), [], [], max(left, 0) if bounded else timeout + 2)
            except InterruptedError:
                continue
            if not ready:
                break
            for fd in ready:
                self.relay(pipes, fd)

    def finish(self, status):
        self.job = None
        self.main_pid = None
        self.send(b"X", str(status).encode())

    # ------------------------------------------------------------------ main
    def serve(self):
        told = {name: os.environ.get(name, "") for name in self.tell}
        if told:
            import json    # only where the controller asked (a Slurm step's ids): JSON, safe to read there
            self.send(b"R", (str(self.me) + " " + json.dumps(told)).encode())
        else:
            self.send(b"R", str(self.me).encode())
        try:
            while self.stdin_open:
                line = self.next_message()
                if line is not None:
                    self.handle(line)
                    continue
                try:
                    ready, _, _ = select.select([0, self.wake], [], [])
                except InterruptedError:
                    continue
                if self.wake in ready:
                    self.clear_wake()
                if 0 in ready:
                    self.read_stdin()
        except ControllerGone:
            pass
        # the controller is gone (stdin closed, a signal, or stdout broken): nothing of a job may stay
        self.kill_tree(self.grace)


def _decode(line):
    """A message from the controller: hex of marshal (version 2: every Python 3 reads it). Not JSON:
    importing json (and re with it) would cost more than the rest of the server's start-up."""
    text = line.decode("ascii") if isinstance(line, bytes) else line
    # stripped: the config line keeps its newline, which fromhex() skips only from Python 3.7 on
    return marshal.loads(bytes.fromhex(text.strip()))


def main(config_line):
    os.set_blocking(0, False)
    cfg = _decode(config_line)
    Server(cfg).serve()


def _read_config():
    buf = b""
    while not buf.endswith(b"\n"):
        c = os.read(0, 1)    # byte by byte: nothing past the config line may be taken from stdin here
        if not c:
            sys.exit(0)
        buf += c
    return buf[1:].decode("utf-8")


if __name__ == "__main__":
    main(_read_config())
