"""Record databases: one record per stored file, unique by name."""
from __future__ import annotations

from typing import Iterator, Protocol

from ..config import KINDS_DB, Section
from ..errors import DataError
from ..record import Record


class RecordDB(Protocol):
    def add(self, record: Record, force: bool = False) -> Record | None:
        """Store a record. Without force an existing name raises Exists; returns the record replaced."""
        ...

    def get(self, name: str) -> Record: ...
    def list(self) -> Iterator[Record]: ...
    def delete(self, name: str) -> None: ...
    def ping(self) -> str: ...


def open_db(section: Section) -> RecordDB:
    if section.kind == "local":
        from .local import LocalDB

        return LocalDB(section.get("path", required=True))
    if section.kind == "mongo":
        from .mongo import MongoDB

        return MongoDB(section)
    raise DataError(f"database '{section.name}': kind '{section.kind}' is not supported by cmflow "
                    f"(supported: {', '.join(sorted(KINDS_DB))})")
