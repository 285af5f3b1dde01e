"""Run-time values: how they are keyed for memoisation, shown in labels, and handed to defs.

A value is what a job or a local function produced: JSON-like data (numbers,
strings, lists, dicts, None) or any other object, such as a ``Files`` value
(fetched local paths). Objects that are not JSON-like take part through three
optional methods, so this module need not know their types:

- ``cmflow_key()``: a hashable, content-based key for memoisation (without it,
  the object's identity is used: equal objects made twice run twice);
- ``cmflow_label()``: short text for plans, logs and error messages;
- ``cmflow_argument()``: what a def receives in place of the value (e.g. the
  names staged files have in a job's work directory); without it, the value.
"""
from __future__ import annotations

import json
from typing import Any

_PLAIN = (str, int, float, bool, type(None))


def memo_key(value: Any) -> str:
    """Content key of a value: 1, 1.0 and True differ; lists and tuples with equal items agree."""
    return json.dumps(value, sort_keys=True, default=_key_default, allow_nan=True)


def _key_default(value: Any) -> Any:
    hook = getattr(value, "cmflow_key", None)
    if callable(hook):
        return {"__type__": type(value).__name__, "key": hook()}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return {"__type__": type(value).__name__, "id": id(value)}


def label(value: Any, limit: int = 40) -> str:
    """Value as flow text (``[1, "x"]``), cut to about ``limit`` characters."""
    text = _text(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, _PLAIN):
        return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_text(k)}: {_text(v)}" for k, v in value.items()) + "}"
    hook = getattr(value, "cmflow_label", None)
    return hook() if callable(hook) else repr(value)


def argument(value: Any) -> Any:
    """What a def is called with for this run-time value."""
    hook = getattr(value, "cmflow_argument", None)
    return hook() if callable(hook) else value


def python(value: Any) -> Any:
    """A flow literal as Python: list literals are tuples in the AST, lists for defs."""
    return [python(v) for v in value] if isinstance(value, tuple) else value
