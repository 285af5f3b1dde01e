"""Data config: which databases and storage services exist, and the defaults.

Shape (the seed's):

    default: {db: local, service: local}
    db:
      local: {kind: local, path: ~/.cmflow/data/db}
      mongo: {kind: mongo, url: "mongodb://127.0.0.1:27017", database: cmflow}
    service:
      local: {kind: local, path: ~/.cmflow/data/storage}
      azure: {kind: azure, account: devstoreaccount1, key: {env: AZURE_KEY}, container: data}
      s3:    {kind: s3, access_key: {env: AWS_ACCESS_KEY_ID}, secret_key: {env: AWS_SECRET_ACCESS_KEY},
              bucket: data, region: us-east-1, endpoint: "http://127.0.0.1:5000"}

Any value may be ``{env: NAME}``: it is read from the environment when used,
so credentials need not be written down; they are never printed or logged.

The original project's ``cmdata.yaml`` is read as written: a top-level ``cmdata:``
key, ``CMDATA_DB_FOLDER`` / ``CMDATA_STORAGE_FOLDER`` for local folders,
``MONGO_CONNECTION_STRING``, ``credentials: {AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY}``
and ``credentials: {GOOGLE_STORAGE_KEY, GOOGLE_STORAGE_SECRET}``, where an empty
value means "the environment variable of the same name" (as the original did).
A service of a kind cmflow does not know is kept, reported as unsupported by
``data services``, and refused by name when used; the others keep working.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import yamlfile
from ..errors import ConfigError, short

KINDS_DB = {"local", "mongo"}
KINDS_SERVICE = {"local", "azure", "s3", "google", "gdrive", "box"}

# the original cmdata.yaml's keys -> ours, per kind; "credentials.X" is X inside `credentials:`
LEGACY_KEYS = {
    ("db", "local"): {"CMDATA_DB_FOLDER": "path"},
    ("db", "mongo"): {"MONGO_CONNECTION_STRING": "url"},
    ("service", "local"): {"CMDATA_STORAGE_FOLDER": "path"},
    ("service", "azure"): {"credentials.AZURE_STORAGE_ACCOUNT": "account", "credentials.AZURE_STORAGE_KEY": "key"},
    ("service", "google"): {"credentials.GOOGLE_STORAGE_KEY": "access_key",
                            "credentials.GOOGLE_STORAGE_SECRET": "secret_key"},
}


def data_home() -> Path:
    return Path(os.environ.get("CMFLOW_DATA") or Path.home() / ".cmflow" / "data")


@dataclass(frozen=True)
class Section:
    name: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict, compare=False)
    source: str = "<built-in>"
    section: str = "service"   # "db" or "service": where it stands in the config

    @property
    def supported(self) -> bool:
        return self.kind in (KINDS_DB if self.section == "db" else KINDS_SERVICE)

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        value = self.settings.get(key, default)
        if isinstance(value, dict) and set(value) == {"env"}:
            env = str(value["env"])
            if env not in os.environ:
                if required:
                    raise ConfigError(self.source, f"{self.path}.{key}", f"environment variable {env} is not set")
                return default
            value = os.environ[env]
        if value is None and required:
            raise ConfigError(self.source, f"{self.path}.{key}", "missing")
        return value

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


@dataclass(frozen=True)
class DataConfig:
    dbs: dict[str, Section]
    services: dict[str, Section]
    default_db: str
    default_service: str
    source: str = "<built-in>"


def default_config() -> DataConfig:
    home = data_home()
    return DataConfig(
        {"local": Section("local", "local", {"kind": "local", "path": str(home / "db")}, section="db")},
        {"local": Section("local", "local", {"kind": "local", "path": str(home / "storage")})},
        "local", "local")


def find_config(explicit: str | None) -> str | None:
    return yamlfile.first_file(explicit, [os.environ.get("CMFLOW_DATA_CONFIG"), Path.home() / ".cmflow" / "data.yaml"])


def _modern(settings: dict[str, Any], legacy: dict[str, str]) -> dict[str, Any]:
    """The original's keys as ours; an empty value stands for the environment variable of its name."""
    creds = settings.get("credentials")
    for old, new in legacy.items():
        holder, name = (creds, old.split(".", 1)[1]) if old.startswith("credentials.") else (settings, old)
        if not isinstance(holder, dict) or name not in holder or new in settings:
            continue
        value = holder[name]
        settings[new] = {"env": name} if value in ("", None) else value
    if isinstance(creds, dict) and all(old.split(".", 1)[-1] in creds for old in legacy if "." in old):
        settings.pop("credentials")
    return settings


NUMBERS = {"timeout", "chunk_size", "chunked_threshold"}      # settings that must be numbers


def number_setting(section: Section, key: str, default: float) -> float:
    """A numeric setting (it may come from the environment, so it is checked when read)."""
    value = section.get(key, default)
    try:
        n = float(value)
    except (TypeError, ValueError):
        n = -1.0
    if not n > 0 or n == float("inf"):
        raise ConfigError(section.source, f"{section.path}.{key}", f"expected a positive number, got {short(value)}")
    return n


def load_config(explicit: str | None = None) -> DataConfig:
    path = find_config(explicit)
    if path is None:
        return default_config()
    return parse_config(yamlfile.read_text(path, "data config"), path)


def parse_config(text: str, source: str) -> DataConfig:
    doc = yamlfile.load(text, source) or {}
    if isinstance(doc, dict) and set(doc) == {"cmdata"}:     # the original project's file
        doc = doc["cmdata"] or {}
    if not isinstance(doc, dict):
        raise ConfigError(source, "", "expected a mapping with 'default:', 'db:' and 'service:'")
    for k in doc:
        if k not in ("default", "db", "service"):
            raise ConfigError(source, str(k), "unknown key; expected default, db or service")
    base_dir = Path(source).resolve().parent

    def sections(key: str, kinds: set[str]) -> dict[str, Section]:
        raw = doc.get(key) or {}
        if not isinstance(raw, dict):
            raise ConfigError(source, key, "expected a mapping from name to settings")
        out = {}
        for name, settings in raw.items():
            path = f"{key}.{name}"
            if not isinstance(settings, dict):
                raise ConfigError(source, path, "expected a mapping of settings with 'kind:'")
            kind = settings.get("kind")
            if not isinstance(kind, str) or not kind:
                raise ConfigError(source, f"{path}.kind", f"expected one of {', '.join(sorted(kinds))}")
            settings = _modern(dict(settings), LEGACY_KEYS.get((key, kind), {}))
            if kind == "local":
                p = settings.get("path")
                if isinstance(p, dict) and set(p) == {"env"}:
                    p = os.environ.get(str(p["env"])) or p     # unset: an error when the folder is used
                if isinstance(p, str) and p:
                    p = os.path.expanduser(p)
                    settings["path"] = str(p if os.path.isabs(p) else base_dir / p)
                elif not isinstance(p, dict):
                    raise ConfigError(source, f"{path}.path", "expected a folder path")
            for k, v in settings.items():
                if k in NUMBERS and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                         or isinstance(v, dict) and set(v) == {"env"}):
                    raise ConfigError(source, f"{path}.{k}", f"expected a positive number, got {short(v)}")
            out[str(name)] = Section(str(name), kind, settings, source, key)
        return out

    dbs = sections("db", KINDS_DB)
    services = sections("service", KINDS_SERVICE)
    default = doc.get("default") or {}
    if not isinstance(default, dict):
        raise ConfigError(source, "default", "expected a mapping with 'db:' and 'service:'")
    fallback = default_config()
    if not dbs:
        dbs = fallback.dbs
    if not services:
        services = fallback.services
    for k in ("db", "service"):
        if default.get(k) is not None and not isinstance(default.get(k), str):
            raise ConfigError(source, f"default.{k}", f"expected the name of a {'database' if k == 'db' else 'service'}")
    default_db = default.get("db") or next(iter(dbs))
    default_service = default.get("service") or next(iter(services))
    if default_db not in dbs:
        raise ConfigError(source, "default.db", f"no database named {default_db!r} (have: {', '.join(dbs)})")
    if default_service not in services:
        raise ConfigError(source, "default.service",
                          f"no service named {default_service!r} (have: {', '.join(services)})")
    return DataConfig(dbs, services, default_db, default_service, source)
