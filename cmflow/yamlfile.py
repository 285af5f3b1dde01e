"""Finding and reading the YAML files users write (inventory, data config): safe_load only.

A user's YAML is read with a SafeLoader that also refuses duplicate keys (the
second one would silently win) and bounds what a small file can expand to:
aliases and ``<<`` merges may share values, but the document, counted as the
tree its readers walk, holds at most ``MAX_VALUES`` values, so a 500-byte alias
bomb is an error; mappings and lists nest at most ``MAX_DEPTH`` deep instead of gigabytes.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import ConfigError

MAX_VALUES = 100_000          # values in a document, aliases counted each time they are used
MAX_DEPTH = 100               # nested mappings and lists
_MERGE = "tag:yaml.org,2002:merge"
_BASE_60 = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float"}
_STR = "tag:yaml.org,2002:str"


class _Refused(Exception):
    def __init__(self, message: str, mark: Any = None):
        super().__init__(message)
        self.message, self.mark = message, mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader + duplicate keys refused + merges bounded."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._checked: set[int] = set()
        self._merged = 0
        self._depth = 0

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        tag = super().resolve(kind, value, implicit)
        if tag in _BASE_60 and ":" in value:
            # YAML 1.1 reads 1:30 as 90 (base 60); YAML 1.2 dropped that. What users mean by
            # a colon in a value is a time limit ("1:30" for Slurm) or a port, never 90.
            return _STR
        return tag

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) not in self._checked:
            # the first flatten sees the keys as written (later ones see merged keys too)
            self._checked.add(id(node))
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(f"duplicate key {key!r}"[:80], key_node.start_mark)
                seen.add(key)
        before = len(node.value)
        super().flatten_mapping(node)
        self._merged += max(0, len(node.value) - before)
        if self._merged > MAX_VALUES:
            raise _Refused(f"'<<' merges expand to more than {MAX_VALUES} keys", node.start_mark)


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
    except UnicodeDecodeError as e:
        raise ConfigError(path, "", f"{what} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                                    f"{e.start})") from None


_FLOW_CHARS = re.compile(r"""[\[\]{}'"#\n]""")


def _flow_depth_error(text: str) -> str | None:
    """Where [ and { nest deeper than MAX_DEPTH, looked for before PyYAML reads the text.

    PyYAML's scanner keeps a possible simple key per open bracket and rechecks
    them all at every token: 20 000 '[' on a line cost it minutes. Quoted
    strings and comments are skipped (roughly, as YAML reads them).
    """
    depth = 0
    pos = 0
    n = len(text)
    while pos < n:
        m = _FLOW_CHARS.search(text, pos)
        if m is None:
            return None
        ch, pos = m.group(), m.end()
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, pos) + 1
                return f"line {line}, column {pos - text.rfind(chr(10), 0, pos) - 1}: nested more than {MAX_DEPTH} deep"
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "#":
            if pos - 2 < 0 or text[pos - 2] in " \t\n":
                end = text.find("\n", pos)
                pos = n if end < 0 else end
        elif ch == "\n":
            continue
        elif depth or pos - 2 < 0 or text[pos - 2] in " \t\n:-[{,":
            # a quoted scalar: skip to its closing quote ('' and \" escape inside)
            while True:
                end = text.find(ch, pos)
                if end < 0:
                    return None      # unterminated: PyYAML words the error
                if ch == "'" and text.startswith("''", end):
                    pos = end + 2
                    continue
                if ch == '"' and (len(text[pos:end]) - len(text[pos:end].rstrip("\\"))) % 2:
                    pos = end + 1
                    continue
                pos = end + 1
                break
    return None


def load(text: str, filename: str) -> Any:
    """Safe-load one document; a bad one is reported as FILE: line L, column C: why."""
    deep = _flow_depth_error(text)
    if deep:
        raise ConfigError(filename, "", deep)
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(filename, "", f"not valid YAML: {where}{getattr(e, 'problem', None) or e}") from None
    except (ValueError, OverflowError) as e:     # e.g. an integer of more than 4300 digits
        raise ConfigError(filename, "", f"a value YAML cannot read: {str(e)[:100]}") from None
    except _Refused as e:
        where = f"line {e.mark.line + 1}, column {e.mark.column + 1}: " if e.mark else ""
        raise ConfigError(filename, "", f"{where}{e.message}") from None
    if count_values(doc, MAX_VALUES) > MAX_VALUES:
        raise ConfigError(filename, "", f"the document expands to more than {MAX_VALUES} values "
                                        f"(aliases are counted each time they are used)")
    return doc


def count_values(doc: Any, limit: int) -> int:
    """Values in doc walked as a tree (a shared or recursive value counts each time), up to limit + 1."""
    n, stack = 0, [doc]
    while stack:
        v = stack.pop()
        n += 1
        if n > limit:
            return n
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return n
