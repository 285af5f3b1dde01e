"""Storage services: where the bytes live. Every method streams; no whole file in memory."""
from __future__ import annotations

from typing import BinaryIO, Iterator, Protocol

from ..config import KINDS_SERVICE, Section
from ..errors import DataError

CHUNK = 1 << 20


class Storage(Protocol):
    def put(self, key: str, chunks: Iterator[bytes], content_type: str) -> None: ...
    def get(self, key: str, sink: BinaryIO) -> None: ...
    def delete(self, key: str) -> None: ...
    def keys(self) -> list[str]: ...
    def url(self, key: str) -> str: ...
    def ping(self) -> str: ...
    def signed_url(self, key: str, seconds: int) -> str:
        """A link that reads the object with plain HTTP until it expires; DataError where the service has none."""
        ...


def open_storage(section: Section) -> Storage:
    if section.kind == "local":
        from .local import LocalStorage

        return LocalStorage(section.get("path", required=True))
    if section.kind == "azure":
        from .cloud import azure_storage

        return azure_storage(section)
    if section.kind == "s3":
        from .cloud import s3_storage

        return s3_storage(section)
    if section.kind == "google":
        from .google import google_storage

        return google_storage(section)
    if section.kind == "gdrive":
        from .gdrive import DriveStorage

        return DriveStorage(section)
    if section.kind == "box":
        from .box import BoxStorage

        return BoxStorage(section)
    raise DataError(f"service '{section.name}': kind '{section.kind}' is not supported by cmflow "
                    f"(supported: {', '.join(sorted(KINDS_SERVICE))})")
