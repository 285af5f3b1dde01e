"""A cluster of Vagrant machines in one folder: up, status, ssh-config, halt, destroy.

What `up` leaves in DIR (default ./.cmflow/vm/<name>):

    Vagrantfile        generated from the spec (vagrantfile.py)
    cmflow-vm.json     the spec, so later commands need no options
    ssh/id_ed25519     this cluster's own key (docker: mounted read-only as authorized_keys)
    known_hosts        each node's host keys, read through the provider (docker exec) or Vagrant's own
                       channel (`vagrant ssh -c`) when the node is created: never from the network
    ssh_config         Vagrant's ssh settings with strict host-key checking ON against that known_hosts
                       (Vagrant's own output turns checking off)
    hosts.yaml         an inventory: the nodes (slots = their CPUs), groups `vms` and <name>
    vagrant.log        everything Vagrant printed
"""
from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .spec import STATE_FILE, ClusterSpec, check_spec, load_state, save_state, write_atomic
from .vagrant import Vagrant, VmError, VmSetupError, tail
from .vagrantfile import render

GENERATED = ("Vagrantfile", STATE_FILE, "ssh", "known_hosts", "ssh_config", "hosts.yaml", ".vagrant", "vagrant.log")
Printer = Callable[[str], None]


def default_dir(name: str) -> Path:
    return Path(".cmflow") / "vm" / name


def cluster_id(directory: Path) -> str:
    """Names of provider objects (containers) carry this, so two clusters never clash."""
    return hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class NodeState:
    name: str
    state: str
    address: str = ""
    slots: int | None = None


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class Cluster:
    def __init__(self, directory: Path, say: Printer = _err):
        self.dir = directory
        self.say = say

    # ----------------------------------------------------------------- paths
    @property
    def key(self) -> Path:
        return self.dir.resolve() / "ssh" / "id_ed25519"

    @property
    def inventory(self) -> Path:
        return self.dir / "hosts.yaml"

    @property
    def ssh_config_file(self) -> Path:
        return self.dir / "ssh_config"

    def spec(self) -> ClusterSpec:
        spec = load_state(self.dir)
        if spec is None:
            raise VmSetupError(f"no VMs in {self.dir} (nothing was created there by `cmflow vm up`)")
        return spec

    # -------------------------------------------------------------------- up
    def up(self, wanted: ClusterSpec) -> int:
        wanted = check_spec(wanted)
        old = load_state(self.dir)
        if old is not None:
            if (old.name, old.provider) != (wanted.name, wanted.provider):
                raise VmSetupError(f"{self.dir} holds cluster '{old.name}' ({old.provider}); destroy it first "
                                   f"or use another --dir")
            if wanted.nodes < old.nodes:
                raise VmSetupError(f"{self.dir} has {old.nodes} nodes; `vm up` adds nodes but never removes "
                                   f"them (destroy and start again to shrink)")
        vagrant = Vagrant(self.dir)
        cid = cluster_id(self.dir)
        if wanted.provider == "docker":
            self._check_docker(wanted, cid)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ensure_key()
        write_atomic(self.dir / "Vagrantfile", render(wanted, self.dir, self.key, cid))
        save_state(self.dir, wanted)     # before `vagrant up`: destroy must know of half-made nodes
        args = ["up", "--provider", wanted.provider]
        if wanted.provider in ("docker", "libvirt"):
            args.append("--parallel")    # VirtualBox cannot start machines in parallel
        self.say(f"vm: starting {wanted.nodes} node(s) with {wanted.provider} in {self.dir} ...")
        rc = vagrant.stream(args, lambda line: self.say(f"vm: {line}"), self.dir / "vagrant.log")
        states = vagrant.status()
        names = wanted.node_names()
        running = [n for n in names if states.get(n) == "running"]
        failed = {n: states.get(n, "missing") for n in names if n not in running}
        nodes = self._connect(vagrant, wanted, running, failed)
        log = (self.dir / "vagrant.log").read_text(errors="replace")
        for n, why in failed.items():
            mine = [ln for ln in log.splitlines() if n in ln]
            self.say(f"vm: {n} did not come up ({why}):\n" + "\n".join(f"    | {ln}" for ln in
                                                                       (mine or log.splitlines())[-8:]))
        if not nodes:
            raise VmError(f"no node came up (vagrant exited {rc}); its log: {self.dir / 'vagrant.log'}")
        self.say(f"vm: {len(nodes)} of {len(names)} node(s) up; inventory {self.inventory}\n"
                 f"    cmflow exec 'uname -a' --on vms --hosts {self.inventory}")
        return 0 if not failed else 1

    def _ensure_key(self) -> None:
        self.key.parent.mkdir(mode=0o700, exist_ok=True)
        if not self.key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"cmflow-vm-{self.dir.name}",
                            "-f", str(self.key)], check=True, stdin=subprocess.DEVNULL)

    def _check_docker(self, spec: ClusterSpec, cid: str) -> None:
        docker = shutil.which("docker")
        if docker is None:
            raise VmSetupError("the docker provider needs the docker command line: install Docker "
                               "(Debian/Ubuntu: `apt install docker.io`)")
        r = subprocess.run([docker, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        if r.returncode != 0:
            raise VmSetupError("the docker provider cannot reach a Docker daemon (is dockerd running? is "
                               "DOCKER_HOST right?): " + tail(r.stderr, 2))
        assert spec.image is not None
        r = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}}", "--", spec.image],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        if r.returncode != 0:
            raise VmSetupError(f"image '{spec.image}' not found in the Docker daemon (build or load it first; "
                               f"it needs sshd and a 'vagrant' user)")
        ours = {f"cmflow-{cid}-{n}" for n in spec.node_names()}
        known = {p.parent.parent.name for p in (self.dir / ".vagrant" / "machines").glob("*/docker/id")}
        r = subprocess.run([docker, "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        clash = sorted(n for n in r.stdout.split() if n in ours and n.split("-", 2)[2] not in known)
        if clash:
            raise VmSetupError(f"container name(s) {', '.join(clash)} already in use by something this folder "
                               f"did not create (a deleted {self.dir}?): remove them with `docker rm -f`")

    # ---------------------------------------------------- keys, config, inventory
    def _host_keys(self, vagrant: Vagrant, spec: ClusterSpec, node: str) -> list[str]:
        """The node's public host keys, read through a channel that is not the network ssh will use."""
        idfile = self.dir / ".vagrant" / "machines" / node / "docker" / "id"
        if spec.provider == "docker" and idfile.exists():
            argv = ["docker", "exec", idfile.read_text().strip(), "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub"]
            r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
            out, err, rc = r.stdout, r.stderr, r.returncode
        else:
            r = vagrant.run("ssh", node, "-c", "cat /etc/ssh/ssh_host_*_key.pub", timeout=120)
            out, err, rc = r.stdout, r.stderr, r.returncode
        keys = [" ".join(line.split()[:2]) for line in out.splitlines() if line.startswith(("ssh-", "ecdsa-"))]
        if rc != 0 or not keys:
            raise VmError(f"{node}: cannot read its host keys: {tail(err or out, 3)}")
        return keys

    def _connect(self, vagrant: Vagrant, spec: ClusterSpec, running: list[str], failed: dict[str, str]
                 ) -> list[NodeState]:
        if not running:
            return []
        settings = vagrant.ssh_config(running)
        known, blocks = [], []
        for node in running:
            try:
                keys = self._host_keys(vagrant, spec, node)
            except VmError as e:
                failed[node] = str(e)
                continue
            known += [f"{node} {k}" for k in keys]
            blocks.append(self._ssh_block(node, settings.get(node, {})))
        write_atomic(self.dir / "known_hosts", "".join(line + "\n" for line in known))
        write_atomic(self.ssh_config_file, "# Generated by `cmflow vm up`: Vagrant's settings, host keys pinned.\n"
                     + "\n".join(blocks))
        up = [n for n in running if n not in failed]
        slots = self._slots(spec, up, failed)
        nodes = [NodeState(n, "running", settings.get(n, {}).get("hostname", ""), slots[n]) for n in up if n in slots]
        self._write_inventory(spec, nodes)
        return nodes

    def _ssh_block(self, node: str, s: dict[str, str]) -> str:
        def q(path: str) -> str:
            return f'"{path}"' if " " in path else path
        lines = [f"Host {node}", f"    HostName {s.get('hostname', node)}", f"    Port {s.get('port', '22')}",
                 f"    User {s.get('user', 'vagrant')}"]
        if "identityfile" in s:
            lines.append(f"    IdentityFile {q(s['identityfile'])}")
        if "proxycommand" in s:
            lines.append(f"    ProxyCommand {s['proxycommand']}")
        lines += ["    IdentitiesOnly yes",
                  f"    UserKnownHostsFile {q(str((self.dir / 'known_hosts').resolve()))}",
                  "    GlobalKnownHostsFile /dev/null",
                  f"    HostKeyAlias {node}",           # the pinned entry is keyed by node name, not address:port
                  "    StrictHostKeyChecking yes",
                  "    CheckHostIP no", "    BatchMode yes", "    ConnectTimeout 10", "    LogLevel ERROR", ""]
        return "\n".join(lines)

    def _slots(self, spec: ClusterSpec, nodes: list[str], failed: dict[str, str]) -> dict[str, int]:
        """Slots = the node's CPUs: `--cpus` when given, else `nproc` asked over the pinned, strict ssh
        (which also proves every node is reachable as the inventory will reach it)."""
        procs = {n: subprocess.Popen(["ssh", "-F", str(self.ssh_config_file.resolve()), "--", n, "nproc"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL) for n in nodes}
        slots = {}
        for n, p in procs.items():
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate()
            if p.returncode == 0 and out.strip().isdigit():
                slots[n] = spec.cpus or int(out.strip())
            else:
                failed[n] = f"ssh with its pinned host key failed: {tail(err, 2)}"
        return slots

    def _write_inventory(self, spec: ClusterSpec, nodes: list[NodeState]) -> None:
        names = [n.name for n in nodes]
        lines = ["# Generated by `cmflow vm up`: use with --hosts, or `include:` it from another inventory.",
                 "ssh_config: ssh_config", "hosts:"]
        lines += [f"  {n.name}: {{slots: {n.slots}}}" for n in nodes]
        lines += ["groups:", f"  vms: [{', '.join(names)}]", f"  {spec.name}: [{', '.join(names)}]", ""]
        write_atomic(self.inventory, "\n".join(lines))

    # ----------------------------------------------------- status, halt, destroy
    def status(self) -> list[NodeState]:
        spec = self.spec()
        states = Vagrant(self.dir).status()
        inv = {}
        if self.inventory.exists():
            import yaml
            doc = yaml.safe_load(self.inventory.read_text()) or {}
            inv = {k: v.get("slots") for k, v in (doc.get("hosts") or {}).items() if isinstance(v, dict)}
        addresses = {}
        if self.ssh_config_file.exists():
            from .vagrant import parse_ssh_config
            addresses = {k: v.get("hostname", "") for k, v in parse_ssh_config(self.ssh_config_file.read_text()).items()}
        return [NodeState(n, states.get(n, "missing"), addresses.get(n, ""), inv.get(n)) for n in spec.node_names()]

    def ssh_config_text(self) -> str:
        self.spec()
        if not self.ssh_config_file.exists():
            raise VmSetupError(f"no node of {self.dir} is up yet (run `cmflow vm up`)")
        return self.ssh_config_file.read_text()

    def halt(self) -> int:
        spec = self.spec()
        rc = Vagrant(self.dir).stream(["halt"], lambda line: self.say(f"vm: {line}"), self.dir / "vagrant.log")
        self.say(f"vm: {spec.nodes} node(s) halted; `cmflow vm up {spec.nodes} --dir {shlex.quote(str(self.dir))}` "
                 f"starts them again")
        return 0 if rc == 0 else 1

    def destroy(self) -> int:
        spec = self.spec()
        vagrant = Vagrant(self.dir)
        rc = vagrant.stream(["destroy", "-f"], lambda line: self.say(f"vm: {line}"), self.dir / "vagrant.log")
        left = [n for n, s in vagrant.status().items() if s != "not_created"]
        if rc != 0 or left:
            raise VmError(f"vagrant destroy left {', '.join(left) or 'an error'}; see {self.dir / 'vagrant.log'}")
        for name in GENERATED:
            p = self.dir / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
        try:
            self.dir.rmdir()          # only if nothing of the user's is left in it
        except OSError:
            pass
        self.say(f"vm: destroyed {spec.nodes} node(s) of '{spec.name}'")
        return 0
