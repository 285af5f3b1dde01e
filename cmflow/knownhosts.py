"""OpenSSH known_hosts files, read and written the way ssh itself reads them.

Entries are matched as ssh matches them (comma lists, ``*``/``?`` patterns,
``!`` negation, ``|1|`` hashed names), a new entry is hashed when the user's
``HashKnownHosts`` says so, and a file is rewritten through a temp file and a
rename. Fingerprints are printed as ``ssh-keygen -l`` prints them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .runlog import write_atomic

# the host key algorithms ssh may negotiate for a key of each type (HostKeyAlgorithms)
ALGORITHMS = {
    "ssh-rsa": "rsa-sha2-512,rsa-sha2-256,ssh-rsa",
    "ssh-dss": "ssh-dss",
}
_TYPE_NAMES = {"ssh-rsa": "RSA", "ssh-dss": "DSA", "ssh-ed25519": "ED25519", "ssh-ed448": "ED448"}


@dataclass(frozen=True)
class HostKey:
    type: str
    blob: str          # base64, as in the file

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def describe(self) -> str:
        name = _TYPE_NAMES.get(self.type) or ("ECDSA" if self.type.startswith("ecdsa") else
                                             "ED25519-SK" if "ed25519" in self.type else self.type)
        return f"{name} {self.fingerprint}"


@dataclass(frozen=True)
class Entry:
    file: str
    line: int          # 1-based
    key: HostKey


def algorithms_for(types: set[str]) -> str:
    return ",".join(ALGORITHMS.get(t, t) for t in sorted(types))


def hash_name(name: str, salt: bytes | None = None) -> str:
    """``|1|salt|hmac``: the hashed form ssh writes when HashKnownHosts is yes."""
    salt = salt if salt is not None else os.urandom(20)
    mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(mac).decode()}"


def _pattern_matches(pattern: str, name: str) -> bool:
    # only * and ? are special in ssh patterns; [ ] are literal (as in [host]:port)
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.IGNORECASE) is not None


def hosts_field_matches(field: str, name: str) -> bool:
    """Whether a known_hosts line's host field names ``name``, as ssh decides it."""
    if field.startswith("|1|"):
        try:
            _, _, salt, _ = field.split("|", 3)
            return hmac.compare_digest(hash_name(name, base64.b64decode(salt)), field)
        except (ValueError, TypeError):
            return False
    matched = False
    for pattern in field.split(","):
        if pattern.startswith("!"):
            if _pattern_matches(pattern[1:], name):
                return False          # a negated match rules the line out
        elif _pattern_matches(pattern, name):
            matched = True
    return matched


def _fields(line: str) -> list[str] | None:
    """(hosts, type, blob) of a plain entry; None for comments, markers (@revoked, @cert-authority), junk."""
    parts = line.split()
    if len(parts) < 3 or parts[0].startswith("#") or parts[0].startswith("@"):
        return None
    return parts[:3]


def find(files: list[str], name: str) -> list[Entry]:
    """Every key the files hold for ``name``."""
    found = []
    for file in files:
        try:
            lines = Path(file).read_text(encoding="utf-8", errors="replace").split("\n")
        except OSError:
            continue
        for i, line in enumerate(lines, 1):
            f = _fields(line)
            if f and hosts_field_matches(f[0], name):
                found.append(Entry(file, i, HostKey(f[1], f[2])))
    return found


def replace(file: str, name: str, key: HostKey, hashed: bool) -> int:
    """Drop the file's entries naming exactly ``name`` (hashed or listed), add ``key``; return how many went.

    Lines that name it only through a wildcard are kept: ssh accepts a host when any entry holds its key.
    """
    path = Path(file)
    kept: list[str] = []
    dropped = 0
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            f = _fields(line)
            if f and (f[0].startswith("|1|") and hosts_field_matches(f[0], name)):
                dropped += 1
                continue
            if f and name in f[0].split(","):
                others = [h for h in f[0].split(",") if h != name]
                dropped += 1
                if not others:
                    continue
                line = " ".join([",".join(others)] + line.split()[1:])
            kept.append(line)
        while kept and kept[-1] == "":
            kept.pop()
    entry = f"{hash_name(name) if hashed else name} {key.type} {key.blob}"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, "\n".join(kept + [entry]) + "\n")
    return dropped


def parse_entries(text: str) -> list[tuple[str, HostKey]]:
    """(host field, key) of each plain entry of a known_hosts text."""
    out = []
    for line in text.split("\n"):
        f = _fields(line)
        if f:
            out.append((f[0], HostKey(f[1], f[2])))
    return out
