"""The fuzz run of bench/fuzz.py, smaller: no input gives a traceback (issue 8, "Done when")."""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_fuzz_gives_no_tracebacks():
    """3000 inputs (a tenth of a second to a few seconds each under load; ~20 s in all):
    grammar-aware flow mutations, random text, inventory and data-config YAML mutations."""
    import fuzz

    fz = fuzz.fuzz(3000, seed=7)
    shown = "\n".join(f"--- {kind}: {text[:200]!r}\n{tb}" for kind, text, tb in fz.tracebacks)
    assert fz.counts["TRACEBACKS"] == 0, shown
    # every kind of input was tried, and some of each were accepted (the mutations stay near the language)
    for kind in ("flow", "random-flow", "inventory", "data"):
        assert fz.counts[f"{kind}: accepted"] + fz.counts[f"{kind}: cmflow error"] > 0, kind
    assert fz.counts["flow: accepted"] > 0 and fz.counts["inventory: accepted"] > 0
