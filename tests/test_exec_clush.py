"""``cmflow exec`` against the real ``clush -b`` (PyPI ClusterShell) on the same real sshd hosts.

stdout gathered by exit status and output, node sets folded, in clush's order;
stderr apart (a warning on one host does not split a group); failures and
timeouts reported by exit code, not as output.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, cmflow, need_tool, world_dir
from sshhosts import SshdHosts, have_sshd


def _clush(hosts: SshdHosts, nodes: str, command: str, *flags: str) -> subprocess.CompletedProcess:
    clush = need_tool("clush", "ClusterShell (pip; the test extra)")
    return subprocess.run([clush, "-w", nodes, "-o", f"-F {hosts.ssh_config}", "-f", "64", *flags, command],
                          capture_output=True, text=True, timeout=120)


def _exec(hosts: SshdHosts, nodes: str, command: str, *flags: str) -> subprocess.CompletedProcess:
    return cmflow("exec", command, "--on", nodes, "--hosts", str(hosts.inventory_file), *flags)


def _port_case(hosts: SshdHosts, cases: dict[int, str], default: str = "") -> str:
    """A shell command that does cases[i] on host i (the sshd's port tells the hosts apart)."""
    arms = "".join(f"{hosts.hosts[i].port}) {body};; " for i, body in cases.items())
    return f'case "${{SSH_CONNECTION##* }}" in {arms}*) {default};; esac'


def _stderr_lines(text: str, prog: str) -> list[str]:
    """Lines of stderr in a stable order, the program's name as PROG; clush's progress counter left out."""
    lines = [line.replace(f"{prog}: ", "PROG: ", 1) if line.startswith(f"{prog}: ") else line
             for line in text.splitlines()]
    return sorted(line for line in lines if line.strip() and not re.fullmatch(r"PROG: \d+/\d+", line))


def test_multi_line_outputs_failures_and_timeouts_as_clush_b(sshd_hosts):
    """Three hosts: two alike with a warning on one, one failing."""
    h = sshd_hosts
    body = "printf 'line 1\\nline 2\\n'; "
    command = body + _port_case(h, {0: "echo careful >&2", 1: "echo other; exit 3"})
    ours, theirs = _exec(h, "h[1-3]", command), _clush(h, "h[1-3]", command, "-b")
    assert theirs.stdout.startswith("---------------\nh[1,3] (2)\n"), theirs.stdout    # the oracle saw the hosts
    assert ours.stdout == theirs.stdout
    assert _stderr_lines(ours.stderr, "cmflow") == _stderr_lines(theirs.stderr, "clush") == \
        ["PROG: h2: exited with exit code 3", "h1: careful"]
    assert ours.returncode == 1


@pytest.mark.slow
def test_a_timed_out_host_is_reported_not_shown(sshd_hosts):
    """About 10 s: clush's command timeout counts its ssh connection too, slow on a loaded machine."""
    h = sshd_hosts
    command = "printf 'line 1\\nline 2\\n'; " + _port_case(h, {2: "sleep 60"})
    ours, theirs = _exec(h, "h[1-3]", command, "--timeout", "10"), _clush(h, "h[1-3]", command, "-b", "-u", "10")
    assert ours.stdout == theirs.stdout == "---------------\nh[1-2] (2)\n---------------\nline 1\nline 2\n"
    assert _stderr_lines(ours.stderr, "cmflow") == _stderr_lines(theirs.stderr, "clush") == \
        ["PROG: h3: command timeout"]


def test_one_line_outputs_as_clush_bl_and_empty_output_shows_nothing(sshd_hosts):
    h = sshd_hosts
    command = _port_case(h, {0: "echo a; echo warn >&2", 1: "true", 2: "echo b; exit 4"})
    ours, theirs = _exec(h, "h[1-3]", command), _clush(h, "h[1-3]", command, "-bL")
    assert ours.stdout == theirs.stdout == "h1: a\nh3: b\n"      # h2 printed nothing: no line for it
    assert _stderr_lines(ours.stderr, "cmflow") == _stderr_lines(theirs.stderr, "clush") == \
        ["PROG: h3: exited with exit code 4", "h1: warn"]


def test_a_job_killed_by_a_signal_exits_128_plus_n_as_clush_says(tmp_path):
    """On this machine (clush -R exec runs the command locally as cmflow's local transport does)."""
    (tmp_path / "inv.yaml").write_text("hosts:\n  here: {local: true}\n")
    command = "echo before; kill -9 $$"
    ours = cmflow("exec", command, "--hosts", str(tmp_path / "inv.yaml"))
    theirs = subprocess.run([need_tool("clush", "ClusterShell"), "-R", "exec", "-w", "here", "-bL", command],
                            capture_output=True, text=True, timeout=60)
    assert ours.stdout == theirs.stdout == "here: before\n"
    assert _stderr_lines(ours.stderr, "cmflow") == _stderr_lines(theirs.stderr, "clush") == \
        ["PROG: here: exited with exit code 137"]
    assert ours.returncode == 1


@pytest.mark.parametrize("command,flag", [("printf 'one\\r\\n'; printf 'warn\\r\\n' >&2", "-bL"),
                                          ("printf 'a\\r\\nb\\r\\n'", "-b")])
def test_crlf_line_ends_are_trimmed_as_clush_trims_them(tmp_path, command, flag):
    """ClusterShell reads lines and drops a CRLF whole (a Windows host, a tool writing CRLF): no CR in
    the output. Bytes compared: text mode would turn CRLF into LF before the comparison."""
    (tmp_path / "inv.yaml").write_text("hosts:\n  here: {local: true}\n")
    ours = subprocess.run([sys.executable, "-m", "cmflow", "exec", command, "--hosts", str(tmp_path / "inv.yaml")],
                          capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    theirs = subprocess.run([need_tool("clush", "ClusterShell"), "-R", "exec", "-w", "here", flag, command],
                            capture_output=True, timeout=60)
    assert b"\r" not in theirs.stdout and theirs.stdout.strip()       # the oracle ran and trimmed
    assert ours.stdout == theirs.stdout
    assert _stderr_lines(ours.stderr.decode(), "cmflow") == _stderr_lines(theirs.stderr.decode(), "clush")


@pytest.mark.slow
def test_sixteen_hosts_fold_to_one_line():
    """Sixteen real sshd hosts (about 5 s to start): `echo hi` on node[01-16] is one line, as clush folds it."""
    if not have_sshd():
        pytest.skip("openssh-server is not installed (.ci/run installs it)")
    base = world_dir("cmflow-sixteen-")
    hosts = SshdHosts(base, n=16, prefix="node", width=2).start()
    try:
        ours = _exec(hosts, "node[01-16]", "echo hi")
        assert ours.returncode == 0 and ours.stderr == "", ours.stderr
        assert ours.stdout == "node[01-16]: hi\n"
        assert ours.stdout == _clush(hosts, "node[01-16]", "echo hi", "-bL").stdout
        assert _clush(hosts, "node[01-16]", "echo hi", "-b").stdout == \
            "---------------\nnode[01-16] (16)\n---------------\nhi\n"
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)
