"""Keep the cyclic garbage collector out of the way of large, long-lived structures.

``paused``: no collection while a large acyclic tree is built.
``relaxed``: while a run goes, young collections are rarer.

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


@contextmanager
def relaxed(young: int = 50_000) -> Iterator[None]:
    """Collect the youngest generation every ``young`` allocations instead of every 700.

    A run of a million jobs holds a few objects per pending job and allocates a
    dozen per job that die at once; with the default threshold the collector
    walks the survivors over and over and takes half the scheduling time
    (bench/scheduling.py: 100 000 jobs in 18-26 s with it, 9-10 s without).
    Cycles are still collected, just in larger batches.
    """
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], young), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)
