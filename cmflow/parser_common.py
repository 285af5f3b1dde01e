"""Small helpers both parsers share: def names, string literals, the nesting limit."""
from __future__ import annotations

import re
import unicodedata

# Brackets ( [ nest at most this deep. Every later pass over the tree (compiler,
# renderers, unparse) recurses, so the bound is set where the text is read.
MAX_NESTING = 100


def def_name(source: str) -> str:
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("def"):
            return stripped[3:].strip().split("(")[0].strip()
    return "?"


class BadString(ValueError):
    """A string literal that does not decode: ``offset`` counts from its opening quote."""

    def __init__(self, message: str, offset: int, width: int = 1):
        super().__init__(message)
        self.message, self.offset, self.width = message, offset, width


_SIMPLE = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
           "v": "\v"}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9A-Fa-f]{0,2})|u([0-9A-Fa-f]{0,4})|U([0-9A-Fa-f]{0,8})"
                     r"|N(\{[^{}\\'\"]*\})?|(.)|$)", re.S)
_HEX = {"x": 2, "u": 4, "U": 8}


def decode_string(token: str) -> str:
    """The value of a quoted literal, with Python's escapes, as the language reference says.

    Written out rather than handed to ``ast.literal_eval`` so that every bad
    escape is a ``BadString`` with the offset of the escape, and so that what a
    string may hold is decided here: no NUL (it cannot reach a command line) and
    no lone surrogate (it cannot be written as UTF-8).
    """
    body = token[1:-1]
    if "\\" not in body:
        if "\0" in body:
            raise BadString("a string may not contain a NUL character", body.index("\0") + 1)
        return body
    out: list[str] = []
    pos = 0
    for m in _ESCAPE.finditer(body):
        out.append(body[pos:m.start()])
        pos = m.end()
        at, width = m.start() + 1, m.end() - m.start()
        octal, hexa, u4, u8, name, other = m.groups()
        if octal is not None:
            out.append(chr(int(octal, 8)))
        elif name is not None:
            try:
                out.append(unicodedata.lookup(name[1:-1]))
            except KeyError:
                raise BadString(f"unknown Unicode character name {name[1:-1][:40]!r} in \\N{{...}}", at,
                                width) from None
        elif other is not None:
            # an unknown escape keeps its backslash, as in Python
            out.append(_SIMPLE.get(other, "\\" + other))
        else:
            letter = body[m.start() + 1] if m.start() + 1 < len(body) else ""
            digits = hexa if hexa is not None else u4 if u4 is not None else u8
            if not letter:
                raise BadString("a string may not end with a lone backslash", at)
            if letter == "N":
                raise BadString("expected \\N{NAME}", at, 2)
            if digits is None or len(digits) != _HEX[letter]:
                raise BadString(f"truncated \\{letter} escape: expected {_HEX[letter]} hex digits", at, width)
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise BadString(f"\\{letter}{digits} is beyond the last Unicode character (U+10FFFF)", at, width)
            if 0xD800 <= code <= 0xDFFF:
                raise BadString(f"\\{letter}{digits} is a lone surrogate, not a character", at, width)
            out.append(chr(code))
        if out[-1] == "\0":
            raise BadString("a string may not contain a NUL character", at, width)
    out.append(body[pos:])
    text = "".join(out)
    if "\0" in text:
        raise BadString("a string may not contain a NUL character", body.index("\0") + 1)
    return text
