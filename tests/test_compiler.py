"""Compiler: plans, memoisation, bindings, placement, and every static error (golden)."""
from __future__ import annotations

import json
import textwrap

import pytest

from cmflow.compiler import compile_file, compile_text
from cmflow.errors import FlowError
from cmflow.hosts import parse_inventory
from cmflow.plan import render_dot, render_json, render_text

TASKS = '''
from cmflow import task

def a():
    return "echo 1"

def b(n, m=2):
    return f"echo {n} {m}"

def boom():
    x = {}
    return x["missing"]

def nonstr():
    return 42

@task(parse="lines", hosts="gpu", timeout=5, retries=2)
def g():
    return "nvidia-smi -L"
'''

INV = parse_inventory("hosts:\n  h1: {labels: [gpu]}\n  h2: {}\ngroups:\n  pair: [h1, h2]\n", "inv.yaml")


def compile_in(flowdir, text, name="f.flow"):
    flowdir("tk.py", TASKS)
    path = flowdir(name, textwrap.dedent(text))
    return compile_file(str(path), is_target=INV.is_target, target_names=INV.target_names())


def errors_of(flowdir, text):
    with pytest.raises(FlowError) as e:
        compile_in(flowdir, text)
    return str(e.value).replace(str(flowdir.path) + "/", "")


def test_seed_shape_and_memoisation(flowdir):
    plan = compile_in(flowdir, "from tk import *\n(a | b(1) | b(2)); a; a + b(1) + b(2) + a\n")
    assert plan.shape() == "Seq[Par[a, b(1), b(2)], a, Sum[a, b(1), b(2), a]]"
    assert [j.command for j in plan.jobs] == ["echo 1", "echo 1 2", "echo 2 2"]


def test_distinct_invocations_are_distinct_jobs(flowdir):
    plan = compile_in(flowdir, "from tk import b\nb(1) | b(1.0) | b(True) | b(1, m=3) | b(1) @ h1 | b(1)\n")
    assert len(plan.jobs) == 5


def test_binding_is_shared(flowdir):
    plan = compile_in(flowdir, "from tk import a, b\nx = a | b(1)\nx + x\nx\n")
    assert plan.shape() == "Seq[Sum[Par[a, b(1)], Par[a, b(1)]], Par[a, b(1)]]"
    root = plan.root
    assert root.items[0].items[0] is root.items[0].items[1] is root.items[1]
    assert len(plan.jobs) == 2


def test_placement_innermost_wins_and_task_default(flowdir):
    plan = compile_in(flowdir, "from tk import *\n(a @ h2 | b(1)) @ pair; g\n")
    targets = {j.label: j.target for j in plan.jobs}
    assert targets == {"a @ h2": "h2", "b(1) @ pair": "pair", "g @ gpu": "gpu"}
    g = plan.jobs[-1]
    assert (g.options.parse, g.options.timeout, g.options.retries) == ("lines", 5, 2)


def test_module_alias_and_inline_def(flowdir):
    plan = compile_in(flowdir, '''\
        import tk as t
        def e(n, word="hi"):
            return f"echo {word} {n}"
        t.a + e(2, word="yo")
        ''')
    assert [j.command for j in plan.jobs] == ["echo 1", "echo yo 2"]


def test_inline_def_traceback_points_into_the_flow(flowdir):
    out = errors_of(flowdir, '''\
        # a comment
        def e(n):
            x = 1
            return [][n]
        e(3)
        ''')
    assert out.startswith("f.flow:5:1: error: task 'e' raised IndexError: list index out of range")
    assert 'File "' in out and 'f.flow", line 4, in e' in out
    assert "compiler.py" not in out


GOLDEN = [
    ("from tk import a\naa\n",
     "f.flow:2:1: error: unknown name 'aa' (did you mean 'a'?)\n    aa\n    ^^"),
    ("from tk import b\nb(1, 2, 3)\n",
     "f.flow:2:1: error: bad arguments for task 'b': too many positional arguments\n    b(1, 2, 3)\n    ^"),
    ("from tk import b\nb(q=1)\n",
     "f.flow:2:1: error: bad arguments for task 'b': missing a required argument: 'n'\n    b(q=1)\n    ^"),
    ("from tk import nonstr\nnonstr\n",
     "f.flow:2:1: error: task 'nonstr' returned int, not a command string\n    nonstr\n    ^^^^^^"),
    ("from tk import a\na @ nowhere\n",
     "f.flow:2:5: error: unknown host, group or label 'nowhere'\n    a @ nowhere\n        ^^^^^^^"),
    ("from tk import a\na @ h3\n",
     "f.flow:2:5: error: unknown host, group or label 'h3' (did you mean 'h2'?)\n    a @ h3\n        ^^"),
    ("from nosuch import x\n",
     "f.flow:1:1: error: no task module 'nosuch' (looked for nosuch.py next to the flow, on CMFLOW_PATH and on "
     "sys.path)\n    from nosuch import x\n    ^"),
    ("from tk import zz\n",
     "f.flow:1:16: error: module 'tk' has no task 'zz'\n    from tk import zz\n                   ^^"),
    ("import tk as t\nt.bb\n",
     "f.flow:2:3: error: module 't' has no task 'bb' (did you mean 'b'?)\n    t.bb\n      ^^"),
    ("import tk\ntk\n",
     "f.flow:2:1: error: 'tk' is a module; name one of its tasks (tk.NAME)\n    tk\n    ^^"),
    ("from tk import a\nx = a\nx(1)\n",
     "f.flow:3:1: error: 'x' names a sub-flow, not a task; it takes no arguments\n    x(1)\n    ^"),
    ("def f(:\n  pass\n",
     "f.flow:1:7: error: invalid Python in def f: invalid syntax\n    def f(:\n          ^"),
    ("a |\n",
     "f.flow:1:4: error: unexpected end of input; expected '(', a name\n    a |\n       ^"),
]


@pytest.mark.parametrize("text,expected", GOLDEN, ids=[g[1].split("error: ")[1].split("\n")[0] for g in GOLDEN])
def test_golden_errors(flowdir, text, expected):
    assert errors_of(flowdir, text) == expected


def test_three_mistakes_all_reported(flowdir):
    out = errors_of(flowdir, "from tk import a, b, boom\nbb | a\na @ nowhere\nboom + b()\n")
    lines = [line for line in out.splitlines() if ": error: " in line]
    assert [line.split(": error:")[0] for line in lines] == ["f.flow:2:1", "f.flow:3:5", "f.flow:4:1", "f.flow:4:8"]
    assert out.endswith("4 errors")
    assert "KeyError: 'missing'" in out and 'tk.py", line 12, in boom' in out


def test_a_binding_compiled_where_written_but_never_run_adds_no_job(flowdir):
    """x unused, y only placed: their unplaced jobs never run, so the plan (and check's count) has none."""
    plan = compile_in(flowdir, "from tk import a, b\nx = a | b(1)\ny = b(2)\ny @ h1\nb(3)\n")
    assert [(j.id, j.label) for j in plan.jobs] == [(1, "b(2) @ h1"), (2, "b(3)")]
    assert render_text(plan).splitlines()[0].endswith("f.flow: 2 jobs")
    # a binding used as written keeps its jobs, shared
    plan = compile_in(flowdir, "from tk import a, b\nx = a | b(1)\nx ; x @ h1\n")
    assert [j.label for j in plan.jobs] == ["a", "b(1)", "a @ h1", "b(1) @ h1"]


def test_a_failed_import_is_one_error_not_one_more_per_use(flowdir):
    """Three mistakes, three errors: the names a missing module would have bound are not 'unknown' again."""
    flowdir("broken.py", "import no_such_module_here\n\ndef t():\n    return 'true'\n")
    out = errors_of(flowdir, "import nosuch\nfrom broken import t as u, v\nimport x.y\n"
                             "nosuch.a | u | v | x.y.z ; nosuch.b\nzz\n")
    heads = [line.split(": error: ")[0] for line in out.splitlines() if ": error: " in line]
    assert heads == ["f.flow:1:1", "f.flow:2:1", "f.flow:3:1", "f.flow:5:1"], out
    assert out.endswith("4 errors") and "unknown name 'nosuch'" not in out
    # the module's own frame, not the import machinery's
    assert 'broken.py", line 1, in <module>' in out and "<frozen" not in out
    # a name the module lacks, a def whose decorator refused it: one error each, where they are defined
    out = errors_of(flowdir, "from tk import a, zz\nfrom cmflow import task\n@task(parse='nope')\n"
                             "def d():\n    return 'true'\n\nzz | a | d\nqq\n")
    heads = [line.split(": error: ")[0] for line in out.splitlines() if ": error: " in line]
    assert heads == ["f.flow:1:19", "f.flow:3:1", "f.flow:8:1"], out


@pytest.mark.parametrize("odd", ["\f", "\u2028", "\x85", "\x1c", "\v"])
def test_errors_quote_their_own_line_past_form_feeds_and_unicode_separators(flowdir, odd):
    """Only a newline ends a line; str.splitlines also splits at these, which quoted the wrong line."""
    syntax = errors_of(flowdir, f"from tk import a, b\n# page{odd}break\nb('a{odd}b')\na b\n")
    assert syntax == "f.flow:4:3: error: unexpected 'b'\n    a b\n      ^"
    unknown = errors_of(flowdir, f"from tk import a, b\n# page{odd}break\nb('a{odd}b')\na | zz\n")
    assert unknown == "f.flow:4:5: error: unknown name 'zz'\n    a | zz\n        ^^"
    inline = errors_of(flowdir, f"from tk import a, b\nb('{odd}') | zz\n")
    assert inline == "f.flow:2:10: error: unknown name 'zz'\n    b(' ') | zz\n             ^^"


def test_renderers(flowdir):
    plan = compile_in(flowdir, "from tk import *\n(a | b(1)); a + b(1)\n")
    text = render_text(plan)
    assert "2 jobs" in text and "$ echo 1 2" in text and "(again)" in text
    doc = json.loads(render_json(plan))
    assert doc["root"] == {"op": "seq", "items": [{"op": "par", "items": [{"job": 1}, {"job": 2}]},
                                                  {"op": "sum", "items": [{"job": 1}, {"job": 2}]}]}
    assert doc["jobs"][1]["args"] == [1] and doc["jobs"][1]["command"] == "echo 1 2"
    dot = render_dot(plan)
    # (a | b(1)); a + b(1): fork, 2 jobs, join; then a fork, 2 reused jobs, "+"; Graphviz layout in test_plan_dot
    assert dot.startswith("digraph plan {") and dot.count('label="#1 a\\l') == 1 and "(reused)" in dot


def test_empty_flow_compiles_to_nothing():
    plan = compile_text("# nothing here\n")
    assert plan.root is None and plan.jobs == ()


def test_a_byte_order_mark_is_not_part_of_the_flow(flowdir):
    """As Python reads a module and YAML a file: line 1's columns count from after the mark."""
    flowdir("tk.py", TASKS)
    path = flowdir.path / "bom.flow"
    path.write_bytes("\ufefffrom tk import a\na\n".encode())
    assert len(compile_file(str(path)).jobs) == 1
    path.write_bytes("\ufeffa b\n".encode())
    with pytest.raises(FlowError) as e:
        compile_file(str(path))
    assert str(e.value).startswith(f"{path}:1:3: error: unexpected 'b'")


def test_unreadable_flow_file(tmp_path):
    with pytest.raises(FlowError) as e:
        compile_file(str(tmp_path / "missing.flow"))
    assert "cannot read flow file" in str(e.value)


def test_cmflow_path_is_searched(flowdir, tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "remote_tasks.py").write_text("def r():\n    return 'uptime'\n")
    monkeypatch.setenv("CMFLOW_PATH", str(lib))
    plan = compile_text("from remote_tasks import r\nr\n", str(flowdir("g.flow", "")))
    assert plan.jobs[0].command == "uptime"
