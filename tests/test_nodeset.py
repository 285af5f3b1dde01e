"""Node sets are ClusterShell's: expansion, folding and operators checked against the library and its tools.

Issue 9 item 2. ``nodeset`` (ClusterShell's command line) and ``NodeSet`` are
the oracles; cmflow's own rules on top are the bound on a set's size and that
``@group`` is not used (groups are the inventory's).
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException
from hypothesis import given, settings
from hypothesis import strategies as st

from cmflow.errors import ConfigError
from cmflow.hosts import MAX_NODES, expand_nodeset, fold_nodeset, parse_inventory

CASES = ["n[1-10/2]", "node[01-16]", "n[01-100]", "n[1-2][3-4]", "n[1-2]x[3-4]", "n[1-2,]", "n[]", "a,,b",
         "n[3-1]", "n[1-3],n5!n[2-5]", "n[1-5]&n[3-9]", "n[1-3]^n[2-5]", "n[001-010/3]", "x-y.z", "n[9-11]",
         "r[1-2]n[01-03]p[1,3]", "n[ 1 - 3 ]", "n1,n1,n01", "n[1-3]-ib", "a[1-2]b,a[1-2]c", "n[5,1-3]"]


def oracle(pattern: str) -> list[str] | None:
    try:
        return list(NodeSet(pattern, resolver=RESOLVER_NOGROUP))
    except NodeSetException:
        return None


@pytest.mark.parametrize("pattern", CASES)
def test_expansion_is_clustershells(pattern):
    want = oracle(pattern)
    if want is None:
        with pytest.raises(ValueError):
            expand_nodeset(pattern)
    else:
        assert expand_nodeset(pattern) == want


@settings(max_examples=400)
@given(st.lists(st.tuples(st.sampled_from(["n", "node", "rack", "r1n", "x-"]), st.integers(0, 120),
                          st.sampled_from([0, 2, 3]), st.sampled_from(["", "-ib", "p1"])), min_size=1, max_size=40))
def test_fold_is_clustershells_and_expands_back(parts):
    names = [f"{p}{str(i).zfill(w)}{s}" for p, i, w, s in parts]
    folded = fold_nodeset(names)
    assert folded == str(NodeSet.fromlist(names, resolver=RESOLVER_NOGROUP))
    assert sorted(expand_nodeset(folded)) == sorted(set(names))


@settings(max_examples=300)
@given(st.text(alphabet="n0123-[],!&^/x ", max_size=20))
def test_random_patterns_agree_or_are_refused(pattern):
    want = oracle(pattern)
    try:
        got = expand_nodeset(pattern)
    except ValueError as e:
        assert want is None or len(want) > MAX_NODES or "@" in pattern, (pattern, e)
        return
    assert got == want


def test_folds_like_the_tools():
    assert fold_nodeset([f"node{i:02d}" for i in range(1, 17)]) == "node[01-16]"
    names = [f"x{i}y{j}" for i in range(1, 3) for j in range(1, 4)] + ["x3y1"]
    assert fold_nodeset(names) == "x[1-2]y[1-3],x3y1"
    tool = shutil.which("nodeset") or shutil.which("cluset")
    if tool is None:
        pytest.skip("ClusterShell's nodeset command is not installed")
    for names in ([f"node{i:02d}" for i in range(1, 17)], names, ["h1", "h2", "h3", "h5", "web"],
                  ["a1b1", "a1b2", "a2b1", "a2b2", "c"]):
        r = subprocess.run([tool, "-f", *names], capture_output=True, text=True, check=True)
        assert fold_nodeset(names) == r.stdout.strip()


@pytest.mark.parametrize("pattern", ["n[1-100000]x[1-100000]", "n[1-100001]", "n[0-99999999999999999]",
                                     "a[1-400]b[1-400],c", "n[1-1000000000000000000000]"])
def test_huge_sets_are_refused_before_expanding(pattern):
    with pytest.raises(ValueError) as e:
        expand_nodeset(pattern)
    assert str(MAX_NODES) in str(e.value) or "too long" in str(e.value) or "bad node set" in str(e.value)


def test_huge_range_in_inventory_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        parse_inventory("hosts:\n  n[1-100000]x[1-100000]: {}\n", "inv.yaml")
    assert f"more than {MAX_NODES} names" in str(e.value) and len(str(e.value)) < 200


def test_operators_in_targets():
    inv = parse_inventory("hosts:\n  n[1-6]: {labels: [cpu]}\n  gpu[1-2]: {labels: [gpu]}\n"
                          "groups:\n  odd: [n1, n3, n5]\n", "inv.yaml")
    names = lambda t: [h.name for h in inv.resolve(t)]  # noqa: E731
    assert names("cpu!odd") == ["n2", "n4", "n6"]
    assert names("n[1-4]&odd") == ["n1", "n3"]
    assert names("odd^n[1-2]") == ["n3", "n5", "n2"]
    assert names("all!cpu") == ["gpu1", "gpu2"]
    assert names("n[1-6/2],gpu1") == ["n1", "n3", "n5", "gpu1"]
    with pytest.raises(KeyError):
        inv.resolve("n[1-9]")
    with pytest.raises(ValueError):
        inv.resolve("n[1-100000]x[1-100000]")


def test_huge_target_in_a_flow_is_a_positioned_error(cli, flowdir):
    flowdir("t.py", "def a():\n    return 'true'\n")
    f = flowdir("f.flow", 'from t import a\na @ "n[1-100000]x[1-100000]"\n')
    inv = flowdir("hosts.yaml", "hosts:\n  n1: {local: true}\n")
    r = cli("check", str(f), "--hosts", str(inv))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"expands to more than {MAX_NODES} names" in r.stderr and "f.flow:2:" in r.stderr
