"""The data service: bytes to a storage service, then a record to the database.

Order matters for "nothing is lost": an upload goes to a fresh object key, the
record is written only after the bytes are stored, and if the record cannot be
written the object is removed again. A download goes to a temp file beside the
destination and is renamed into place only after its sha256 matched.
"""
from __future__ import annotations

import getpass
import hashlib
import mimetypes
import os
import secrets
import tempfile
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Iterator

from .config import DataConfig
from .db import RecordDB, open_db
from ..errors import CmflowError, ConfigError
from .errors import DataError, Exists, NotFound
from .record import Record, check_name
from .storage import CHUNK, Storage, open_storage


@dataclass(frozen=True)
class ServiceStatus:
    kind: str          # "db" or "service"
    name: str
    provider: str
    ok: bool
    detail: str
    default: bool


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class _Hashing:
    """Chunks of a stream, hashed and counted on the way through."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.sha = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.stream.read(CHUNK)
            if not chunk:
                return
            self.sha.update(chunk)
            self.size += len(chunk)
            yield chunk


class DataService:
    def __init__(self, config: DataConfig):
        self.config = config
        self._db: RecordDB | None = None
        self._stores: dict[str, Storage] = {}
        self.warnings: list[str] = []

    @property
    def db(self) -> RecordDB:
        if self._db is None:
            section = self.config.dbs[self.config.default_db]
            self._db = _opened(section, open_db)
        return self._db

    def storage(self, name: str | None) -> tuple[str, Storage]:
        name = name or self.config.default_service
        if name not in self.config.services:
            raise DataError(f"unknown service '{name}' (configured: {', '.join(self.config.services)})")
        if name not in self._stores:
            self._stores[name] = _opened(self.config.services[name], open_storage)
        return name, self._stores[name]

    # ------------------------------------------------------------------ add
    def add(self, path: str | Path, service: str | None = None, name: str | None = None,
            force: bool = False) -> Record:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no such file: {path}" if not path.exists() else f"not a regular file: {path}")
        with open(path, "rb") as f:
            return self.add_stream(f, path.name if name is None else name, service, force,
                                   mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    def add_stream(self, stream: BinaryIO, name: str, service: str | None = None, force: bool = False,
                   content_type: str = "application/octet-stream") -> Record:
        name = check_name(name)
        service_name, store = self.storage(service)
        if not force:
            try:
                self.db.get(name)
                raise Exists(f"'{name}' already exists (use --force to replace it)")
            except NotFound:
                pass
        key = f"{secrets.token_hex(6)}-{name}"   # a fresh key: a failed or losing add never touches another's bytes
        hashing = _Hashing(stream)
        try:
            store.put(key, iter(hashing), content_type)
        except BaseException:
            self._quietly_delete(store, key)
            raise
        now = _now()
        record = Record(name, hashing.size, hashing.sha.hexdigest(), service_name, key, store.url(key),
                        getpass.getuser(), now, now, content_type)
        try:
            old = self.db.add(record, force)
        except BaseException:
            self._quietly_delete(store, key)
            raise
        if old is not None and (old.service, old.locator) != (service_name, key):
            if old.service in self.config.services:
                self._quietly_delete(self.storage(old.service)[1], old.locator)
            record = Record(**{**record.to_dict(), "created": old.created})
        return record

    @staticmethod
    def _quietly_delete(store: Storage, key: str) -> None:
        try:
            store.delete(key)
        except Exception:
            pass  # it may never have been created

    # ------------------------------------------------------------------- ls
    def ls(self, service: str | None = None) -> list[Record]:
        """Every record (of one service); records that could not be read are in self.warnings."""
        if service is not None and service not in self.config.services:
            raise DataError(f"unknown service '{service}' (configured: {', '.join(self.config.services)})")
        records = [r for r in self.db.list() if service is None or r.service == service]
        self.warnings = list(getattr(self.db, "warnings", []))
        return records

    # ---------------------------------------------------------------- share
    def share(self, name: str, readers: tuple[str, ...] = (), public: bool = False,
              expires: int | None = None) -> tuple[Record, str | None]:
        """Add readers / make public, and with `expires` (seconds) make a time-limited link. The link
        comes first: a service that cannot make one changes nothing."""
        record = self.db.get(check_name(name))
        link = None
        if expires is not None:
            if record.service not in self.config.services:
                raise DataError(f"'{name}' is stored in service '{record.service}', which is not configured")
            link = self.storage(record.service)[1].signed_url(record.locator, expires)
        if readers or public:
            record = replace(record.shared(readers, public or None), modified=_now())
            self.db.add(record, force=True)
        return record, link

    def unshare(self, name: str, readers: tuple[str, ...] = (), public: bool = False) -> Record:
        record = self.db.get(check_name(name))
        record = replace(record.unshared(readers, public), modified=_now())
        self.db.add(record, force=True)
        return record

    # ------------------------------------------------------------------ get
    def get(self, name: str, dest: str | Path | None = None, force: bool = False) -> Path:
        name = check_name(name)
        record = self.db.get(name)
        # the local file name is the validated NAME asked for, never the record's own field
        # (a tampered record may say ../../x); a DEST ending in '/' is a folder
        if dest is None or str(dest) == "":
            target = Path(name)
        else:
            target = Path(dest)
            if str(dest).endswith(("/", os.sep)) and not target.is_dir():
                raise DataError(f"no such folder: {dest}")
            if target.is_dir():
                target = target / name
        if target.exists() and not force:
            raise Exists(f"{target} exists (use --force to overwrite it)")
        if not target.parent.is_dir():
            raise DataError(f"no such folder: {target.parent}")
        _, store = self.storage(record.service)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            sha = hashlib.sha256()
            with os.fdopen(fd, "wb") as raw:
                store.get(record.locator, _HashingWriter(raw, sha))
            if sha.hexdigest() != record.sha256:
                raise DataError(f"'{name}': downloaded bytes do not match the record's sha256 "
                                f"({sha.hexdigest()[:12]}… != {record.sha256[:12]}…); nothing written")
            os.chmod(tmp, 0o666 & ~_umask())    # mkstemp makes 0600; a download is an ordinary new file
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    # ------------------------------------------------------------------ del
    def delete(self, name: str) -> Record:
        record = self.db.get(check_name(name))
        if record.service in self.config.services:
            try:
                self.storage(record.service)[1].delete(record.locator)
            except NotFound:
                pass  # already gone: still remove the record
        self.db.delete(name)
        return record

    # ------------------------------------------------------------- services
    def services(self) -> list[ServiceStatus]:
        out = []
        for kind, sections, default in (("db", self.config.dbs, self.config.default_db),
                                         ("service", self.config.services, self.config.default_service)):
            for name, section in sections.items():
                try:
                    obj = open_db(section) if kind == "db" else open_storage(section)
                    detail, ok = obj.ping(), True
                except CmflowError as e:  # report, never raise: this is a health check
                    detail, ok = str(e), False
                except Exception as e:    # a library's own error: its type and first line, no more
                    detail, ok = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", False
                out.append(ServiceStatus(kind, name, section.kind, ok, detail, name == default))
        return out


def _opened(section, opener):
    """A database or storage opened from its settings; settings of the wrong shape are the config's error."""
    try:
        return opener(section)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ConfigError(section.source, section.path, f"cannot use these settings ({type(e).__name__}: "
                                                        f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _HashingWriter:
    def __init__(self, raw: BinaryIO, sha: "hashlib._Hash"):
        self.raw, self.sha = raw, sha

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.raw.write(data)
