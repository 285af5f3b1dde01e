"""Files as run-time arguments, and declarations made when a def is called at run time.

The executor calls a def whose arguments are other jobs' values (language
v2). Before it does, ``stage_arguments`` swaps every ``Files`` value (also
inside lists and dicts; a list of nothing but Files, the value of
``par(...)``, becomes one Files) for the names its files will have in the new
job's work directory, and returns those files as inputs: the def builds its command
from names that exist where it runs. ``job_files`` then resolves what the def
returned, exactly as the compiler does for a call with literal arguments.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from .spec import Command, Input, JobFiles, SpecError, resolve
from .value import Files


def staged_name(path: str) -> str:
    """Where a fetched file goes in a work dir: ``<job>/<name>`` for a result, else its own name."""
    parts = Path(path).parts
    if "results" in parts:
        rest = parts[len(parts) - parts[::-1].index("results"):]
        if len(rest) >= 2:
            return str(PurePosixPath(*rest))
    return Path(path).name


def stage_arguments(args: list[Any], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any], tuple[Input, ...]]:
    """The arguments with each Files value replaced by its staged names, and the inputs that places them."""
    inputs: dict[str, Input] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(v, Files) for v in value):
            # par(...) of jobs with outputs: the def gets their files as one Files, in order (as sum(...) gives)
            value = sum(value, Files())
        if isinstance(value, Files):
            names = []
            for path in value:
                name = staged_name(path)
                old = inputs.get(name)
                if old is not None and old.source != str(Path(path).resolve()):
                    # two different files with one name: the later one gets a folder of its own
                    k = 2
                    while f"{k}/{name}" in inputs:
                        k += 1
                    name = f"{k}/{name}"
                inputs.setdefault(name, Input(str(Path(path).resolve()), name))
                names.append(name)
            return Files(names)
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, tuple):
            return tuple(swap(v) for v in value)
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        return value

    new_args = [swap(a) for a in args]
    new_kwargs = {k: swap(v) for k, v in kwargs.items()}
    return new_args, new_kwargs, tuple(inputs.values())


def job_files(command: str | Command, options: Any, base: Path, staged: tuple[Input, ...] = ()
              ) -> tuple[str, JobFiles | None]:
    """The command string and resolved files of a call made at run time; SpecError if they cannot work."""
    own = getattr(options, "files", None)
    if not isinstance(command, Command) and own is None and not staged:
        return str(command), None
    files = resolve(command if isinstance(command, Command) else None, own.inputs if own else (),
                    own.outputs if own else (), base, own.publish if own else ())
    for i in staged:
        if not Path(i.source).is_file():
            raise SpecError(f"input {i.source} (a run-time argument) does not exist")
    files = files.with_inputs(staged)
    return str(command), files or None
