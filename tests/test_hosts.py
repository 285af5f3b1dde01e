"""Inventory: shape, defaults, ranges, groups, labels, lookup order, key-path errors."""
from __future__ import annotations

import os

import pytest

from cmflow.errors import ConfigError
from cmflow.hosts import (builtin_inventory, expand_nodeset, fold_nodeset, load_inventory, parse_inventory,
                          split_targets)

EXAMPLE = """
defaults: {user: alice, slots: 2}
hosts:
  here: {local: true, slots: 8}
  node[01-04]: {hostname: "{name}.lab.example.org", labels: [cpu]}
  gpu1: {hostname: 10.0.0.5, port: 2222, identity: ~/.ssh/id_ed25519, slots: 1, labels: [gpu],
         env: {CUDA: "1"}, workdir: /scratch, ssh_options: [Compression=yes]}
groups:
  fast: [gpu1, node01]
"""


def test_example_inventory():
    inv = parse_inventory(EXAMPLE, "hosts.yaml")
    names = [h.name for h in inv.hosts]
    assert names == ["here", "node01", "node02", "node03", "node04", "gpu1"]
    node2 = inv.host("node02")
    assert (node2.hostname, node2.user, node2.slots, node2.labels) == ("node02.lab.example.org", "alice", 2, ("cpu",))
    gpu = inv.host("gpu1")
    assert (gpu.port, gpu.slots, gpu.identity, gpu.env, gpu.workdir) == (
        2222, 1, os.path.expanduser("~/.ssh/id_ed25519"), (("CUDA", "1"),), "/scratch")
    assert inv.host("here").local and inv.host("here").slots == 8
    assert [h.name for h in inv.resolve("fast")] == ["gpu1", "node01"]
    assert [h.name for h in inv.resolve("cpu")] == ["node01", "node02", "node03", "node04"]
    assert [h.name for h in inv.resolve("node[02-03],gpu1")] == ["node02", "node03", "gpu1"]
    assert inv.is_target("all") and not inv.is_target("nope") and not inv.is_target("node[07-08]")


@pytest.mark.parametrize("pattern,names", [
    ("n[1-3]", ["n1", "n2", "n3"]),
    ("node[08-10]", ["node08", "node09", "node10"]),
    ("r[1-2]n[1,3]", ["r1n1", "r1n3", "r2n1", "r2n3"]),
    ("plain", ["plain"]),
])
def test_nodesets(pattern, names):
    assert expand_nodeset(pattern) == names
    folded = fold_nodeset(names)
    assert sorted(n for part in split_targets(folded) for n in expand_nodeset(part)) == sorted(names)


def test_fold():
    assert fold_nodeset(["h1", "h2", "h3", "h5", "web"]) == "h[1-3,5],web"
    assert fold_nodeset(["node01", "node02"]) == "node[01-02]"


@pytest.mark.parametrize("text,where,what", [
    ("hosts:\n  gpu1: {slots: 0}\n", "hosts.gpu1.slots", "expected a positive integer"),
    ("hosts:\n  gpu1: {slots: two}\n", "hosts.gpu1.slots", "got the string 'two'"),
    ("hosts:\n  gpu1: {port: 70000}\n", "hosts.gpu1.port", "expected a port number"),
    ("hosts:\n  gpu1: {slot: 2}\n", "hosts.gpu1.slot", "unknown key (did you mean 'slots'?)"),
    ("hosts:\n  gpu1: {labels: gpu}\n", "hosts.gpu1.labels", "expected a list of labels"),
    ("hosts:\n  gpu1: {local: yes please}\n", "hosts.gpu1.local", "expected true or false"),
    ("hosts:\n  n[3-1]: {}\n", "hosts.n[3-1]", "bad range"),
    ("hosts:\n  a: {}\ngroups:\n  g: [a, b]\n", "groups.g[1]", "unknown host 'b'"),
    ("hosts: [a, b]\n", "hosts", "expected a mapping from host name to settings, got a list"),
    ("defaults: {slots: 2}\n", "hosts", "missing"),
    ("hots: {}\n", "hots", "unknown key (did you mean 'hosts'?)"),
    ("hosts:\n  a: {ssh_options: [-oFoo]}\n", "hosts.a.ssh_options[0]", "expected 'Key=Value'"),
    ("hosts: {a: [}\n", "", "not valid YAML: line 1"),
])
def test_key_path_errors(text, where, what):
    with pytest.raises(ConfigError) as e:
        parse_inventory(text, "inv.yaml")
    msg = str(e.value)
    assert msg.startswith(f"inv.yaml: {where}: " if where else "inv.yaml: ") and what in msg, msg


def test_safe_load_only():
    with pytest.raises(ConfigError):
        parse_inventory("hosts: !!python/object/apply:os.system ['echo pwned']\n", "inv.yaml")


def test_lookup_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CMFLOW_HOSTS", raising=False)
    assert load_inventory().source == "<built-in>"
    assert builtin_inventory().hosts[0].slots == os.cpu_count()
    (tmp_path / "home" / ".cmflow").mkdir(parents=True)
    (tmp_path / "home" / ".cmflow" / "hosts.yaml").write_text("hosts: {homehost: {local: true}}\n")
    assert load_inventory().hosts[0].name == "homehost"
    (tmp_path / "env.yaml").write_text("hosts: {envhost: {local: true}}\n")
    monkeypatch.setenv("CMFLOW_HOSTS", str(tmp_path / "env.yaml"))
    assert load_inventory().hosts[0].name == "envhost"
    (tmp_path / "hosts.yaml").write_text("hosts: {cwdhost: {local: true}}\n")
    assert load_inventory().hosts[0].name == "cwdhost"
    (tmp_path / "x.yaml").write_text("hosts: {explicit: {local: true}}\n")
    assert load_inventory(str(tmp_path / "x.yaml")).hosts[0].name == "explicit"


def test_cli_bad_inventory(cli, tmp_path):
    (tmp_path / "hosts.yaml").write_text("hosts:\n  gpu1: {slots: -1}\n")
    r = cli("hosts", "list", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "hosts.yaml: hosts.gpu1.slots: expected a positive integer (jobs at once) up to 4096, got -1"
    assert "Traceback" not in r.stderr


def test_cli_hosts_list(cli, tmp_path):
    (tmp_path / "hosts.yaml").write_text(EXAMPLE)
    r = cli("hosts", "list", cwd=tmp_path)
    assert r.returncode == 0
    assert "node03" in r.stdout and "alice@node03.lab.example.org" in r.stdout
    assert "# 6 hosts, 17 slots" in r.stdout


def test_unknown_target_names_the_known_ones_briefly(cli, tmp_path):
    """A 5000-host inventory: the error folds the hosts as clush does and stays one short line."""
    (tmp_path / "hosts.yaml").write_text("hosts:\n  'n[0001-5000]': {}\ngroups: {rack1: ['n[0001-0040]']}\n")
    r = cli("hosts", "list", "nowhere", cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown host, group or label 'nowhere' (known: n[0001-5000], rack1, all)" in r.stderr
    assert len(r.stderr) < 300
