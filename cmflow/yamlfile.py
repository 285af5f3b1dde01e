"""Finding and reading the YAML files users write (inventory, data config): safe_load only."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError


def first_file(explicit: str | None, candidates: Iterable[str | Path | None]) -> str | None:
    """The explicit path if given, else the first candidate that is a file, else None."""
    if explicit:
        return explicit
    for c in candidates:
        if c and Path(c).is_file():
            return str(c)
    return None


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(path, "", f"cannot read {what}: {e.strerror}") from None


def load(text: str, filename: str) -> Any:
    """yaml.safe_load, with a bad document reported as FILE: line L, column C."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(filename, "", f"not valid YAML: {where}{getattr(e, 'problem', None) or e}") from None
