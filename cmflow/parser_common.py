"""Small helpers both parsers share."""
from __future__ import annotations


def def_name(source: str) -> str:
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("def"):
            return stripped[3:].strip().split("(")[0].strip()
    return "?"
