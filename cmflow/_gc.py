"""Pause the cyclic garbage collector while a large acyclic tree is built.

Parsing a 100 000-reference flow allocates a few hundred thousand nodes that
all stay alive; each generation-2 collection rescans all of them, which
doubles the time of a parse (measured by bench/parse_compile.py). The AST and
the Plan hold no reference cycles, so nothing is lost by not collecting until
they are built; the collector's previous state is restored afterwards.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
