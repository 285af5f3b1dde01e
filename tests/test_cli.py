"""The command line as a user meets it: usage, check, plan."""
from __future__ import annotations

import json

import pytest
from conftest import ROOT, cmflow

from cmflow import cli

SEED = str(ROOT / "flows" / "seed.flow")


def test_version_and_help():
    r = cmflow("--version")
    assert r.returncode == 0 and r.stdout.startswith("cmflow ")
    r = cmflow("--help")
    assert r.returncode == 0 and "cmflow run FLOW" in r.stdout and "Exit status" in r.stdout


def test_plan_seed_shows_four_jobs(tmp_path):
    r = cmflow("plan", SEED, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 jobs" in r.stdout and "Seq[Par[a, b, c], d, Sum[a, b, c, d]]" in r.stdout
    for command in ("$ nproc", "$ getconf PAGESIZE", "$ getconf LONG_BIT", "/proc/meminfo"):
        assert command in r.stdout
    doc = json.loads(cmflow("plan", SEED, "--format", "json", cwd=tmp_path).stdout)
    assert [j["task"] for j in doc["jobs"]] == ["a", "b", "c", "d"]
    assert cmflow("plan", SEED, "--format", "dot", cwd=tmp_path).stdout.startswith("digraph plan {")
    r = cmflow("plan", SEED, "--format", "yaml", cwd=tmp_path)
    assert r.returncode == 2 and "--format for plan must be text, json or dot" in r.stderr


def test_check_reports_three_mistakes_and_exits_2(tmp_path):
    (tmp_path / "tk.py").write_text("def a():\n    return 'echo 1'\ndef b(n):\n    return f'echo {n}'\n")
    (tmp_path / "three.flow").write_text("from tk import a, b\n\n(a | bb); b()\na @ nowhere\n")
    r = cmflow("check", "three.flow", cwd=tmp_path)
    assert r.returncode == 2
    heads = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert heads == [
        "three.flow:3:6: error: unknown name 'bb' (did you mean 'b'?)",
        "three.flow:3:11: error: bad arguments for task 'b': missing a required argument: 'n'",
        "three.flow:4:5: error: unknown host, group or label 'nowhere'",
    ]
    assert r.stderr.rstrip().endswith("3 errors") and "Traceback" not in r.stderr
    assert cmflow("check", SEED, cwd=tmp_path).stdout.strip().endswith("ok, 4 jobs")


def test_missing_flow_file(tmp_path):
    r = cmflow("check", "nope.flow", cwd=tmp_path)
    assert r.returncode == 2 and "cannot read flow file" in r.stderr and "Traceback" not in r.stderr


def test_repl_session(tmp_path):
    (tmp_path / "tk.py").write_text("def a():\n    return 'echo 1'\ndef b(n):\n    return f'echo {n}'\n")
    script = "a + b(2)\nx = a | b(5)\nx\nbogus\ndef e(n):\n    return f'echo {n}{n}'\n\ne(4)\n:plan x\n:quit\n"
    r = cmflow("repl", "--tasks", str(tmp_path / "tk.py"), cwd=tmp_path, input=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:2] == ["3", "[1, 5]"]
    assert "<repl>:1:1: error: unknown name 'bogus'" in r.stdout
    assert "44" in out and "Par[a, b(5)]" in r.stdout


# Every usage line, and mistakes: docopt's matching of the one command's usage (cli._usage_for)
# must give what matching the whole usage gives.
_ARGVS = [
    ["check", "f.flow"], ["check", "f.flow", "--hosts=h.yaml"],
    ["plan", "f.flow", "--format=dot", "--resume", "old", "--deep"],
    ["run", "f.flow", "-j", "4", "--timeout=3", "--retries=2", "--halt=soon", "--run-dir=d", "--format=json",
     "-q", "--resume", "--no-report", "--keep-remote", "--fanout=8"],
    ["run", "f.flow"], ["eval", "a | b", "--tasks=m", "--tasks=n", "-j", "2"],
    ["status"], ["status", "d", "--watch", "--format=json"], ["report", "d", "-o", "x.html"],
    ["runs"], ["runs", "ls", "--root=r"], ["runs", "clean", "--keep=3", "--older-than=2"],
    ["repl", "--tasks=t"], ["hosts", "list", "g"], ["hosts", "check", "a", "b", "--connect-timeout=3"],
    ["hosts", "trust", "h", "--yes", "--replace"], ["exec", "uname -a", "--on=g", "--timeout=2"],
    ["data", "add", "f", "--service=s", "--name=n", "--force"], ["data", "ls", "--format=json"],
    ["data", "get", "n", "dest"], ["data", "del", "n"], ["data", "share", "n", "--with=u", "--expires=1h"],
    ["data", "unshare", "n", "--public"], ["data", "services"], ["vm", "up", "3", "--provider=docker"],
    ["vm", "status"], ["vm", "ssh-config", "--name=x"], ["vm", "halt"], ["vm", "destroy", "--yes"],
    # mistakes
    ["run"], ["run", "f.flow", "--bogus"], ["hosts"], ["data", "frob"], ["vm", "up"], ["check", "a", "b"],
    ["frob"], [], ["run", "f.flow", "-j"], ["status", "a", "b"],
]


@pytest.mark.parametrize("argv", [["run", "-h"], ["run", "f.flow", "--help"], ["data", "get", "-dash"],
                                  ["status", "--version"]])
def test_help_and_version_are_matched_against_the_whole_usage(argv):
    assert cli._usage_for(argv) == cli.__doc__


@pytest.mark.parametrize("argv", _ARGVS, ids=[" ".join(a) or "(none)" for a in _ARGVS])
def test_one_commands_usage_parses_as_the_whole_usage(argv):
    from docopt import DocoptExit, docopt

    def parse(doc):
        try:
            return docopt(doc, argv=argv, version="x")
        except DocoptExit:
            return "usage error"

    whole, one = parse(cli.__doc__), parse(cli._usage_for(argv))
    if whole == "usage error" or one == "usage error":
        assert one == whole
        return
    assert {k: whole[k] for k in one} == one          # the same values for what the command names
    # the rest is other commands' words, unset, or their options' defaults: absent here
    assert all(not v or k.startswith("-") for k, v in whole.items() if k not in one)
    assert cli._Args(one)["hosts" if argv[0] != "hosts" else "vm"] is None or argv[0] == "hosts"
