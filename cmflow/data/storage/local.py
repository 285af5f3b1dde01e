"""A folder on local disk or a network share acting as a storage service."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import DataError, NotFound, Unavailable
from ..record import check_name
from . import CHUNK


class LocalStorage:
    def __init__(self, path: str | Path):
        self.root = Path(path)

    def _path(self, key: str) -> Path:
        p = (self.root / check_name(key)).resolve()
        if p.parent != self.root.resolve():   # belt and braces: never outside the folder
            raise NotFound(f"bad key {key!r}")
        return p

    def put(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Unavailable(f"storage folder {self.root}: {e.strerror}") from None
        final = self._path(key)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, key: str, sink: BinaryIO) -> None:
        try:
            with open(self._path(key), "rb") as f:
                shutil.copyfileobj(f, sink, CHUNK)
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from {self.root}") from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            raise NotFound(f"object {key} is missing from {self.root}") from None

    def keys(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def signed_url(self, key: str, seconds: int) -> str:
        raise DataError("a local folder cannot make time-limited links (anyone who can read the folder can "
                        "read the file); the record's policy is what `share` changes there")

    def ping(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"storage folder {self.root} is not writable")
        return f"folder {self.root}"
