"""A cluster of VMs: its settings, and the state file that keeps them between commands."""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..errors import UsageError

PROVIDERS = ("docker", "virtualbox", "libvirt")
STATE_FILE = "cmflow-vm.json"
MAX_NODES = 256            # a Vagrant environment is one Ruby process; beyond this it is the wrong tool
_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")   # a box name or image reference


@dataclass(frozen=True)
class ClusterSpec:
    name: str                 # node prefix: nodes are name1..nameN; also the group of the same name
    provider: str
    nodes: int
    box: str | None = None    # virtualbox/libvirt
    image: str | None = None  # docker
    cpus: int | None = None
    memory: int | None = None  # MB

    def node_names(self) -> list[str]:
        return [f"{self.name}{i}" for i in range(1, self.nodes + 1)]

    def with_nodes(self, n: int) -> "ClusterSpec":
        return replace(self, nodes=n)


def check_spec(spec: ClusterSpec) -> ClusterSpec:
    """Every value here ends up in a Vagrantfile or a host name: refuse anything that is not plainly one."""
    if not _NAME.fullmatch(spec.name):
        raise UsageError(f"--name must be a lowercase host-name prefix (letters, digits, '-'; at most 31), "
                         f"not {spec.name[:40]!r}")
    if spec.provider not in PROVIDERS:
        raise UsageError(f"--provider must be one of {', '.join(PROVIDERS)}, not {spec.provider[:40]!r}")
    if not 1 <= spec.nodes <= MAX_NODES:
        raise UsageError(f"N must be between 1 and {MAX_NODES}, not {spec.nodes}")
    if spec.provider == "docker":
        if spec.box:
            raise UsageError("the docker provider runs an image: use --image=IMAGE, not --box")
        if not spec.image:
            raise UsageError("the docker provider needs --image=IMAGE (an image with sshd and a 'vagrant' user)")
    elif spec.image:
        raise UsageError(f"the {spec.provider} provider boots a box: use --box=BOX, not --image")
    elif not spec.box:
        raise UsageError(f"the {spec.provider} provider needs --box=BOX (e.g. debian/bookworm64)")
    for what, ref in (("--box", spec.box), ("--image", spec.image)):
        if ref is not None and not _REF.fullmatch(ref):
            raise UsageError(f"{what}: not a box name or image reference: {ref[:60]!r}")
    if spec.cpus is not None and not 1 <= spec.cpus <= 1024:
        raise UsageError(f"--cpus must be between 1 and 1024, not {spec.cpus}")
    if spec.memory is not None and not 64 <= spec.memory <= 4 << 20:
        raise UsageError(f"--memory is in MB and must be between 64 and {4 << 20}, not {spec.memory}")
    return spec


def load_state(directory: Path) -> ClusterSpec | None:
    try:
        doc = json.loads((directory / STATE_FILE).read_text())
        return check_spec(ClusterSpec(**doc))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, UsageError) as e:
        raise UsageError(f"{directory / STATE_FILE}: not a cmflow vm state file ({e})") from None


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Temp file + rename: a reader sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_state(directory: Path, spec: ClusterSpec) -> None:
    write_atomic(directory / STATE_FILE, json.dumps(asdict(spec), indent=1) + "\n")
