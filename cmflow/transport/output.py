"""A job's output file in the run directory, named only if the job wrote something.

Creating a named file costs ~0.4 ms on this VM's ext4 (a directory entry and
its journal), more than running ``true``. So output goes to an unnamed file
(``O_TMPFILE``) in the run directory, and it is linked to its name when the
job has ended, only if it is not empty; an empty one is kept for the next
job. Filesystems without ``O_TMPFILE`` get a named file straight away
(removed again if empty).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path


class JobOutput:
    """One output of one job: an fd the child writes to, and the name it gets if not empty."""

    __slots__ = ("path", "fd", "anonymous", "size", "_pool")

    def __init__(self, path: Path, pool: "OutputFiles"):
        self.path = path
        self.size = 0
        self._pool = pool
        self.fd, self.anonymous = pool._fd(path)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> int:
        """Give the file its name if it holds anything; return its size. Idempotent."""
        if self.fd < 0:
            return self.size
        fd, self.fd = self.fd, -1
        self.size = os.fstat(fd).st_size
        if self.anonymous and not self.size:
            self._pool._give(self.path.parent, fd)    # nothing written: the file serves the next job
            return 0
        try:
            if self.anonymous:
                # a dir fd makes Python call linkat(..., AT_SYMLINK_FOLLOW): plain link()
                # would link the /proc symlink itself, not the file it names
                dirfd = os.open(self.path.parent, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.link(f"/proc/self/fd/{fd}", self.path.name, dst_dir_fd=dirfd, follow_symlinks=True)
                finally:
                    os.close(dirfd)
            elif not self.size:
                os.unlink(self.path)
        finally:
            os.close(fd)
        return self.size


class OutputFiles:
    """Unnamed output files, per folder, reused while they stay empty (most stderr is)."""

    def __init__(self) -> None:
        self._free: dict[Path, list[int]] = {}

    def open(self, path: Path) -> JobOutput:
        return JobOutput(path, self)

    def _fd(self, path: Path) -> tuple[int, bool]:
        free = self._free.get(path.parent)
        if free:
            fd = free.pop()
            os.lseek(fd, 0, os.SEEK_SET)   # a child may have moved the shared offset without writing
            return fd, True
        try:
            return os.open(path.parent, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o644), True
        except (OSError, AttributeError):
            return os.open(path, os.O_CREAT | os.O_TRUNC | os.O_RDWR | os.O_CLOEXEC, 0o644), False

    def _give(self, folder: Path, fd: int) -> None:
        self._free.setdefault(folder, []).append(fd)

    def close(self) -> None:
        for fds in self._free.values():
            for fd in fds:
                os.close(fd)
        self._free.clear()


class StreamedOutput:
    """Output that arrives in chunks (from a slot server): the file is created at the first byte.

    It is a raw descriptor, not a Python file: bytes already read are written with
    ``os.write``, and the rest of a frame is moved from the slot's pipe into the file by
    the kernel (``splice_from``), never becoming Python bytes.
    """

    __slots__ = ("path", "fd", "size", "closed")

    def __init__(self, path: Path):
        self.path = path
        self.fd = -1
        self.size = 0
        self.closed = False

    def _open(self) -> int:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        return self.fd

    def write(self, data: bytes | memoryview) -> int:
        n = len(data)
        if n:
            fd = self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            self.size += n
        return n

    def splice_from(self, pipe: int, n: int) -> int | None:
        """Move up to `n` bytes from `pipe` (non-blocking) to the file in the kernel: how many (0 at
        EOF); BlockingIOError when the pipe is empty; None where splice cannot be used (no
        os.splice, or a filesystem without it): the caller then reads and writes."""
        global _splice
        if not _splice:
            return None
        fd = self._open()
        try:
            moved = os.splice(pipe, fd, min(n, SPLICE_MAX), flags=_SPLICE_FLAGS)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                _splice = False    # e.g. a file system without splice_write: read and write, from now on
                return None
            raise
        self.size += moved
        return moved

    def close(self) -> int:
        """Finish the file; idempotent. Returns the size written."""
        if self.closed:
            return self.size
        self.closed = True
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)
        return self.size


SPLICE_MAX = 1 << 20     # bytes one splice call may move (a pipe holds at most pipe-max-size)
_splice = hasattr(os, "splice")
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if _splice else 0
