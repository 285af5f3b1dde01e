"""``Files``: the value of a job that declares outputs.

A tuple of local paths in declared order (so it prints and serialises as a
JSON list); ``+`` concatenates, which is how ``+`` and ``sum`` gather the files
of many jobs. Passed into a task as a run-time argument, it is staged to that
job's host (see ``staged_argument``).
"""
from __future__ import annotations

from typing import Any, Iterable


class Files(tuple):
    __slots__ = ()

    def __new__(cls, paths: Iterable[str] = ()) -> "Files":
        return super().__new__(cls, (str(p) for p in paths))

    def __add__(self, other: Any) -> "Files":
        if isinstance(other, Files):
            return Files(tuple.__add__(self, other))
        return NotImplemented

    def __radd__(self, other: Any) -> "Files":
        if other == 0:          # Python's sum() starts from 0
            return self
        return NotImplemented

    def __repr__(self) -> str:
        return f"Files({list(self)!r})"
