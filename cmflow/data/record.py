"""The record kept for each stored file: plain YAML/JSON-able values, no tags."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import DataError

_FORBIDDEN = ("/", "\\", "\0")


def check_name(name: str) -> str:
    """A record/object name that can never escape a folder or container."""
    if not isinstance(name, str) or not name:
        raise DataError("a name must be a non-empty string")
    if any(c in name for c in _FORBIDDEN) or ".." in name:
        raise DataError(f"bad name {name!r}: names may not contain '/', '\\', '..' or NUL")
    if name in (".", "..") or name.startswith(".") and len(name) <= 2:
        raise DataError(f"bad name {name!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DataError(f"bad name {name!r}: control characters are not allowed")
    if len(name.encode()) > 200:
        raise DataError(f"bad name: longer than 200 bytes ({len(name.encode())})")
    return name


@dataclass(frozen=True)
class Record:
    name: str
    size: int
    sha256: str
    service: str
    locator: str          # the object's key inside its service
    url: str
    owner: str
    created: str          # ISO 8601, UTC
    modified: str
    content_type: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "record") -> "Record":
        names = {f.name for f in fields(cls)}
        missing = names - set(doc)
        if missing:
            raise DataError(f"{where}: missing {', '.join(sorted(missing))}")
        return cls(**{k: doc[k] for k in names})
