"""The record kept for each stored file: plain YAML/JSON-able values, no tags."""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

from ..errors import short
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
    # the access policy (owner above): who else may read it, and whether anyone may. cmflow shows and
    # keeps it, and makes signed links; the services themselves are not told (see docs/data.md)
    readers: tuple[str, ...] = ()
    public: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["readers"] = list(self.readers)
        return d

    @property
    def policy(self) -> str:
        if self.public:
            return "public"
        return "shared: " + ", ".join(self.readers) if self.readers else "private"

    def shared(self, readers: tuple[str, ...] = (), public: bool | None = None) -> "Record":
        merged = tuple(dict.fromkeys((*self.readers, *readers)))
        return replace(self, readers=merged, public=self.public if public is None else public)

    def unshared(self, readers: tuple[str, ...] = (), public: bool = False) -> "Record":
        """Without arguments: private again (no readers, not public)."""
        if not readers and not public:
            return replace(self, readers=(), public=False)
        return replace(self, readers=tuple(r for r in self.readers if r not in readers),
                       public=False if public else self.public)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "record") -> "Record":
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        missing = required - set(doc)
        if missing:
            raise DataError(f"{where}: missing {', '.join(sorted(missing))}")
        values = {k: doc[k] for k in names if k in doc}
        for f in fields(cls):
            if f.name in ("readers", "public") or f.name not in values:
                continue
            v = values[f.name]
            want = int if f.name == "size" else str
            if not isinstance(v, want) or isinstance(v, bool) or want is int and v < 0:
                raise DataError(f"{where}: {f.name} must be {'a size in bytes' if want is int else 'a string'}, "
                                f"got {short(v)}")
        readers = values.get("readers", ())
        if not isinstance(readers, (list, tuple)) or not all(isinstance(r, str) for r in readers):
            raise DataError(f"{where}: readers must be a list of user names")
        values["readers"] = tuple(readers)
        values["public"] = bool(values.get("public", False))
        return cls(**values)
