"""`cmflow vm`: real Vagrant with its docker provider, behind a private dockerd in a network namespace.

tests/vm/dockerns.sh makes the namespace, starts dockerd in it and loads a Debian image with sshd (built
once with debootstrap from the apt mirror, cached in /var/cache/cmflow-test-vm). Every cmflow command
that talks to the nodes runs inside that namespace (`ip netns exec`), as a user on a machine with
Vagrant would run it on their own network. Nothing here is a fake; without root, Vagrant, Docker or
debootstrap the module is skipped with the reason (.ci/run installs them).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from cmflow.hosts import parse_inventory
from cmflow.vm.cluster import cluster_id
from cmflow.vm.spec import ClusterSpec, check_spec
from cmflow.vm.vagrant import parse_ssh_config
from cmflow.vm.vagrantfile import render, ruby_str
from cmflow.errors import ConfigError, UsageError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "vm" / "dockerns.sh"
SEED = ROOT / "flows" / "seed.flow"


def cmflow(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "cmflow", *args], capture_output=True, text=True, env=full,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ------------------------------------------------------------ without Vagrant
def test_vagrantfile_quotes_values_as_ruby_literals(tmp_path):
    assert ruby_str("a'b\\c") == "'a\\'b\\\\c'"
    spec = check_spec(ClusterSpec("node", "docker", 3, image="img:1", cpus=2, memory=512))
    text = render(spec, tmp_path, tmp_path / "ssh" / "id_ed25519", "abcd1234")
    assert "(1..3).each" in text and "d.image = 'img:1'" in text
    assert "'--cpus=2'" in text and "'--memory=512m'" in text
    assert f"'{tmp_path}/ssh/id_ed25519.pub:/home/vagrant/.ssh/authorized_keys:ro'" in text
    box = render(check_spec(ClusterSpec("n", "virtualbox", 2, box="debian/bookworm64", cpus=4)), tmp_path,
                 tmp_path / "k", "x")
    assert "config.vm.box = 'debian/bookworm64'" in box and "p.cpus = 4" in box and "insert_key" not in box


@pytest.mark.parametrize("spec, message", [
    (ClusterSpec("Bad;name", "docker", 1, image="i"), "--name"),
    (ClusterSpec("n", "docker", 1), "needs --image"),
    (ClusterSpec("n", "docker", 1, image="i", box="b"), "use --image"),
    (ClusterSpec("n", "virtualbox", 1), "needs --box"),
    (ClusterSpec("n", "virtualbox", 1, box="x'; system('id')"), "not a box name"),
    (ClusterSpec("n", "hyperv", 1, box="b"), "--provider"),
    (ClusterSpec("n", "docker", 0, image="i"), "between 1"),
    (ClusterSpec("n", "docker", 1, image="i", memory=1), "--memory"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(UsageError, match=message):
        check_spec(spec)


def test_parse_vagrant_ssh_config():
    text = ('Host vm1\n  HostName 198.18.0.2\n  User vagrant\n  Port 22\n  UserKnownHostsFile /dev/null\n'
            '  StrictHostKeyChecking no\n  IdentityFile "/a b/key"\n\nHost vm2\n  HostName 198.18.0.3\n')
    cfg = parse_ssh_config(text)
    assert cfg["vm1"]["hostname"] == "198.18.0.2" and cfg["vm1"]["identityfile"] == "/a b/key"
    assert cfg["vm2"] == {"hostname": "198.18.0.3"}


def test_commands_on_a_folder_without_vms_say_so(tmp_path):
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (.ci/run installs it)")
    for cmd in (["status"], ["ssh-config"], ["halt"], ["destroy", "--yes"]):
        r = cmflow("vm", *cmd, "--dir", str(tmp_path / "none"))
        assert r.returncode == 2, r.stderr
        assert f"no VMs in {tmp_path / 'none'}" in r.stderr and "Traceback" not in r.stderr


def test_missing_vagrant_is_a_clear_error_with_the_install_hint(tmp_path):
    r = cmflow("vm", "up", "2", "--provider", "docker", "--image", "x", "--dir", str(tmp_path / "c"),
               env={"PATH": str(tmp_path)})
    assert r.returncode == 2
    assert "vagrant is not installed" in r.stderr and "apt install vagrant" in r.stderr
    assert not (tmp_path / "c").exists()


def test_an_inventory_includes_another_and_its_hosts_keep_their_ssh_config(tmp_path):
    (tmp_path / "vms").mkdir()
    (tmp_path / "vms" / "hosts.yaml").write_text(
        "ssh_config: ssh_config\nhosts:\n  vm1: {slots: 2}\n  vm2: {}\ngroups:\n  vms: [vm1, vm2]\n")
    outer = tmp_path / "hosts.yaml"
    outer.write_text("include: vms/hosts.yaml\nhosts:\n  here: {local: true}\ngroups:\n  all2: [here, vm1]\n")
    inv = parse_inventory(outer.read_text(), str(outer))
    assert [h.name for h in inv.resolve("vms")] == ["vm1", "vm2"]
    assert inv.host("vm1").ssh_config == str(tmp_path / "vms" / "ssh_config")
    assert inv.host("here").ssh_config is None and inv.host("vm1").slots == 2
    assert [h.name for h in inv.resolve("all2")] == ["here", "vm1"]
    outer.write_text("include: [vms/hosts.yaml]\nhosts:\n  vm1: {}\n")
    with pytest.raises(ConfigError, match=r"include\[0\]: host 'vm1' is defined both here and in"):
        parse_inventory(outer.read_text(), str(outer))
    outer.write_text("include: hosts.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        parse_inventory(outer.read_text(), str(outer))
    outer.write_text("include: [nope.yaml]\n")
    with pytest.raises(ConfigError, match=r"include\[0\]: no such inventory file"):
        parse_inventory(outer.read_text(), str(outer))


# ------------------------------------------------------------ with real Vagrant
def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespace, dockerd)"
    for tool, pkg in (("vagrant", "vagrant"), ("/usr/sbin/dockerd", "docker.io"), ("debootstrap", "debootstrap"),
                      ("ip", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"{pkg} is not installed (.ci/run installs it)"
    return None


@dataclass
class DockerNs:
    work: Path
    netns: str
    image: str
    env: dict[str, str]

    def cmflow(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """cmflow inside the namespace: where the nodes' addresses are reachable."""
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        return subprocess.run(["ip", "netns", "exec", self.netns, sys.executable, "-m", "cmflow", *args],
                              capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)

    def docker(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, env={**os.environ, **self.env},
                              timeout=300)


@pytest.fixture(scope="module")
def dockerns():
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    work = Path(tempfile.mkdtemp(prefix="cmflow-vm-", dir="/tmp"))
    envdir = work / "env"
    r = subprocess.run(["bash", str(SCRIPT), "up", str(envdir)], capture_output=True, text=True, timeout=2400)
    assert r.returncode == 0, r.stderr[-3000:]
    vals = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    env = {"DOCKER_HOST": vals["DOCKER_HOST"], "DOCKER_BUILDKIT": "0",
           "PATH": f"{vals['DOCKER_PATH']}:{os.environ['PATH']}"}
    try:
        yield DockerNs(work, vals["NETNS"], vals["IMAGE"], env)
    finally:
        subprocess.run(["bash", str(SCRIPT), "down", str(envdir)], capture_output=True, timeout=600)
        leaks = subprocess.run(["bash", str(SCRIPT), "leaks", str(envdir)], capture_output=True, text=True).stdout
        shutil.rmtree(work, ignore_errors=True)
        assert leaks.strip() == "", f"left behind: {leaks}"


@pytest.mark.slow
def test_three_vms_run_the_seed_flow_with_pinned_keys_grow_to_four_and_go(dockerns, tmp_path):
    """Vagrant docker provider, 3 then 4 nodes: about 90 s (up ~30 s, grow ~30 s, destroy ~20 s)."""
    d = dockerns.work / "cluster"
    r = dockerns.cmflow("vm", "up", "3", "--provider", "docker", "--image", dockerns.image, "--dir", str(d))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "vm: " in r.stderr and "3 of 3 node(s) up" in r.stderr          # Vagrant's progress, streamed
    inventory = d / "hosts.yaml"
    inv = parse_inventory(inventory.read_text(), str(inventory))
    assert [h.name for h in inv.resolve("vms")] == ["vm1", "vm2", "vm3"] == [h.name for h in inv.resolve("vm")]
    assert all(h.slots == os.cpu_count() for h in inv.hosts)            # slots = the node's CPUs

    # the seed flow on the three nodes gives the value it gives here
    local = cmflow("run", str(SEED), "-q", "--run-dir", str(tmp_path / "local"))
    remote = dockerns.cmflow("run", str(SEED), "-q", "--hosts", str(inventory), "--run-dir", str(tmp_path / "vms"))
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and local.stdout.strip().isdigit()
    hosts_used = (tmp_path / "vms" / "joblog").read_text()
    assert any(f"vm{i}" in hosts_used for i in (1, 2, 3))

    # host keys: pinned from the container itself, and checked strictly
    config = (d / "ssh_config").read_text()
    assert "StrictHostKeyChecking yes" in config and "StrictHostKeyChecking no" not in config
    assert "/dev/null" not in config.replace("GlobalKnownHostsFile /dev/null", "")
    known = (d / "known_hosts").read_text()
    for i in (1, 2, 3):
        cid = (d / ".vagrant" / "machines" / f"vm{i}" / "docker" / "id").read_text().strip()
        real = dockerns.docker("exec", cid, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
        assert f"vm{i} {' '.join(real)}" in known
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake = " ".join((tmp_path / "other.pub").read_text().split()[:2])
    (d / "known_hosts").write_text("\n".join(f"vm1 {fake}" if ln.startswith("vm1 ssh-ed25519") else ln
                                             for ln in known.splitlines()) + "\n")
    r = dockerns.cmflow("exec", "true", "--on", "vm1", "--hosts", str(inventory))
    assert r.returncode != 0 and "host key" in (r.stdout + r.stderr).lower()
    (d / "known_hosts").write_text(known)

    # another inventory includes the generated one
    outer = tmp_path / "hosts.yaml"
    outer.write_text(f"include: {inventory}\nhosts:\n  here: {{local: true}}\n")
    r = dockerns.cmflow("exec", "uname -n", "--on", "vms,here", "--hosts", str(outer))
    assert r.returncode == 0, r.stderr
    for i in (1, 2, 3):
        assert f"vm{i}" in r.stdout

    # a name clash with a container this folder did not make, and an image that does not exist
    d2 = dockerns.work / "clash"
    dockerns.docker("create", "--name", f"cmflow-{cluster_id(d2)}-vm1", dockerns.image)
    r = dockerns.cmflow("vm", "up", "1", "--provider", "docker", "--image", dockerns.image, "--dir", str(d2))
    assert r.returncode == 2 and "already in use" in r.stderr, r.stderr
    r = dockerns.cmflow("vm", "up", "1", "--provider", "docker", "--image", "no-such-image:0", "--dir", str(d2))
    assert r.returncode == 2 and "image 'no-such-image:0' not found" in r.stderr
    dockerns.docker("rm", "-f", f"cmflow-{cluster_id(d2)}-vm1")

    # grow to four
    r = dockerns.cmflow("vm", "up", "4", "--provider", "docker", "--image", dockerns.image, "--dir", str(d))
    assert r.returncode == 0, r.stderr[-3000:]
    r = dockerns.cmflow("exec", "uname -n", "--on", "vms", "--hosts", str(inventory))
    assert r.returncode == 0 and all(f"vm{i}: vm{i}" in r.stdout for i in (1, 2, 3, 4)), r.stdout + r.stderr
    status = dockerns.cmflow("vm", "status", "--dir", str(d))
    assert status.returncode == 0 and status.stdout.count("running") == 4
    assert "Host vm4" in dockerns.cmflow("vm", "ssh-config", "--dir", str(d)).stdout
    r = dockerns.cmflow("vm", "up", "2", "--provider", "docker", "--image", dockerns.image, "--dir", str(d))
    assert r.returncode == 2 and "never removes" in r.stderr

    # destroy asks (no terminal here: refuses), then goes with --yes and leaves nothing
    r = dockerns.cmflow("vm", "destroy", "--dir", str(d))
    assert r.returncode == 2 and "--yes" in r.stderr
    assert dockerns.docker("ps", "-aq").stdout.strip() != ""
    r = dockerns.cmflow("vm", "destroy", "--yes", "--dir", str(d))
    assert r.returncode == 0, r.stderr
    assert dockerns.docker("ps", "-aq").stdout.strip() == ""
    assert not d.exists()
