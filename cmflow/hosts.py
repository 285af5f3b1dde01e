"""The host inventory: YAML to hosts, groups, labels and node ranges, validated.

Every validation error names the file, the key path (``hosts.gpu1.slots``) and
what was expected. Read with ``yaml.safe_load`` only.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from . import slurmspec, yamlfile
from .errors import ConfigError, short

BUILTIN = "<built-in>"

_HOST_KEYS = {"hostname", "user", "port", "identity", "slots", "labels", "env", "workdir", "local", "ssh_options", "slurm"}
_TOP_KEYS = {"defaults", "hosts", "groups", "ssh_config", "include"}
MAX_INCLUDE_DEPTH = 8
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
# what ssh gets as the host: a DNS name, an alias of the user's ssh config, an IPv4
# or IPv6 address; never anything ssh could read as an option
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,252}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(%[A-Za-z0-9_.\-]+)?")
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-@$\\]{0,63}")
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
MAX_NODES = 100_000      # names one node set (or one inventory) may expand to
MAX_SLOTS = 4096         # jobs at once on one host (a Slurm allocation: 16 times that)
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
        """Hosts a target names: hosts, groups, labels, node sets, joined by ClusterShell's operators.

        ``a,b`` union, ``a!b`` difference, ``a&b`` intersection, ``a^b``
        symmetric difference, left to right (as ``nodeset`` does). Raises
        KeyError naming the first part that matches nothing, ValueError for a bad
        or too large node set.
        """
        if target is None or target == "all":
            return self.hosts
        chosen: dict[str, Host] = {}
        for op, term in _target_terms(target):
            if not term:
                raise ValueError(f"empty name {'before' if op == ',' else 'after'} {op!r} in target {short(target)}")
            names = self._names(term)
            if op == ",":
                for n in names:
                    chosen.setdefault(n, self._by_name[n])
            elif op == "!":
                for n in names:
                    chosen.pop(n, None)
            elif op == "&":
                keep = set(names)
                chosen = {n: h for n, h in chosen.items() if n in keep}
            else:  # ^
                for n in names:
                    if chosen.pop(n, None) is None:
                        chosen[n] = self._by_name[n]
        return tuple(chosen.values())

    def _names(self, part: str) -> list[str]:
        if part == "all":
            return list(self._by_name)
        if part in self._by_name:
            return [part]
        groups = dict(self.groups)
        if part in groups:
            return list(groups[part])
        if any(part in h.labels for h in self.hosts):
            return [h.name for h in self.hosts if part in h.labels]
        expanded = expand_nodeset(part)
        if len(expanded) == 1 and expanded[0] == part:
            raise KeyError(part)
        for n in expanded:
            if n not in self._by_name:
                raise KeyError(n)
        return expanded

    def is_target(self, target: str) -> bool:
        """Whether a target names any host; a bad or too large node set raises ValueError."""
        try:
            return bool(self.resolve(target))
        except KeyError:
            return False


_OPERATORS = ",!&^"


def split_targets(text: str) -> list[str]:
    """Split ``a,node[1-3],b`` on commas outside brackets."""
    return [t for op, t in _target_terms(text) if t]


def _target_terms(text: str) -> list[tuple[str, str]]:
    """``a,n[1-3]!n2`` -> [(',', 'a'), (',', 'n[1-3]'), ('!', 'n2')]: operators outside brackets."""
    terms: list[tuple[str, str]] = []
    op, depth, start = ",", 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif depth == 0 and ch in _OPERATORS:
            terms.append((op, text[start:i].strip()))
            op, start = ch, i + 1
    terms.append((op, text[start:].strip()))
    return terms


_RANGE_ITEM = re.compile(r"\s*(\d{1,18})\s*(?:-\s*(\d{1,18})\s*(?:/\s*(\d{1,18})\s*)?)?")


def _upper_bound(pattern: str) -> int:
    """How many names a ClusterShell pattern can expand to, counted without expanding it."""
    total = 0
    for _, term in _target_terms(pattern):
        product = 1
        for body in re.findall(r"\[([^\]]*)\]", term):
            size = 0
            for item in body.split(","):
                m = _RANGE_ITEM.fullmatch(item)
                if m is None:
                    if re.search(r"\d{19}", item):
                        raise ValueError(f"a number in node set {short(pattern)} is too long")
                    size += 1      # not a range: ClusterShell words the error
                    continue
                lo, hi, step = int(m[1]), int(m[2] or m[1]), int(m[3] or 1)
                size += max(0, hi - lo) // max(step, 1) + 1
            product *= max(size, 1)
        total += product
    return total


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]+")    # what ClusterShell reads as one name, as it is


def expand_nodeset(pattern: str) -> list[str]:
    """ClusterShell's NodeSet (the notation's reference): ``node[01-03,7]``, ``n[1-10/2]``, ``r[1-2]n[1-3]``.

    Names come sorted and de-duplicated, as ``nodeset -e`` prints them; the
    operators ``,`` ``!`` ``&`` ``^`` work left to right as in ClusterShell;
    ``@group`` is not used (groups are the inventory's). Raises ValueError with
    ClusterShell's reason, or when the set would hold more than MAX_NODES names
    (counted before anything is expanded).
    """
    if _PLAIN_NAME.fullmatch(pattern):
        return [pattern]     # no set notation: itself (an inventory of 256 names: 0.1 s less start-up)
    if _upper_bound(pattern) > MAX_NODES:
        raise ValueError(f"node set {short(pattern)} expands to more than {MAX_NODES} names")
    if "@" in pattern:
        raise ValueError(f"'@' in node set {short(pattern)}: ClusterShell groups are not used; "
                         "name an inventory group instead")
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

    try:
        ns = NodeSet(pattern, resolver=RESOLVER_NOGROUP)
    except (NodeSetException, AssertionError, ValueError, OverflowError) as e:
        # ClusterShell asserts on some inputs (n[1-4]99999...: "range too large")
        raise ValueError(f"bad node set {short(pattern)}: {str(e)[:120]}") from None
    if len(ns) > MAX_NODES:
        raise ValueError(f"node set {short(pattern)} expands to more than {MAX_NODES} names")
    return list(ns)


def fold_nodeset(names: Iterable[str]) -> str:
    """Names folded as ClusterShell folds them (``nodeset -f``, ``clush -b``): node[01-16], x[1-2]y[1-3]."""
    names = list(names)
    from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

    try:
        return str(NodeSet.fromlist(names, resolver=RESOLVER_NOGROUP))
    except (NodeSetException, AssertionError, ValueError, OverflowError):
        return ",".join(sorted(set(names)))


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
        path = f"hosts.{_key(key)}"
        if not isinstance(key, str) or not key:
            raise ConfigError(filename, path, "a host name must be a non-empty string")
        try:
            names = expand_nodeset(key)
        except ValueError as e:
            raise ConfigError(filename, path, str(e)) from None
        if len(hosts) + len(names) > MAX_NODES:
            raise ConfigError(filename, path, f"more than {MAX_NODES} hosts in one inventory")
        settings = {} if settings is None else settings
        v.mapping(settings, path, "a mapping of host settings (or nothing)")
        v.known_keys(settings, path, _HOST_KEYS)
        merged = {**defaults, **settings}
        for name in names:
            if not _NAME_RE.fullmatch(name):
                raise ConfigError(filename, path, f"{short(name)} is not a valid host name (letters, digits, '_.-')")
            if name in hosts:
                raise ConfigError(filename, path, f"host '{name}' is defined twice")
            hosts[name] = v.host(name, merged, path)
    ssh_config = doc.get("ssh_config")
    if ssh_config is not None:
        if not isinstance(ssh_config, str) or not ssh_config or _CONTROL_RE.search(ssh_config):
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
    if len(hosts) > MAX_NODES:
        raise ConfigError(filename, "include", f"more than {MAX_NODES} hosts in one inventory")
    raw_groups = doc.get("groups") or {}
    v.mapping(raw_groups, "groups", "a mapping from group name to a list of hosts")
    for gname, members in raw_groups.items():
        path = f"groups.{_key(gname)}"
        if not isinstance(gname, str) or not _NAME_RE.fullmatch(gname):
            raise ConfigError(filename, path, "a group name must be letters, digits and '_.-'")
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
                        raise ConfigError(filename, f"{path}[{i}]", f"unknown host {short(n)}"
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
        try:
            path = _relative_to(filename, os.path.expanduser(item))
            resolved, is_file = str(path.resolve()), path.is_file()
        except (OSError, ValueError) as e:   # a name too long, a NUL, a loop of links
            raise ConfigError(filename, f"include[{i}]",
                              f"cannot use {_key(item)!r}: {getattr(e, 'strerror', None) or e}") from None
        if resolved in chain:
            raise ConfigError(filename, f"include[{i}]", f"{item} includes itself (through {' -> '.join(chain)})")
        if not is_file:
            raise ConfigError(filename, f"include[{i}]", f"no such inventory file: {_key(str(path))}")
        out.append((i, parse_inventory(yamlfile.read_text(str(path), "inventory"), str(path), chain)))
    return out


def _relative_to(inventory_file: str, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else (Path(inventory_file).resolve().parent / p)


def _key(key: Any) -> str:
    """A YAML key as it stands in a key path, cut short."""
    text = str(key)
    return text if len(text) <= 60 else text[:59] + "…"


def _did_you_mean(name: str, options: Iterable[str]) -> str:
    if len(name) > 100:
        return ""
    import difflib   # error path only (start-up time)

    close = difflib.get_close_matches(name, list(options)[:1000], n=1)
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
                self.fail(f"{path}.{_key(k)}" if path else _key(k),
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
        most = MAX_SLOTS * 16 if slurm else MAX_SLOTS     # an allocation spans many nodes
        if not 1 <= slots <= most:
            self.fail(f"{path}.slots", f"expected a positive integer (jobs at once) up to {most}, got {short(slots)}")
        port = get("port", int, "a port number (1-65535)")
        if port is not None and not 0 < port < 65536:
            self.fail(f"{path}.port", f"expected a port number (1-65535), got {short(port)}")
        hostname = str(get("hostname", (str, int, float), "a host name or address", name))
        for placeholder in _PLACEHOLDER_RE.findall(hostname):
            if placeholder != "name":
                self.fail(f"{path}.hostname", f"unknown placeholder {{{_key(placeholder)}}} in {short(hostname)} "
                                              "(the one placeholder is {name})")
        hostname = hostname.replace("{name}", name)
        if not _HOSTNAME_RE.fullmatch(hostname):
            self.fail(f"{path}.hostname", f"{short(hostname)} is not a host name or address (letters, digits, "
                                          "'_.-', or an IP address; it may not start with '-')")
        user = get("user", str, "a user name")
        if user is not None and not _USER_RE.fullmatch(user):
            self.fail(f"{path}.user", f"{short(user)} is not a user name (it may not start with '-' or hold "
                                      "blanks or control characters)")
        labels = get("labels", list, "a list of labels", [])
        for i, label in enumerate(labels):
            if not isinstance(label, str) or not _NAME_RE.fullmatch(label):
                self.fail(f"{path}.labels[{i}]", f"expected a label (letters, digits, '_.-'), got {short(label)}")
        env = get("env", dict, "a mapping of environment variables", {})
        for k, val in env.items():
            if not isinstance(k, str) or not _ENV_NAME_RE.fullmatch(k):
                self.fail(f"{path}.env.{_key(k)}", "expected an environment variable name")
            if not isinstance(val, (str, int, float, bool)) or isinstance(val, str) and "\0" in val:
                self.fail(f"{path}.env.{k}", f"expected a string value, got {_kind(val)}")
        ssh_options = get("ssh_options", (list, dict), "a list of 'Key=Value' strings or a mapping", [])
        if isinstance(ssh_options, dict):
            ssh_options = [f"{k}={v}" for k, v in ssh_options.items()]
        for i, opt in enumerate(ssh_options):
            if not isinstance(opt, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*[ \t]*=[^\x00-\x1f\x7f]*", opt):
                self.fail(f"{path}.ssh_options[{i}]", f"expected 'Key=Value' (an ssh -o option), got {short(opt)}")
        identity = get("identity", str, "a path to a private key file")
        if identity is not None and (not identity or _CONTROL_RE.search(identity)):
            self.fail(f"{path}.identity", f"expected a path to a private key file, got {short(identity)}")
        workdir = get("workdir", str, "a directory path")
        if workdir is not None and (not workdir or _CONTROL_RE.search(workdir)):
            self.fail(f"{path}.workdir", f"expected a directory path, got {short(workdir)}")
        return Host(
            name=name, hostname=hostname, slots=slots,
            user=user, port=port,
            identity=os.path.expanduser(identity) if identity else None,
            labels=tuple(labels), env=tuple((k, str(v)) for k, v in env.items()),
            workdir=workdir, local=get("local", bool, "true or false", False),
            ssh_options=tuple(ssh_options), slurm=slurm,
        )


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    return {dict: "a mapping", list: "a list", str: f"the string {short(value)}", int: f"the number {short(value)}",
            float: f"the number {short(value)}"}.get(type(value), type(value).__name__)
