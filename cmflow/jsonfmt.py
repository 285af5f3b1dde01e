"""JSON values formatted directly, byte for byte as the json module writes them.

The per-job lines (jobs.jsonl, the journal, events.jsonl, plan.json's jobs) have
fixed keys and mostly strings, numbers and booleans. Built as a dict and passed to
json.dumps, each line costs the dict, an encoder set up per call and a walk of
every key; written as an f-string with these helpers it costs about a third
(bench/local_dispatch.py: the client's CPU per job). Anything that is not a
plain scalar (or a flat list of them) goes to the caller's encoder, so the text
is always what json.dumps would have written with the same options
(ensure_ascii, ``default=repr``); tests/test_jsonfmt.py checks that.
"""
from __future__ import annotations

from json.encoder import encode_basestring_ascii as string   # the C function json.dumps uses
from typing import Any, Callable

__all__ = ["string", "value", "boolean"]

_SCALARS = (str, int, float, bool, type(None))


def boolean(v: Any, other: Callable[[Any], str]) -> str:
    if v is True:
        return "true"
    if v is False:
        return "false"
    return value(v, other)


def value(v: Any, other: Callable[[Any], str], sep: str | None = None) -> str:
    """``v`` as JSON; ``other`` (the line's encoder) for anything else than a scalar or, given ``sep``
    (the encoder's item separator), a flat list of scalars."""
    t = type(v)
    if t is str:
        return string(v)
    if t is int:
        return int.__repr__(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is float and v - v == 0.0:    # finite (json writes NaN and Infinity its own way)
        return float.__repr__(v)
    if sep is not None and (t is list or t is tuple) and all(type(x) in _SCALARS for x in v):
        return "[" + sep.join([value(x, other) for x in v]) + "]"
    return other(v)
