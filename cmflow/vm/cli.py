"""``cmflow vm up|status|ssh-config|halt|destroy``: options to a Cluster, and printing."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UsageError
from .cluster import Cluster, default_dir
from .spec import ClusterSpec


def _int(args: dict, key: str) -> int | None:
    v = args.get(key)
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        raise UsageError(f"{key} expects a whole number, got {v!r}") from None


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError("refusing to destroy without --yes: there is no terminal to ask")
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def dispatch(args: dict) -> int:
    name = args["--name"] or "vm"
    directory = Path(args["--dir"]) if args["--dir"] else default_dir(name)
    cluster = Cluster(directory)
    if args["up"]:
        n = _int(args, "N")
        provider = args["--provider"] or os.environ.get("VAGRANT_DEFAULT_PROVIDER") or "virtualbox"
        spec = ClusterSpec(name, provider, n or 0, box=args["--box"], image=args["--image"],
                           cpus=_int(args, "--cpus"), memory=_int(args, "--memory"))
        return cluster.up(spec)
    if args["status"]:
        nodes = cluster.status()
        width = max(len(n.name) for n in nodes)
        for n in nodes:
            slots = f"{n.slots} slots" if n.slots else ""
            print(f"{n.name:<{width}}  {n.state:<12} {n.address:<16} {slots}".rstrip())
        return 0
    if args["ssh-config"]:
        sys.stdout.write(cluster.ssh_config_text())
        return 0
    if args["halt"]:
        return cluster.halt()
    if args["destroy"]:
        spec = cluster.spec()
        if not args["--yes"] and not _confirm(f"destroy the {spec.nodes} node(s) of '{spec.name}' in {directory}?"):
            sys.stderr.write("nothing destroyed\n")
            return 1
        return cluster.destroy()
    raise UsageError("unknown vm command")
