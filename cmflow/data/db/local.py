"""Records as YAML files in a folder (local disk or a network share), one file per record.

Writes are atomic: the record goes to a temp file, which is then hard-linked
to its final name (fails if the name exists, so of two concurrent adds of one
name exactly one wins) or, with force, renamed over it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

import yaml

from ..errors import DataError, Exists, NotFound, Unavailable
from ..record import Record, check_name


LEGACY_TAGS = ("!!python/object:CloudFile", "!CloudFile")   # records of the original `cm` project's cmdata


class LocalDB:
    def __init__(self, path: str | Path):
        self.root = Path(path)
        self.warnings: list[str] = []    # records list() could not read, each with why

    def _file(self, name: str) -> Path:
        return self.root / f"{check_name(name)}.yaml"

    def _ensure(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise Unavailable(f"database folder {self.root}: {e.strerror}") from None

    def add(self, record: Record, force: bool = False) -> Record | None:
        self._ensure()
        final = self._file(record.name)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".yaml.part")   # never matches *.yaml
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                yaml.safe_dump(record.to_dict(), f, sort_keys=False)
                f.flush()
                os.fsync(f.fileno())
            if force:
                old = self._read(final) if final.exists() else None
                os.replace(tmp, final)
                return old
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise Exists(f"'{record.name}' already exists (use --force to replace it)") from None
            return None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _read(self, path: Path) -> Record:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: not a valid record ({str(e).splitlines()[0][:200]})") from None
        if not isinstance(doc, dict):
            raise DataError(f"{path}: not a valid record")
        return Record.from_dict(doc, str(path))

    def get(self, name: str) -> Record:
        path = self._file(name)
        if not path.is_file():
            raise NotFound(f"no record named '{name}'")
        return self._read(path)

    def list(self) -> Iterator[Record]:
        """Every record, names starting with a dot included; one that cannot be read is skipped with a
        warning (in self.warnings), never stopping the rest."""
        self.warnings = []
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*.yaml")):
            try:
                yield self._read(path)
            except DataError as e:
                head = path.read_bytes()[:4096].decode("utf-8", "replace")
                if any(tag in head for tag in LEGACY_TAGS):
                    self.warnings.append(f"{path}: a legacy record of the original cmdata (a pickled Python "
                                         f"object, never loaded); not listed — re-add the file to keep it")
                else:
                    self.warnings.append(f"{path}: unreadable record, not listed ({e})")

    def delete(self, name: str) -> None:
        try:
            self._file(name).unlink()
        except FileNotFoundError:
            raise NotFound(f"no record named '{name}'") from None

    def ping(self) -> str:
        self._ensure()
        if not os.access(self.root, os.W_OK):
            raise Unavailable(f"database folder {self.root} is not writable")
        return f"folder {self.root}"
