"""The host inventory: YAML to hosts, groups, labels and node ranges, validated.

Every validation error names the file, the key path (``hosts.gpu1.slots``) and
what was expected. Read with ``yaml.safe_load`` only.
"""
from __future__ import annotations

import difflib
import itertools
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from . import slurmspec, yamlfile
from .errors import ConfigError

BUILTIN = "<built-in>"

_HOST_KEYS = {"hostname", "user", "port", "identity", "slots", "labels", "env", "workdir", "local", "ssh_options", "slurm"}
_TOP_KEYS = {"defaults", "hosts", "groups", "ssh_config", "include"}
MAX_INCLUDE_DEPTH = 8
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Host:
    name: str
    hostname: str
    slots: int = 1
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    labels: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None
    local: bool = False
    ssh_options: tuple[str, ...] = ()
    ssh_config: str | None = None     # the ssh_config: of the inventory file that defines the host
    slurm: slurmspec.SlurmSpec | None = None   # a Slurm cluster (see slurmspec.py), not one machine


@dataclass(frozen=True)
class Inventory:
    hosts: tuple[Host, ...]
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ssh_config: str | None = None
    source: str = BUILTIN
    _by_name: dict[str, Host] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({h.name: h for h in self.hosts})

    def host(self, name: str) -> Host:
        return self._by_name[name]

    @property
    def labels(self) -> set[str]:
        return {label for h in self.hosts for label in h.labels}

    def target_names(self) -> list[str]:
        return [h.name for h in self.hosts] + [g for g, _ in self.groups] + sorted(self.labels) + ["all"]

    def resolve(self, target: str | None) -> tuple[Host, ...]:
        """Hosts a target names: a host, group, label, node range, or a comma list of these.

        Raises KeyError naming the first part that matches nothing.
        """
        if target is None or target == "all":
            return self.hosts
        groups = dict(self.groups)
        chosen: dict[str, Host] = {}
        for part in split_targets(target):
            names: list[str]
            if part in self._by_name:
                names = [part]
            elif part in groups:
                names = list(groups[part])
            elif any(part in h.labels for h in self.hosts):
                names = [h.name for h in self.hosts if part in h.labels]
            else:
                expanded = expand_nodeset(part)
                if len(expanded) > 1 or expanded[0] != part:
                    missing = [n for n in expanded if n not in self._by_name]
                    if missing:
                        raise KeyError(missing[0])
                    names = expanded
                else:
                    raise KeyError(part)
            for n in names:
                chosen.setdefault(n, self._by_name[n])
        return tuple(chosen.values())

    def is_target(self, target: str) -> bool:
        try:
            return bool(self.resolve(target))
        except (KeyError, ValueError):
            return False


def split_targets(text: str) -> list[str]:
    """Split ``a,node[1-3],b`` on commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def expand_nodeset(pattern: str) -> list[str]:
    """ClusterShell-style ranges: ``node[01-03,7]`` -> node01 node02 node03 node07.

    Zero padding follows the range's own width; several brackets multiply.
    """
    pieces = re.split(r"(\[[^\]]*\])", pattern)
    choices: list[list[str]] = []
    for piece in pieces:
        if piece.startswith("[") and piece.endswith("]"):
            values: list[str] = []
            for item in piece[1:-1].split(","):
                item = item.strip()
                m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
                if not m:
                    raise ValueError(f"bad range '{item}' in '{pattern}' (expected N or N-M)")
                lo, hi = m.group(1), m.group(2) or m.group(1)
                if int(hi) < int(lo):
                    raise ValueError(f"bad range '{item}' in '{pattern}' ({hi} < {lo})")
                width = len(lo) if lo.startswith("0") else 0
                if int(hi) - int(lo) > 100_000:
                    raise ValueError(f"range '{item}' in '{pattern}' is too large")
                values.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
            choices.append(values)
        elif "[" in piece or "]" in piece:
            raise ValueError(f"unbalanced bracket in '{pattern}'")
        else:
            choices.append([piece])
    return ["".join(combo) for combo in itertools.product(*choices)]


def fold_nodeset(names: Iterable[str]) -> str:
    """The inverse of expand_nodeset for display: h1 h2 h3 web -> h[1-3],web."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    plain: list[str] = []
    for name in names:
        m = re.fullmatch(r"(.*?)(\d+)(\D*)", name)
        if not m:
            plain.append(name)
            continue
        prefix, digits, suffix = m.groups()
        width = len(digits) if digits.startswith("0") and len(digits) > 1 else 0
        groups.setdefault((prefix, suffix, width), []).append(int(digits))
    out: list[str] = []
    for (prefix, suffix, width), nums in groups.items():
        nums = sorted(set(nums))
        if len(nums) == 1:
            out.append(f"{prefix}{str(nums[0]).zfill(width)}{suffix}")
            continue
        ranges: list[str] = []
        start = prev = nums[0]
        for n in nums[1:] + [None]:  # type: ignore[list-item]
            if n is not None and n == prev + 1:
                prev = n
                continue
            a, b = str(start).zfill(width), str(prev).zfill(width)
            ranges.append(a if start == prev else f"{a}-{b}")
            if n is not None:
                start = prev = n
        out.append(f"{prefix}[{','.join(ranges)}]{suffix}")
    return ",".join(out + plain)


def builtin_inventory() -> Inventory:
    """One local host with a slot per CPU: a fresh install runs flows with no setup.

    Inside a Slurm allocation (``SLURM_JOB_ID``: a user's salloc, an sbatch script)
    the allocation is the host instead: its nodes run the jobs (transport/slurm.py).
    """
    if os.environ.get("SLURM_JOB_ID"):
        return Inventory((Host("slurm", "slurm", slots=1, slurm=slurmspec.SlurmSpec()),),
                         source=f"Slurm allocation {os.environ['SLURM_JOB_ID']}")
    return Inventory((Host("localhost", "localhost", slots=os.cpu_count() or 1, local=True),), source=BUILTIN)


def find_inventory_file(explicit: str | None = None) -> str | None:
    """--hosts FILE, ./hosts.yaml, $CMFLOW_HOSTS, ~/.cmflow/hosts.yaml, else None (built-in)."""
    return yamlfile.first_file(explicit, [Path("hosts.yaml"), os.environ.get("CMFLOW_HOSTS"),
                                          Path.home() / ".cmflow" / "hosts.yaml"])


def load_inventory(explicit: str | None = None) -> Inventory:
    path = find_inventory_file(explicit)
    if path is None:
        return builtin_inventory()
    return parse_inventory(yamlfile.read_text(path, "inventory"), path)


def parse_inventory(text: str, filename: str = "hosts.yaml", _including: tuple[str, ...] = ()) -> Inventory:
    doc = yamlfile.load(text, filename)
    v = _Validator(filename)
    if doc is None:
        doc = {}
    v.mapping(doc, "", "a mapping with 'hosts:' (and optionally 'defaults:', 'groups:', 'ssh_config:')")
    v.known_keys(doc, "", _TOP_KEYS)
    defaults = doc.get("defaults") or {}
    v.mapping(defaults, "defaults", "a mapping of host settings")
    v.known_keys(defaults, "defaults", _HOST_KEYS)
    included = _included(doc, filename, _including)
    raw_hosts = doc.get("hosts")
    if raw_hosts is None:
        if not included:
            raise ConfigError(filename, "hosts", "missing: expected a mapping from host name to settings")
        raw_hosts = {}
    v.mapping(raw_hosts, "hosts", "a mapping from host name to settings")
    hosts: dict[str, Host] = {}
    for key, settings in raw_hosts.items():
        path = f"hosts.{key}"
        if not isinstance(key, str) or not key:
            raise ConfigError(filename, path, "a host name must be a non-empty string")
        try:
            names = expand_nodeset(key)
        except ValueError as e:
            raise ConfigError(filename, path, str(e)) from None
        settings = {} if settings is None else settings
        v.mapping(settings, path, "a mapping of host settings (or nothing)")
        v.known_keys(settings, path, _HOST_KEYS)
        merged = {**defaults, **settings}
        for name in names:
            if not _NAME_RE.fullmatch(name):
                raise ConfigError(filename, path, f"'{name}' is not a valid host name (letters, digits, '_.-')")
            if name in hosts:
                raise ConfigError(filename, path, f"host '{name}' is defined twice")
            hosts[name] = v.host(name, merged, path)
    ssh_config = doc.get("ssh_config")
    if ssh_config is not None:
        if not isinstance(ssh_config, str):
            raise ConfigError(filename, "ssh_config", "expected a path to an ssh config file")
        ssh_config = str(_relative_to(filename, os.path.expanduser(ssh_config)))
        hosts = {n: replace(h, ssh_config=ssh_config) for n, h in hosts.items()}
    groups: list[tuple[str, tuple[str, ...]]] = []
    for i, sub in included:
        for h in sub.hosts:
            if h.name in hosts:
                raise ConfigError(filename, f"include[{i}]", f"host '{h.name}' is defined both here and in {sub.source}")
            hosts[h.name] = h
        for gname, members in sub.groups:
            if any(g == gname for g, _ in groups):
                raise ConfigError(filename, f"include[{i}]", f"group '{gname}' is defined by two included inventories")
            groups.append((gname, members))
    if not hosts:
        raise ConfigError(filename, "hosts", "no hosts defined")
    raw_groups = doc.get("groups") or {}
    v.mapping(raw_groups, "groups", "a mapping from group name to a list of hosts")
    for gname, members in raw_groups.items():
        path = f"groups.{gname}"
        if isinstance(members, str):
            members = [members]
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ConfigError(filename, path, "expected a list of host names")
        if gname in hosts:
            raise ConfigError(filename, path, f"'{gname}' is already a host name")
        if any(g == gname for g, _ in groups):
            raise ConfigError(filename, path, f"group '{gname}' is also defined by an included inventory")
        expanded: list[str] = []
        for i, m in enumerate(members):
            try:
                for n in expand_nodeset(m):
                    if n not in hosts:
                        raise ConfigError(filename, f"{path}[{i}]", f"unknown host '{n}'"
                                          + _did_you_mean(n, hosts))
                    expanded.append(n)
            except ValueError as e:
                raise ConfigError(filename, f"{path}[{i}]", str(e)) from None
        groups.append((str(gname), tuple(expanded)))
    return Inventory(tuple(hosts.values()), tuple(groups), ssh_config, filename)


def _included(doc: dict, filename: str, including: tuple[str, ...]) -> list[tuple[int, Inventory]]:
    """`include: FILE` or a list of files (relative to this one): their hosts and groups join this
    inventory, each host keeping its own file's ssh_config (e.g. the one `cmflow vm up` writes)."""
    raw = doc.get("include")
    if raw is None:
        return []
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(x, str) and x for x in items):
        raise ConfigError(filename, "include", "expected an inventory file or a list of them")
    chain = (*including, str(Path(filename).resolve()))
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise ConfigError(filename, "include", f"includes nest deeper than {MAX_INCLUDE_DEPTH} files")
    out = []
    for i, item in enumerate(items):
        path = _relative_to(filename, os.path.expanduser(item))
        if str(path.resolve()) in chain:
            raise ConfigError(filename, f"include[{i}]", f"{item} includes itself (through {' -> '.join(chain)})")
        if not path.is_file():
            raise ConfigError(filename, f"include[{i}]", f"no such inventory file: {path}")
        out.append((i, parse_inventory(yamlfile.read_text(str(path), "inventory"), str(path), chain)))
    return out


def _relative_to(inventory_file: str, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (Path(inventory_file).resolve().parent / p)


def _did_you_mean(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


class _Validator:
    def __init__(self, filename: str):
        self.filename = filename

    def fail(self, path: str, message: str) -> None:
        raise ConfigError(self.filename, path, message)

    def mapping(self, value: Any, path: str, expected: str) -> None:
        if not isinstance(value, dict):
            self.fail(path, f"expected {expected}, got {_kind(value)}")

    def known_keys(self, value: dict, path: str, allowed: set[str]) -> None:
        for k in value:
            if k not in allowed:
                self.fail(f"{path}.{k}" if path else str(k),
                          "unknown key" + _did_you_mean(str(k), allowed) + f"; expected one of {', '.join(sorted(allowed))}")

    def host(self, name: str, s: dict, path: str) -> Host:
        def get(key: str, kind: type | tuple, expected: str, default: Any = None) -> Any:
            value = s.get(key, default)
            if value is None:
                return default
            if isinstance(value, bool) and kind is int or not isinstance(value, kind):
                self.fail(f"{path}.{key}", f"expected {expected}, got {_kind(value)}")
            return value

        slurm = slurmspec.parse(s["slurm"], f"{path}.slurm", self.fail) if "slurm" in s else None
        slots = get("slots", int, "a positive integer (jobs at once)", slurmspec.default_slots(slurm) if slurm else 1)
        if slots < 1:
            self.fail(f"{path}.slots", f"expected a positive integer (jobs at once), got {slots}")
        port = get("port", int, "a port number (1-65535)")
        if port is not None and not 0 < port < 65536:
            self.fail(f"{path}.port", f"expected a port number (1-65535), got {port}")
        hostname = get("hostname", (str, int, float), "a host name or address", name)
        hostname = str(hostname).replace("{name}", name)
        labels = get("labels", list, "a list of labels", [])
        for i, label in enumerate(labels):
            if not isinstance(label, str) or not _NAME_RE.fullmatch(label):
                self.fail(f"{path}.labels[{i}]", f"expected a label (letters, digits, '_.-'), got {label!r}")
        env = get("env", dict, "a mapping of environment variables", {})
        for k, val in env.items():
            if not isinstance(k, str) or not _ENV_NAME_RE.fullmatch(k):
                self.fail(f"{path}.env.{k}", "expected an environment variable name")
            if not isinstance(val, (str, int, float, bool)):
                self.fail(f"{path}.env.{k}", f"expected a string value, got {_kind(val)}")
        ssh_options = get("ssh_options", (list, dict), "a list of 'Key=Value' strings or a mapping", [])
        if isinstance(ssh_options, dict):
            ssh_options = [f"{k}={v}" for k, v in ssh_options.items()]
        for i, opt in enumerate(ssh_options):
            if not isinstance(opt, str) or "=" not in opt or opt.startswith("-"):
                self.fail(f"{path}.ssh_options[{i}]", f"expected 'Key=Value' (an ssh -o option), got {opt!r}")
        identity = get("identity", str, "a path to a private key file")
        return Host(
            name=name, hostname=hostname, slots=slots,
            user=get("user", str, "a user name"), port=port,
            identity=os.path.expanduser(identity) if identity else None,
            labels=tuple(labels), env=tuple((k, str(v)) for k, v in env.items()),
            workdir=get("workdir", str, "a directory path"), local=get("local", bool, "true or false", False),
            ssh_options=tuple(ssh_options), slurm=slurm,
        )


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the string {value!r}", bool: f"{value}".lower(),
            int: f"the number {value}", float: f"the number {value}"}.get(type(value), type(value).__name__)
