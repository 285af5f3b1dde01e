"""Task modules and inline defs: loading them, and the ``@task`` decorator.

A task is a plain Python callable that returns a shell command string. The
optional decorator only attaches options; the def is called exactly as
written. Modules are searched next to the flow file, then on ``CMFLOW_PATH``,
then on ``sys.path``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

PARSERS = ("auto", "json", "text", "lines")


@dataclass(frozen=True)
class TaskOptions:
    """Options set with ``@task``; None means "use the run's default"."""

    parse: str | Callable[[str], Any] = "auto"
    hosts: str | None = None
    timeout: float | None = None
    retries: int | None = None
    files: Any = None        # a cmflow.files.Command with no command: inputs/outputs of every call
    detach: bool = False     # leave processes the job started running after it ends (daemons)


DEFAULT_OPTIONS = TaskOptions()
_ATTR = "__cmflow_task__"


def task(fn: Callable | None = None, *, parse: str | Callable[[str], Any] = "auto", hosts: str | None = None,
         timeout: float | None = None, retries: int | None = None, inputs: Any = (), outputs: Any = (),
         detach: bool = False):
    """Mark a def as a cmflow task and set its options.

    Usable bare (``@task``) or with options (``@task(parse="lines", timeout=60)``).
    ``inputs`` and ``outputs`` are files every call of the task reads and writes
    (as in ``command()``), added to those its command declares.
    ``detach=True`` lets processes the job leaves behind run on after it ends
    (they are still killed on timeout or cancellation; see docs/processes.md).
    The function is returned unchanged apart from one attribute.
    """
    if isinstance(parse, str) and parse not in PARSERS:
        raise ValueError(f"parse must be one of {', '.join(PARSERS)} or a callable, not {parse!r}")
    if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise ValueError(f"retries must be a non-negative integer, not {retries!r}")
    files = None
    if inputs or outputs:
        from .files.spec import command

        files = command("", inputs, outputs)
    if not isinstance(detach, bool):
        raise ValueError(f"detach must be True or False, not {detach!r}")
    options = TaskOptions(parse, hosts, timeout, retries, files, detach)

    def mark(f: Callable) -> Callable:
        setattr(f, _ATTR, options)
        return f

    return mark(fn) if fn is not None else mark


def reraise_interrupt(e: BaseException) -> None:
    """Re-raise Ctrl-C; any other exception out of a task's own code (even SystemExit) is that code's error.

    A task module that calls sys.exit() while imported, or a def that raises
    GeneratorExit or a bare BaseException, must not end cmflow (with status 0).
    """
    if isinstance(e, KeyboardInterrupt):
        raise e


def options_of(fn: Callable) -> TaskOptions:
    return getattr(fn, _ATTR, DEFAULT_OPTIONS)


_LOCAL = "__cmflow_local__"


def local(fn: Callable) -> Callable:
    """Mark a def as a local function: cmflow calls it in its own process on values
    (when its run-time arguments are ready) and uses what it returns as a value.
    It is not a job: it is not sent to any host and returns a value, not a command."""
    if not callable(fn):
        raise TypeError("@local decorates a def; write @local, not @local(...)")
    setattr(fn, _LOCAL, True)
    return fn


def is_local(fn: Any) -> bool:
    return getattr(fn, _LOCAL, False) is True


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def user_frames(exc: BaseException, heading: str = "the task's own frames") -> list[str]:
    """The traceback without cmflow's own frames: the def's file and line are what matter."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith((_PKG_DIR, "<frozen importlib"))]   # nor the import machinery's
    out = [f"    Traceback ({heading}):"]
    for f in frames:
        out.append(f'      File "{f.filename}", line {f.lineno}, in {f.name}')
        if f.line:
            out.append(f"        {f.line}")
    return out if frames else []


class ModuleNotFound(Exception):
    pass


@dataclass
class TaskLoader:
    """Loads task modules for one compilation (a cache per loader, no global state)."""

    flow_dir: Path
    search_path: Sequence[str] = ()

    def __post_init__(self) -> None:
        self._cache: dict[str, types.ModuleType] = {}

    @classmethod
    def for_flow(cls, flow_file: str | None) -> "TaskLoader":
        base = Path(flow_file).resolve().parent if flow_file and not flow_file.startswith("<") else Path.cwd()
        extra = [p for p in os.environ.get("CMFLOW_PATH", "").split(os.pathsep) if p]
        return cls(base, extra)

    def load(self, dotted: str) -> types.ModuleType:
        if dotted in self._cache:
            return self._cache[dotted]
        rel = Path(*dotted.split("."))
        for folder in [self.flow_dir, *map(Path, self.search_path)]:
            for candidate in (folder / rel.with_suffix(".py"), folder / rel / "__init__.py"):
                if candidate.is_file():
                    module = self._load_file(dotted, candidate)
                    self._cache[dotted] = module
                    return module
        try:
            module = importlib.import_module(dotted)
        except ModuleNotFoundError as e:
            if e.name and dotted.startswith(e.name):
                raise ModuleNotFound(dotted) from None
            raise
        self._cache[dotted] = module
        return module

    def _load_file(self, dotted: str, path: Path) -> types.ModuleType:
        # A private module name keeps two flows' "tasks.py" from colliding in
        # sys.modules; it is registered only while it executes (dataclasses and
        # pickle look themselves up there).
        name = f"_cmflow_tasks_{abs(hash(str(path)))}_{dotted.replace('.', '_')}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(name, None)
        return module


def public_tasks(module: types.ModuleType) -> dict[str, Callable]:
    """What ``from m import *`` brings: ``__all__``, else the module's own public defs."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items()
                 if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == module.__name__
                 and isinstance(v, types.FunctionType)]
    return {n: getattr(module, n) for n in names if callable(getattr(module, n, None))}


def exec_inline_def(source: str, filename: str, first_line: int) -> dict[str, Any]:
    """Compile an inline def so its code objects carry the flow file's line numbers."""
    code = compile("\n" * (first_line - 1) + source + "\n", filename, "exec")
    namespace: dict[str, Any] = {"task": task, "local": local, "__name__": "__cmflow_flow__"}
    exec(code, namespace)  # noqa: S102 - the flow's own code, as a Python module would run
    return namespace
