"""Private temp folders that never outlive cmflow, even when it is SIGKILLed.

All of them live in one ``cmf-*`` folder per cmflow process. A small janitor
(``sh``, in its own session) holds the read end of a pipe whose only write
end is cmflow's: when cmflow exits, however it exits, the janitor reads EOF
and removes that folder. Folders are also removed as soon as their owner is
done with them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

_root: str | None = None
_owner = 0          # the pid that made _root: a forked child makes its own


def _parent() -> str:
    global _root, _owner
    if _root is None or _owner != os.getpid() or not os.path.isdir(_root):
        base = tempfile.gettempdir()
        # ssh's ControlPath (a unix socket, ~107 bytes, plus ssh's own suffix) must fit under it
        _root = tempfile.mkdtemp(prefix="cmf-", dir=base if len(base) <= 48 else "/tmp")
        _owner = os.getpid()
        r, w = os.pipe()          # both ends close-on-exec: no other child inherits the write end
        try:
            subprocess.Popen(["/bin/sh", "-c", 'read _; rm -rf -- "$0"', _root], stdin=r,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            os.close(w)   # no janitor: the folder is still removed by its owners on a clean exit
        finally:
            os.close(r)
        # w stays open, unused, until this process ends; that is the janitor's signal
    return _root


def make(prefix: str) -> str:
    """A new private folder (short path: unix socket paths are limited to ~107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir=_parent())


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
