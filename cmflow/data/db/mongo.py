"""Records in a MongoDB collection (pymongo), with a unique index on name."""
from __future__ import annotations

from typing import Iterator

from ...errors import ConfigError
from ..config import Section, number_setting
from ..errors import Exists, NotFound, Unavailable
from ..record import Record, check_name


class MongoDB:
    def __init__(self, section: Section):
        import pymongo

        self._pymongo = pymongo
        self.url = section.get("url", "mongodb://127.0.0.1:27017", required=True)
        if not isinstance(self.url, str) or not self.url.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError(section.source, f"{section.path}.url",
                              "expected mongodb://[USER:PASSWORD@]HOST[:PORT][/DATABASE] (or mongodb+srv://)")
        timeout_ms = int(1000 * number_setting(section, "timeout", 5))
        try:
            self.client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=timeout_ms,
                                              connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms * 4)
            self.coll = self.client[str(section.get("database", "cmflow"))][str(section.get("collection", "records"))]
        except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidName, ValueError, TypeError) as e:
            # pymongo's words may quote the URL, and so a password: the reason's kind only
            raise ConfigError(section.source, f"{section.path}.url",
                              f"not a usable MongoDB URL or database name ({type(e).__name__}); "
                              "expected mongodb://[USER:PASSWORD@]HOST[:PORT][/DATABASE]") from None
        self._indexed = False

    def _call(self, fn, *args, **kw):
        errors = self._pymongo.errors
        try:
            if not self._indexed:
                self.coll.create_index("name", unique=True)
                self._indexed = True
            return fn(*args, **kw)
        except (errors.ServerSelectionTimeoutError, errors.ConnectionFailure, errors.NetworkTimeout) as e:
            # pymongo's message can hold the URL (and so a password): say only where
            raise Unavailable(f"MongoDB did not answer ({type(e).__name__})") from None

    def add(self, record: Record, force: bool = False) -> Record | None:
        check_name(record.name)
        doc = record.to_dict()
        if force:
            old = self._call(self.coll.find_one_and_replace, {"name": record.name}, doc, upsert=True,
                             projection={"_id": False})
            return Record.from_dict(old) if old else None
        try:
            self._call(self.coll.insert_one, dict(doc))
        except self._pymongo.errors.DuplicateKeyError:
            raise Exists(f"'{record.name}' already exists (use --force to replace it)") from None
        return None

    def get(self, name: str) -> Record:
        doc = self._call(self.coll.find_one, {"name": check_name(name)}, {"_id": False})
        if doc is None:
            raise NotFound(f"no record named '{name}'")
        return Record.from_dict(doc)

    def list(self) -> Iterator[Record]:
        for doc in self._call(lambda: list(self.coll.find({}, {"_id": False}).sort("name", 1))):
            yield Record.from_dict(doc)

    def delete(self, name: str) -> None:
        result = self._call(self.coll.delete_one, {"name": check_name(name)})
        if result.deleted_count == 0:
            raise NotFound(f"no record named '{name}'")

    def ping(self) -> str:
        self._call(self.client.admin.command, "ping")
        return "MongoDB answers"
