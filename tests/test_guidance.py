"""A CLI that guides (issue 9 item 7): usage errors, retry lines, the inventory used, error positions."""
from __future__ import annotations

import pytest

from cmflow import cli
from cmflow.compiler import compile_text
from cmflow.errors import ConfigError, FlowError
from cmflow.hosts import parse_inventory


@pytest.mark.parametrize("argv,first", [
    (["rn", "x.flow"], "cmflow: unknown command 'rn' (did you mean 'run'?)"),
    (["run", "x.flow", "--hots=h.yaml"], "cmflow run: unknown option '--hots' (did you mean '--hosts'?)"),
    (["check", "x.flow", "--format=json"], "cmflow check: option '--format' does not apply here"),
    (["check", "a", "b"], "cmflow check: unexpected argument 'b'"),
    (["data", "gett", "x"], "cmflow: unknown command 'data gett' (did you mean 'data get'?)"),
    (["hosts"], "cmflow hosts: missing sub-command (check, list, trust)"),
    ([], "cmflow: missing command"),
])
def test_usage_errors_are_one_line_and_the_usage(capsys, argv, first):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == first, err
    assert "usage" in lines[1].lower() and "Argument(" not in err and "Warning" not in err and "Option(" not in err


def test_unknown_command_through_the_real_cli(cli):
    r = cli("rn")
    assert r.returncode == 2 and r.stderr.startswith("cmflow: unknown command 'rn' (did you mean 'run'?)\n")


def test_retry_lines_say_the_attempt(cli, flowdir):
    flowdir("t.py", "def f():\n    return 'echo no >&2; exit 3'\n")
    f = flowdir("f.flow", "from t import f\nf\n")
    r = cli("run", str(f), "--retries", "2", "--run-dir", str(flowdir.path / "run"), cwd=flowdir.path)
    assert r.returncode == 1
    retries = [line for line in r.stderr.splitlines() if " retry " in line]
    assert len(retries) == 2, r.stderr
    assert "attempt 1/3 on localhost" in retries[0] and retries[0].endswith("attempt 2/3 next")
    assert "attempt 3/3" in r.stderr and "#1 f" not in retries[0]


def test_a_run_says_which_inventory_it_picked_up(cli, flowdir):
    flowdir("t.py", "def f():\n    return 'echo 1'\n")
    f = flowdir("f.flow", "from t import f\nf\n")
    flowdir("hosts.yaml", "hosts:\n  here: {local: true, slots: 2}\n")
    r = cli("run", str(f), "-q", "--run-dir", str(flowdir.path / "run"), cwd=flowdir.path)
    assert r.returncode == 0 and r.stdout == "1\n"
    assert r.stderr.count("cmflow: using inventory hosts.yaml (1 host;") == 1, r.stderr
    r = cli("run", str(f), "-q", "--hosts", "hosts.yaml", "--run-dir", str(flowdir.path / "run2"), cwd=flowdir.path)
    assert "using inventory" not in r.stderr


@pytest.mark.parametrize("text,where,what", [
    ("hosts:\n  n1: {hostname: '{name}.{domian}'}\n", "hosts.n1.hostname", "unknown placeholder {domian}"),
    ("hosts:\n  n1: {}\n  n2: {}\n  n1: {slots: 2}\n", "", "line 4, column 3: duplicate key 'n1'"),
    ("hosts:\n  n1: {slots: 1, slots: 2}\n", "", "duplicate key 'slots'"),
])
def test_inventory_mistakes_that_were_silent(text, where, what):
    with pytest.raises(ConfigError) as e:
        parse_inventory(text, "inv.yaml")
    assert str(e.value).startswith(f"inv.yaml: {where}: " if where else "inv.yaml: ") and what in str(e.value)


def test_keyword_and_positional_calls_are_one_invocation(flowdir):
    flowdir("t.py", "def f(level, size=2):\n    return f'echo {level} {size}'\n")
    plan = compile_text("from t import f\nf(1) | f(level=1) | f(1, 2) | f(size=2, level=1) | f(2)\n",
                        str(flowdir.path / "f.flow"))
    assert len(plan.jobs) == 2


def test_operands_of_a_failed_sum_have_their_own_positions(cli, flowdir):
    flowdir("t.py", "def n():\n    return 'echo 1'\ndef t():\n    return 'echo hi'\n")
    f = flowdir("f.flow", "from t import n, t\nx = n | n\nn + t\n")
    r = cli("run", str(f), "-q", "--run-dir", str(flowdir.path / "run"), cwd=flowdir.path)
    assert r.returncode == 1
    assert f"cannot add int 1 (n at {f}:3:1) and str 'hi' (t at {f}:3:5)" in r.stderr, r.stderr


def test_a_misspelled_imported_name_gets_the_caret(flowdir):
    flowdir("t.py", "def alpha():\n    return 'true'\ndef beta():\n    return 'true'\n")
    with pytest.raises(FlowError) as e:
        compile_text("from t import alpha, betta\nalpha\n", str(flowdir.path / "f.flow"))
    assert str(e.value).endswith(":1:22: error: module 't' has no task 'betta' (did you mean 'beta'?)\n"
                                 "    from t import alpha, betta\n                         ^^^^^")
