"""What a job declares: ``command(cmd, inputs=, outputs=)`` and its resolution at compile time.

A def returns a ``Command`` (or a plain string); ``@task(inputs=, outputs=)``
adds files to every call. The compiler turns the declaration into a
``JobFiles``: every local input resolved to an existing file with the name it
gets in the job's work directory, every output pattern checked so that it
cannot name anything outside that directory. Mistakes raise ``SpecError``,
which the compiler reports at the call's position.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

DATA_PREFIX = "data:"
GLOB_CHARS = frozenset("*?[")


class SpecError(Exception):
    """A declaration that cannot work; the message names the offending path."""


@dataclass(frozen=True)
class Command:
    """A shell command with the files it reads and writes (what ``command()`` returns)."""

    cmd: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    publish: tuple[tuple[str, str], ...] = ()     # (output path, "data:NAME")

    def __str__(self) -> str:
        return self.cmd


def command(cmd: str, inputs: Iterable[str] | str = (), outputs: Iterable[str] | Mapping[str, str] | str = ()
            ) -> Command:
    """A command with files: ``inputs`` are placed in its work directory before it starts,
    ``outputs`` fetched from there after it exits 0. ``outputs`` may map a path to
    ``"data:NAME"`` to publish it to the data service as well."""
    if not isinstance(cmd, str):
        raise TypeError(f"command() wants a command string, not {type(cmd).__name__}")
    ins = _strings(inputs, "inputs")
    if isinstance(outputs, Mapping):
        outs = _strings(list(outputs), "outputs")
        publish = tuple((k, v) for k, v in outputs.items() if v)
        for k, v in publish:
            if not isinstance(v, str) or not v.startswith(DATA_PREFIX) or len(v) == len(DATA_PREFIX):
                raise TypeError(f"outputs[{k!r}]: publish to 'data:NAME', not {v!r}")
    else:
        outs, publish = _strings(outputs, "outputs"), ()
    return Command(cmd, ins, outs, publish)


def _strings(value: Iterable[str] | str, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    out = tuple(value)
    for v in out:
        if not isinstance(v, str) or not v:
            raise TypeError(f"{what} must be non-empty path strings, not {v!r}")
    return out


@dataclass(frozen=True)
class Input:
    """One file to place: ``source`` a local path (absolute) or ``data:NAME``; ``dest`` its name in the work dir."""

    source: str
    dest: str

    @property
    def is_data(self) -> bool:
        return self.source.startswith(DATA_PREFIX)


@dataclass(frozen=True)
class Output:
    pattern: str                 # a path or glob relative to the work directory
    publish: str | None = None   # data record name to publish it as

    @property
    def is_glob(self) -> bool:
        return any(c in GLOB_CHARS for c in self.pattern)


@dataclass(frozen=True)
class JobFiles:
    inputs: tuple[Input, ...] = ()
    outputs: tuple[Output, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.inputs or self.outputs)

    def with_inputs(self, more: Iterable[Input]) -> "JobFiles":
        """These files plus more (a run-time argument's staged files); a name taken twice is an error."""
        merged = _no_clash([*self.inputs, *more])
        return JobFiles(tuple(merged), self.outputs)


def check_relative(path: str, what: str) -> str:
    """A path that stays inside the folder it is relative to: no absolute, no '..', no NUL."""
    if "\0" in path or "\n" in path:
        raise SpecError(f"{what} {path!r}: control characters are not allowed")
    p = PurePosixPath(path)
    if p.is_absolute():
        raise SpecError(f"{what} '{path}' is absolute; it must be relative to the job's work directory")
    if ".." in p.parts:
        raise SpecError(f"{what} '{path}' leaves the job's work directory ('..')")
    norm = str(p)
    if norm in ("", "."):
        raise SpecError(f"{what} '{path}' names the work directory itself")
    return norm


def resolve(cmd: Command | None, task_inputs: tuple[str, ...], task_outputs: tuple[str, ...],
            base: Path, task_publish: tuple[tuple[str, str], ...] = ()) -> JobFiles:
    """Resolve a job's declared files against the flow file's folder; raise SpecError for the first mistake."""
    raw_in = [*task_inputs, *(cmd.inputs if cmd else ())]
    inputs: list[Input] = []
    for item in raw_in:
        inputs.extend(_resolve_input(item, base))
    publish = {**dict(task_publish), **(dict(cmd.publish) if cmd else {})}
    outputs: list[Output] = []
    seen: set[str] = set()
    for pattern in [*task_outputs, *(cmd.outputs if cmd else ())]:
        norm = check_relative(pattern, "output")
        if norm in seen:
            continue
        seen.add(norm)
        pub = publish.get(pattern)
        if pub is not None:
            from ..data.errors import DataError
            from ..data.record import check_name

            try:
                check_name(pub[len(DATA_PREFIX):])
            except DataError as e:
                raise SpecError(f"output '{pattern}': {e}") from None
            if any(c in GLOB_CHARS for c in norm):
                raise SpecError(f"output '{pattern}' is a glob; only a single file can be published as {pub}")
        outputs.append(Output(norm, pub[len(DATA_PREFIX):] if pub else None))
    return JobFiles(tuple(_no_clash(inputs)), tuple(outputs))


def _resolve_input(item: str, base: Path) -> list[Input]:
    if item.startswith(DATA_PREFIX):
        name = item[len(DATA_PREFIX):]
        from ..data.errors import DataError
        from ..data.record import check_name

        try:
            check_name(name)
        except DataError as e:
            raise SpecError(f"input '{item}': {e}") from None
        return [Input(item, name)]
    expanded = os.path.expanduser(item)
    full = expanded if os.path.isabs(expanded) else str(base / expanded)
    if any(c in GLOB_CHARS for c in item):
        matches = sorted(glob.glob(full, recursive=True))
        if not matches:
            raise SpecError(f"input '{item}' matches no file (looked in {base})")
        return [i for m in matches for i in _resolve_path(Path(m), item, base)]
    path = Path(full)
    try:
        if not path.exists():
            raise SpecError(f"input '{item}' does not exist ({path})")
        return _resolve_path(path, item, base)
    except OSError as e:       # a name too long, a folder we may not read
        raise SpecError(f"input '{item[:60]}' cannot be read: {e.strerror or e}") from None


def _dest_of(path: Path, base: Path) -> str:
    """The name in the work dir: the path relative to the flow's folder if it is under it, else its own name."""
    try:
        return str(PurePosixPath(*path.resolve().relative_to(base.resolve()).parts))
    except ValueError:
        return path.name


def _resolve_path(path: Path, item: str, base: Path) -> list[Input]:
    if path.is_dir():
        root = _dest_of(path, base)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise SpecError(f"input folder '{item}' holds no files")
        return [Input(str(p.resolve()), str(PurePosixPath(root, *p.relative_to(path).parts))) for p in files]
    if not path.is_file():
        raise SpecError(f"input '{item}' is not a regular file")
    if not os.access(path, os.R_OK):
        raise SpecError(f"input '{item}' is not readable")
    return [Input(str(path.resolve()), _dest_of(path, base))]


def _no_clash(inputs: list[Input]) -> list[Input]:
    by_dest: dict[str, Input] = {}
    for i in inputs:
        old = by_dest.get(i.dest)
        if old is not None and old.source != i.source:
            raise SpecError(f"inputs '{old.source}' and '{i.source}' would both be placed as '{i.dest}'")
        by_dest.setdefault(i.dest, i)
    return list(by_dest.values())
