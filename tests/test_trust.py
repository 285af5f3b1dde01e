"""``cmflow hosts trust`` against real sshd hosts and the real OpenSSH client.

The key is filed where and as ssh looks it up (``ssh -G``: HostName, Port,
HostKeyAlias, UserKnownHostsFile, HashKnownHosts), fetched through the user's
ProxyJump when there is one (a host in a network namespace that only the bastion
can reach), refused when it changed unless ``--replace``, and left alone when it
is already on file. After trust, ssh itself connects with strict checking.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cmflow, world_dir
from sshhosts import SSHD, SshdHost, SshdHosts, have_sshd, sshd_config, stop_process


def _fingerprint(pub: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True).stdout.split()[1]


def _client_block(hosts: SshdHosts, known: Path) -> str:
    return f"""    User {hosts.user}
    IdentityFile {hosts.base / "keys" / "client"}
    IdentitiesOnly yes
    UserKnownHostsFile {known}
    GlobalKnownHostsFile /dev/null
    HashKnownHosts yes
    StrictHostKeyChecking yes
    LogLevel ERROR
"""


@pytest.fixture
def aliased(sshd_hosts, tmp_path):
    """h1 of the shared hosts seen through a config of the user's own: an alias, hashing, a known_hosts file."""
    known = tmp_path / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(f"Host web\n    HostName 127.0.0.1\n    Port {sshd_hosts.hosts[0].port}\n"
                      f"    HostKeyAlias web.example\n" + _client_block(sshd_hosts, known))
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(f"ssh_config: {config}\nhosts:\n  web: {{}}\n")
    return known, config, str(inventory), sshd_hosts.hosts[0].dir / "host_key.pub"


def _ssh_ok(config: Path, name: str, netns: str | None = None) -> subprocess.CompletedProcess:
    argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", name, "echo ok"]
    return subprocess.run((["ip", "netns", "exec", netns] if netns else []) + argv, capture_output=True,
                          text=True, timeout=60)


def test_trust_files_the_key_under_the_alias_hashed_and_ssh_then_connects(aliased, tmp_path):
    known, config, inventory, pub = aliased
    assert _ssh_ok(config, "web").returncode == 255       # unknown: strict checking refuses
    r = cmflow("hosts", "trust", "web", "--yes", "--hosts", inventory, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert _fingerprint(pub) in r.stdout and "as web.example (hashed)" in r.stdout
    text = known.read_text()
    assert text.startswith("|1|") and "web.example" not in text and "127.0.0.1" not in text
    found = subprocess.run(["ssh-keygen", "-F", "web.example", "-f", str(known)], capture_output=True, text=True)
    assert found.returncode == 0 and pub.read_text().split()[1] in found.stdout
    assert _ssh_ok(config, "web").stdout == "ok\n"
    check = cmflow("hosts", "check", "--hosts", inventory, cwd=tmp_path)
    assert check.returncode == 0 and "reachable" in check.stdout and "trust" not in check.stdout + check.stderr

    again = cmflow("hosts", "trust", "web", "--yes", "--hosts", inventory, cwd=tmp_path)
    assert again.returncode == 0 and "already trusted" in again.stdout
    assert known.read_text() == text                      # nothing written


def test_a_changed_key_is_refused_unless_replace(aliased, tmp_path):
    known, config, inventory, pub = aliased
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    kept = "other.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l1GG9Q\n"
    known.write_text(kept + "web.example " + " ".join((tmp_path / "impostor.pub").read_text().split()[:2]) + "\n")
    before = known.read_text()
    check = cmflow("hosts", "check", "--hosts", inventory, cwd=tmp_path)
    assert "CHANGED" in check.stdout and "--replace" in check.stdout

    r = cmflow("hosts", "trust", "web", "--yes", "--hosts", inventory, cwd=tmp_path)
    assert r.returncode == 1 and known.read_text() == before
    assert _fingerprint(tmp_path / "impostor.pub") in r.stdout and _fingerprint(pub) in r.stdout   # both shown
    assert "CHANGED" in r.stdout and "--replace" in r.stderr

    r = cmflow("hosts", "trust", "web", "--yes", "--replace", "--hosts", inventory, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    after = known.read_text()
    assert after.startswith(kept) and after.count("\n") == 2 and _fingerprint(tmp_path / "impostor.pub") not in after
    assert _ssh_ok(config, "web").stdout == "ok\n"


# ----------------------------------------------------------------- a bastion
def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Net:
    """Three namespaces made for one test: client -- bastion -- target, 198.18.0.0/15 (benchmarking) inside them.

    The bastion does not forward: the target is reachable from the client only through an ssh jump.
    """

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.client, self.bastion, self.target = (f"cmft-{tag}-{n}" for n in ("c", "b", "t"))
        self.made: list[str] = []
        for ns in (self.client, self.bastion, self.target):
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for (a, a_addr), (b, b_addr), link in (((self.client, "198.18.0.1/30"), (self.bastion, "198.18.0.2/30"), "cb"),
                                              ((self.bastion, "198.18.1.1/30"), (self.target, "198.18.1.2/30"), "bt")):
            end_a, end_b = f"ft{tag}{link}a", f"ft{tag}{link}b"
            _ip("-n", a, "link", "add", end_a, "type", "veth", "peer", "name", end_b, "netns", b)
            _ip("-n", a, "addr", "add", a_addr, "dev", end_a)
            _ip("-n", b, "addr", "add", b_addr, "dev", end_b)
            _ip("-n", a, "link", "set", end_a, "up")
            _ip("-n", b, "link", "set", end_b, "up")

    def remove(self) -> None:
        for ns in self.made:       # deleting a namespace deletes its veth ends
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _start_sshd(h: SshdHost, hosts: SshdHosts, netns: str, listen: str) -> None:
    h.dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(h.dir / "host_key")], check=True)
    (h.dir / "sshd_config").write_text(sshd_config(h, hosts.base / "keys", hosts.user, listen=listen))
    h.proc = subprocess.Popen(["ip", "netns", "exec", netns, SSHD, "-D", "-f", str(h.dir / "sshd_config"),
                               "-E", str(h.dir / "sshd.log")], stdin=subprocess.DEVNULL)


def _keyscan(netns: str, address: str, timeout: int = 2) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "ssh-keyscan", "-T", str(timeout), address],
                          capture_output=True, text=True).stdout


def _wait_listening(h: SshdHost, netns: str, address: str) -> None:
    """sshd has no readiness signal: poll until it answers a key scan from its neighbour."""
    deadline = time.monotonic() + 30
    while not _keyscan(netns, address):
        if h.proc and h.proc.poll() is not None:
            raise RuntimeError(f"sshd {h.name} exited: {(h.dir / 'sshd.log').read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"sshd {h.name} not answering on {address}")
        time.sleep(0.1)


@pytest.fixture
def bastion_net():
    if not have_sshd() or shutil.which("ip") is None:
        pytest.skip("needs openssh-server and iproute2 (.ci/run installs them)")
    base = world_dir("cmflow-bastion-")
    hosts = SshdHosts(base, n=0).start()          # the test user and client key; the sshds are ours
    net = None
    daemons = [SshdHost("bastion", 22, base / "bastion"), SshdHost("target", 22, base / "target")]
    try:
        try:
            net = Net()
        except subprocess.CalledProcessError as e:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"cannot make network namespaces here: {e.stderr}")
        _start_sshd(daemons[0], hosts, net.bastion, "198.18.0.2")
        _start_sshd(daemons[1], hosts, net.target, "198.18.1.2")
        _wait_listening(daemons[0], net.client, "198.18.0.2")
        _wait_listening(daemons[1], net.bastion, "198.18.1.2")
        yield net, hosts, daemons
    finally:
        for d in daemons:
            stop_process(d.proc)
        hosts.stop()
        if net:
            net.remove()
        shutil.rmtree(base, ignore_errors=True)


def _bastion_config(base: Path, hosts: SshdHosts, known: Path) -> tuple[Path, str]:
    config = base / "client_config"
    config.write_text("Host bastion\n    HostName 198.18.0.2\n"
                      "Host inner\n    HostName 198.18.1.2\n    ProxyJump bastion\n    HostKeyAlias inner.lab\n"
                      "Host *\n" + _client_block(hosts, known))
    inventory = base / "hosts.yaml"
    inventory.write_text(f"ssh_config: {config}\nhosts:\n  inner: {{}}\n  bastion: {{}}\n")
    return config, str(inventory)


def _in_client(net: Net, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """cmflow run inside the client's namespace, where only the bastion is reachable."""
    return subprocess.run(["ip", "netns", "exec", net.client, sys.executable, "-m", "cmflow", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_trust_behind_a_bastion_fetches_through_the_jump(bastion_net):
    """Two sshd daemons in their own network namespaces (about 5 s): the target only behind the bastion."""
    net, hosts, (bastion, target) = bastion_net
    base = hosts.base
    known = base / "client_known_hosts"
    # the user trusts the bastion already; the target is new to them
    known.write_text("198.18.0.2 " + " ".join((bastion.dir / "host_key.pub").read_text().split()[:2]) + "\n")
    config, inventory = _bastion_config(base, hosts, known)
    assert _keyscan(net.client, "198.18.1.2") == ""        # not reachable from the client's network
    assert _ssh_ok(config, "inner", net.client).returncode == 255

    r = _in_client(net, "hosts", "trust", "inner", "--yes", "--hosts", inventory, cwd=base)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "via proxyjump bastion" in r.stdout and _fingerprint(target.dir / "host_key.pub") in r.stdout
    found = subprocess.run(["ssh-keygen", "-F", "inner.lab", "-f", str(known)], capture_output=True, text=True)
    assert found.returncode == 0 and (target.dir / "host_key.pub").read_text().split()[1] in found.stdout
    assert _ssh_ok(config, "inner", net.client).stdout == "ok\n"

    text = known.read_text()
    again = _in_client(net, "hosts", "trust", "inner", "--yes", "--hosts", inventory, cwd=base)
    assert again.returncode == 0 and "already trusted" in again.stdout and known.read_text() == text


@pytest.mark.slow
def test_an_untrusted_bastion_is_named_not_looped_on(bastion_net):
    """Same namespaces (about 5 s): with the bastion's own key unknown, trust says to trust the jump."""
    net, hosts, _ = bastion_net
    base = hosts.base
    known = base / "empty_known_hosts"
    known.write_text("")
    _, inventory = _bastion_config(base, hosts, known)
    r = _in_client(net, "hosts", "trust", "inner", "--yes", "--hosts", inventory, cwd=base)
    assert r.returncode == 1 and "jump (proxyjump bastion)" in r.stderr
    assert "cmflow hosts trust inner" not in r.stderr and known.read_text() == ""
    # trusting the bastion first, then the target, works
    assert _in_client(net, "hosts", "trust", "bastion", "--yes", "--hosts", inventory, cwd=base).returncode == 0
    r = _in_client(net, "hosts", "trust", "inner", "--yes", "--hosts", inventory, cwd=base)
    assert r.returncode == 0, r.stderr
