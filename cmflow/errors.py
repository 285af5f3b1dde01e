"""The errors users see: positioned flow errors, config errors with key paths.

Every error a user can cause derives from ``CmflowError``; the CLI prints its
``str()`` and exits with its ``exit_status``, never a Python traceback.
"""
from __future__ import annotations

from dataclasses import dataclass, field

_SHOWN = 100   # characters of a source line shown under an error


def short(value: object, limit: int = 60) -> str:
    """repr of a value for a message, cut to about limit characters: errors stay one line.

    Walks no more of the value than it prints, so a huge (or alias-bombed) value is cheap.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 4
    r.maxlevel = 3
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def source_lines(text: str) -> list[str]:
    """A flow's lines as its positions count them: split at newlines only, a CRLF's CR dropped.

    Not ``str.splitlines``: it also splits at form feeds, U+2028, U+0085 and other
    characters the language reads as blanks or as string content, and the line
    quoted under an error would then not be the line its position names.
    """
    lines = text.replace("\r\n", "\n").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


# shown as a blank under an error, so that the caret stays under its column
_VERTICAL = str.maketrans({c: " " for c in "\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


class CmflowError(Exception):
    """Base of every error that is the user's to fix."""

    exit_status = 2


@dataclass(frozen=True)
class Diagnostic:
    """One positioned message: ``FILE:LINE:COL: message``, the line, a caret."""

    filename: str
    line: int
    column: int
    message: str
    source_line: str = ""
    width: int = 1
    notes: tuple[str, ...] = field(default=())

    def render(self) -> str:
        where = f"{self.filename}:{self.line}:{self.column}" if self.line else self.filename
        head = f"{where}: error: {self.message}"
        parts = [head]
        if self.source_line:
            text = self.source_line.rstrip("\r\n").expandtabs(1).translate(_VERTICAL)
            caret_at = max(self.column - 1, 0)
            width = max(1, min(self.width, max(1, len(text) - caret_at), _SHOWN // 2))
            if len(text) > _SHOWN:
                # a window around the caret: an error in a huge line stays a few lines long
                start = max(0, min(caret_at - _SHOWN // 2, len(text) - _SHOWN))
                text = ("…" if start else "") + text[start:start + _SHOWN] + ("…" if start + _SHOWN < len(text) else "")
                caret_at = caret_at - start + (1 if start else 0)
            parts.append(f"    {text}")
            parts.append("    " + " " * caret_at + "^" * width)
        parts.extend(self.notes)
        return "\n".join(parts)


class FlowError(CmflowError):
    """One or more static errors in a flow; all are reported together."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.filename, d.line, d.column))
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.diagnostics)
        body = "\n".join(d.render() for d in self.diagnostics)
        if n > 1:
            body += f"\n{n} errors"
        return body


class ConfigError(CmflowError):
    """A YAML file that does not say what is expected: names the file and key path."""

    def __init__(self, filename: str, keypath: str, message: str):
        self.filename, self.keypath = filename, keypath
        where = f"{filename}: {keypath}" if keypath else filename
        super().__init__(f"{where}: {message}")


class UsageError(CmflowError):
    """Bad command-line input or a bad argument to the API."""


class RunError(CmflowError):
    """A run could not complete (a task failed); exit status 1."""

    exit_status = 1
