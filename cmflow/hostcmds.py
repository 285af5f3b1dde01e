"""``cmflow hosts list|check|trust`` and ``cmflow exec``: host-level commands.

A thin layer: the work is done by the inventory and the transports; these
functions only gather, group and print.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import knownhosts
from .aio import within
from .errors import UsageError
from .hosts import Host, Inventory, fold_nodeset, load_inventory
from .knownhosts import HostKey
from .transport import JobSpec
from .transport.ssh import classify_ssh_error, ssh_base_argv


def _resolve(inv: Inventory, targets: Sequence[str] | str | None) -> tuple[Host, ...]:
    if not targets:
        return inv.hosts
    parts = [targets] if isinstance(targets, str) else list(targets)
    chosen: dict[str, Host] = {}
    for t in parts:
        try:
            for h in inv.resolve(t):
                chosen.setdefault(h.name, h)
        except (KeyError, ValueError) as e:
            raise UsageError(f"unknown host, group or label {e} (known: {_known(inv)})") from None
    return tuple(chosen.values())


def _known(inv: Inventory, width: int = 200) -> str:
    """The targets an inventory has, short enough for one message: hosts folded as clush folds them."""
    hosts = fold_nodeset(h.name for h in inv.hosts) if len(inv.hosts) <= 10_000 else f"{len(inv.hosts)} hosts"
    text = ", ".join([hosts, *(g for g, _ in inv.groups), *sorted(inv.labels), "all"])
    return text if len(text) <= width else text[:width].rsplit(",", 1)[0] + ", …"


def dispatch(args: dict) -> int:
    inv = load_inventory(args["--hosts"])
    if args["list"]:
        return list_hosts(inv, args["TARGET"][0] if args["TARGET"] else None)
    if args["check"]:
        timeout = float(args["--connect-timeout"] or 10)
        return asyncio.run(check_hosts(inv, args["TARGET"], timeout))
    if args["trust"]:
        return trust_hosts(inv, args["HOST"], args["--yes"], args["--replace"],
                           float(args["--connect-timeout"] or 10))
    raise UsageError("unknown hosts command")


# ---------------------------------------------------------------------- list
def list_hosts(inv: Inventory, target: str | None = None) -> int:
    hosts = _resolve(inv, target)
    groups = {h.name: [g for g, members in inv.groups if h.name in members] for h in hosts}
    rows = [("NAME", "ADDRESS", "SLOTS", "LABELS", "GROUPS")]
    for h in hosts:
        addr = "local" if h.local else (f"{h.user + '@' if h.user else ''}{h.hostname}"
                                        f"{':' + str(h.port) if h.port else ''}")
        if h.slurm:
            addr = f"slurm:{h.slurm.submit}" + (f":{h.slurm.partition}" if h.slurm.partition else "")
        rows.append((h.name, addr, str(h.slots), ",".join(h.labels) or "-", ",".join(groups[h.name]) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"# {len(hosts)} host{'s' if len(hosts) != 1 else ''}, {sum(h.slots for h in hosts)} slots; "
          f"from {inv.source}" + (f"; ssh config {inv.ssh_config}" if inv.ssh_config else ""))
    return 0


# --------------------------------------------------------------------- check
@dataclass(frozen=True)
class HostStatus:
    host: str
    ok: bool
    status: str
    cpus: str = "-"
    load: str = "-"


_PROBE = "nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime"


async def probe(host: Host, ssh_config: str | None, timeout: float) -> HostStatus:
    if host.slurm:
        from .transport.slurm import probe_cluster

        ok, status, cpus = await probe_cluster(host, timeout)
        return HostStatus(host.name, ok, status, cpus)
    if host.local:
        argv = ["/bin/sh", "-c", _PROBE]
    else:
        argv = [*ssh_base_argv(host, ssh_config, timeout), host.hostname, _PROBE]
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        return HostStatus(host.name, False, "no ssh client on this machine (install openssh-client)")
    try:
        out, err = await within(proc.communicate(), timeout + 5)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return HostStatus(host.name, False, "timeout")
    if proc.returncode == 0:
        lines = out.decode().split("\n")
        return HostStatus(host.name, True, "reachable", lines[0].strip() or "-",
                          lines[1].strip() if len(lines) > 1 else "-")
    text = err.decode("utf-8", "replace")
    if proc.returncode != 255:
        return HostStatus(host.name, False, f"probe failed (exit {proc.returncode})")
    low = text.lower()
    if "host key" in low or "identification has changed" in low:
        status = "host key unknown" if "changed" not in low else "host key CHANGED"
    elif "permission denied" in low:
        status = "auth failed"
    elif "timed out" in low:
        status = "timeout"
    else:
        status = "unreachable"
    return HostStatus(host.name, False, f"{status}: {classify_ssh_error(text, host)}")


async def check_hosts(inv: Inventory, targets: Sequence[str], timeout: float) -> int:
    hosts = _resolve(inv, targets)
    results = await asyncio.gather(*(probe(h, inv.ssh_config, timeout) for h in hosts))
    rows = [("HOST", "STATUS", "CPUS", "LOAD")] + [(r.host, r.status, r.cpus, r.load) for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    bad = [r.host for r in results if not r.ok]
    if bad:
        print(f"{len(bad)} of {len(results)} host(s) not ready: {fold_nodeset(bad)}", file=sys.stderr)
    return 1 if bad else 0


# --------------------------------------------------------------------- trust
# ssh connects, checks the host key, then fails to log in: every way to authenticate is off
_NO_LOGIN = ["-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no", "-o", "PasswordAuthentication=no",
             "-o", "KbdInteractiveAuthentication=no", "-o", "GSSAPIAuthentication=no",
             "-o", "HostbasedAuthentication=no", "-o", "ControlMaster=no", "-o", "ControlPath=none",
             "-o", "UpdateHostKeys=no", "-o", "LogLevel=ERROR"]


def _ssh_settings(host: Host, ssh_config: str | None) -> dict[str, str]:
    """What ssh itself would use for this host (``ssh -G``): real name, port, alias, known_hosts, jumps."""
    argv = ssh_base_argv(host, ssh_config) + ["-G", host.hostname]
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError("ssh not found (install openssh-client)") from None
    if r.returncode != 0:
        raise UsageError(f"ssh -G {host.hostname} failed: {r.stderr.strip()}")
    settings: dict[str, str] = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, value)
    return settings


def _ssh_no_login(host: Host, ssh_config: str | None, options: list[str], timeout: float
                  ) -> subprocess.CompletedProcess:
    """ssh to the host as the user's config says, with our options first (ssh keeps the first value given)."""
    base = ssh_base_argv(host, ssh_config, timeout)
    argv = [base[0], *options, *_NO_LOGIN, *base[1:], host.hostname, "true"]
    return subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout * 3 + 10)


def fetch_host_key(host: Host, ssh_config: str | None, algorithms: str | None = None,
                   timeout: float = 10) -> tuple[str, HostKey] | str:
    """The key ssh is offered, and the name ssh files it under; or why it could not get one.

    ssh itself connects (through the user's ProxyJump/ProxyCommand, to the HostName and Port it resolves) and
    files the new key in an empty known_hosts of our own, unhashed: that entry's name is exactly the one ssh
    will look up later (HostKeyAlias, or host, or [host]:port).
    """
    with tempfile.TemporaryDirectory(prefix="cmflow-trust-") as tmp:
        scratch = Path(tmp) / "known_hosts"
        options = ["-o", f"UserKnownHostsFile={scratch}", "-o", "GlobalKnownHostsFile=/dev/null",
                   "-o", "StrictHostKeyChecking=accept-new", "-o", "HashKnownHosts=no", "-o", "CheckHostIP=no"]
        if algorithms:
            options += ["-o", f"HostKeyAlgorithms={algorithms}"]
        r = _ssh_no_login(host, ssh_config, options, timeout)
        entries = knownhosts.parse_entries(scratch.read_text()) if scratch.exists() else []
    if not entries:
        return r.stderr.strip() or f"ssh exited with status {r.returncode}"
    return entries[0]


def _host_key_accepted(host: Host, ssh_config: str | None, timeout: float) -> str:
    """"" when ssh, with strict checking, accepts the host's key as filed now; else ssh's complaint."""
    r = _ssh_no_login(host, ssh_config, ["-o", "StrictHostKeyChecking=yes"], timeout)
    low = r.stderr.lower()
    if "host key verification failed" in low or "identification has changed" in low or "is known" in low:
        return r.stderr.strip()
    return ""


def trust_hosts(inv: Inventory, names: Sequence[str], yes: bool, replace: bool = False,
                timeout: float = 10) -> int:
    status = 0
    for host in _resolve(inv, list(names)):
        if host.local or host.slurm:
            print(f"{host.name}: {'Slurm' if host.slurm else 'local'} host, nothing to trust")
            continue
        status = max(status, trust_host(inv, host, yes, replace, timeout))
    return status


def trust_host(inv: Inventory, host: Host, yes: bool, replace: bool, timeout: float) -> int:
    s = _ssh_settings(host, inv.ssh_config)
    real, port = s.get("hostname", host.hostname), s.get("port", "22")
    jump = next((f"{k} {s[k]}" for k in ("proxyjump", "proxycommand") if s.get(k, "none") != "none"), "")
    where = f"{real}:{port}" + (f" via {jump}" if jump else "")
    user_files = [os.path.expanduser(f) for f in s.get("userknownhostsfile", "~/.ssh/known_hosts").split()]
    global_files = [os.path.expanduser(f) for f in s.get("globalknownhostsfile", "").split()]
    hashed = s.get("hashknownhosts", "no") == "yes"
    name = s.get("hostkeyalias") or (real if port == "22" else f"[{real}]:{port}")

    # compare like with like: ask for the key types already on file for this name, as ssh would
    known = knownhosts.find(user_files + global_files, name)
    types = {e.key.type for e in known}
    got = fetch_host_key(host, inv.ssh_config, knownhosts.algorithms_for(types) if types else None, timeout)
    if isinstance(got, str) and types and "no matching host key type" in got:
        got = fetch_host_key(host, inv.ssh_config, None, timeout)   # it no longer offers any type on file
    if isinstance(got, str):
        why = classify_ssh_error(got, host) if not jump else f"{got.splitlines()[-1] if got else 'no answer'}"
        hint = (f"; the jump ({jump}) must be reachable and trusted first: ssh to it once, or "
                f"`cmflow hosts trust` it if it is in the inventory") if jump else ""
        print(f"{host.name}: no host key from {where}: {why}{hint}", file=sys.stderr)
        return 1
    field, key = got
    if field != name:            # ssh knows best which name it files the key under
        name = field
        known = knownhosts.find(user_files + global_files, name)
    if any(e.key == key for e in known):
        e = next(e for e in known if e.key == key)
        print(f"{host.name}: already trusted ({key.describe()}, as {name} in {e.file}); nothing written")
        return 0
    print(f"{host.name} ({where}) offers {key.describe()}")
    changed = [e for e in known if e.key.type == key.type] or known
    if changed:
        print(f"  host key CHANGED for {name}:")
        for e in changed:
            print(f"    known:   {e.key.describe()}  ({e.file}:{e.line})")
        print(f"    offered: {key.describe()}")
        if not replace:
            print(f"{host.name}: refused: a changed key can mean someone is in the middle; if the host was "
                  f"reinstalled, check the new fingerprint and run `cmflow hosts trust {host.name} --replace`",
                  file=sys.stderr)
            return 1
    target = user_files[0]
    if not yes:
        if not sys.stdin.isatty():
            print("  not a terminal: re-run with --yes to trust this key", file=sys.stderr)
            return 1
        answer = input(f"{'Replace' if changed else 'Add'} in {target}? [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            print("  skipped")
            return 0
    dropped = knownhosts.replace(target, name, key, hashed)
    print(f"  {'replaced' if dropped else 'added'} as {name}{' (hashed)' if hashed else ''} in {target}")
    complaint = _host_key_accepted(host, inv.ssh_config, timeout)
    if complaint:
        # say so instead of sending the user round again: ssh reads something we do not
        print(f"{host.name}: written, but ssh still refuses the host key: {complaint.splitlines()[-1]}",
              file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------- exec
def exec_command(args: dict) -> int:
    inv = load_inventory(args["--hosts"])
    hosts = _resolve(inv, args["--on"] if args["--on"] not in (None, "all") else None)
    timeout = float(args["--timeout"]) if args["--timeout"] else None
    connect = float(args["--connect-timeout"] or 10)
    results = asyncio.run(run_everywhere(inv, hosts, args["COMMAND"], timeout, connect))
    return print_grouped(results)


@dataclass(frozen=True)
class HostOutput:
    host: str
    exit_status: int | None       # as a shell reports it: 128+N for a signal, 255 when ssh failed; None: timed out
    stdout: str
    stderr: str = ""
    timed_out: bool = False


async def run_everywhere(inv: Inventory, hosts: Sequence[Host], command: str, timeout: float | None,
                         connect_timeout: float = 10) -> list[HostOutput]:
    """One command on every host at once, through the same transports flows use."""
    from .transport.local import LocalTransport
    from .transport.ssh import SshTransport

    with tempfile.TemporaryDirectory(prefix="cmflow-exec-") as tmp:
        async def one(i: int, host: Host) -> HostOutput:
            if host.slurm:
                return HostOutput(host.name, None, "", "exec does not reach Slurm hosts: run the command in a flow")
            t = LocalTransport(host) if host.local else SshTransport(host, inv.ssh_config, connect_timeout)
            out, err = Path(tmp) / f"{i}.out", Path(tmp) / f"{i}.err"
            try:
                o = await t.run(JobSpec(i, command, out, err, timeout))
            finally:
                await t.aclose()
            stdout = out.read_bytes().decode("utf-8", "replace") if out.exists() else ""
            stderr = err.read_bytes().decode("utf-8", "replace") if err.exists() else ""
            if o.connection_failed:
                # what clush shows for an ssh that failed: ssh's message on stderr, exit code 255
                return HostOutput(host.name, 255, stdout, stderr + o.message + "\n")
            if o.timed_out:
                return HostOutput(host.name, None, stdout, stderr, timed_out=True)
            status = o.exit_status if o.exit_status is not None else 128 + o.signal
            return HostOutput(host.name, status, stdout, stderr)

        return list(await asyncio.gather(*(one(i, h) for i, h in enumerate(hosts))))


_SEP = "-" * 15     # ClusterShell's header rule


def _lines(text: str) -> list[str]:
    """Output as ClusterShell's message tree keeps it: lines, the final newline not making an empty one,
    a CRLF ending a line as LF does (ClusterShell trims either)."""
    if not text:
        return []
    text = text.replace("\r\n", "\n")
    return (text[:-1] if text.endswith("\n") else text).split("\n")


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def group_outputs(results: Sequence[HostOutput]) -> list[tuple[str, int, list[str]]]:
    """Hosts with the same exit status and stdout merged, in ``clush -b``'s order: by exit status, then the
    largest group first, then by first host. Timed-out hosts and empty outputs show nothing here."""
    groups: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    for r in results:
        lines = _lines(r.stdout)
        if r.timed_out or not lines:
            continue
        groups.setdefault((r.exit_status or 0, tuple(lines)), []).append(r.host)
    ordered = sorted(groups.items(), key=lambda g: (g[0][0], -len(g[1]), _natural(min(g[1], key=_natural))))
    return [(fold_nodeset(names), len(names), list(lines)) for (_, lines), names in ordered]


def format_gathered(results: Sequence[HostOutput]) -> str:
    """stdout as ``clush -b`` prints it; an output of one line on its group's line, as ``clush -bL`` does."""
    out = []
    for names, count, lines in group_outputs(results):
        if len(lines) == 1:
            out.append(f"{names}: {lines[0]}\n")
        else:
            header = f"{names} ({count})" if count > 1 else names
            out.append(f"{_SEP}\n{header}\n{_SEP}\n" + "\n".join(lines) + "\n")
    return "".join(out)


def format_problems(results: Sequence[HostOutput]) -> str:
    """stderr as clush writes it: each host's lines, then exit codes and timeouts by folded node set."""
    out = [f"{r.host}: {line}\n" for r in results for line in _lines(r.stderr)]
    by_status: dict[int, list[str]] = {}
    for r in results:
        if not r.timed_out and r.exit_status:
            by_status.setdefault(r.exit_status, []).append(r.host)
    for status, names in sorted(by_status.items()):
        out.append(f"cmflow: {fold_nodeset(names)}: exited with exit code {status}\n")
    timed_out = [r.host for r in results if r.timed_out]
    if timed_out:
        out.append(f"cmflow: {fold_nodeset(timed_out)}: command timeout\n")
    return "".join(out)


def print_grouped(results: Sequence[HostOutput]) -> int:
    sys.stdout.write(format_gathered(results))
    sys.stdout.flush()
    sys.stderr.write(format_problems(results))
    return 0 if all(r.exit_status == 0 for r in results) else 1
