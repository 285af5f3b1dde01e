"""Language v2: generators, run-time arguments, local functions, fold -- compiled and run for real."""
from __future__ import annotations

import json
import textwrap

import pytest

from cmflow import api
from cmflow.compiler import compile_file
from cmflow.errors import FlowError
from cmflow.executor import RunOptions
from cmflow.hosts import parse_inventory
from cmflow.plan import render_dot, render_json, render_text
from cmflow.repl import Session

from conftest import cmflow
from test_run_local import local_inv

TASKS = '''
from cmflow import local, task

def sq(i):
    return f"echo {i * i}"

def twice(x):
    return f"echo $((2*{x}))"

def a():
    return "echo 1"

def b():
    return "echo 2"

def report(values, title="r"):
    return f"echo {title}:{len(values)}"

def show(n, title="r"):
    return f"echo {title}{n}"

def lst():
    return "echo '[1, 2, 3]'"

def fail():
    return "exit 3"

def picky(x):
    if x == 9:
        raise ValueError(f"nine is not allowed")
    return f"echo {x}"

def nonstr(x):
    return 42

def hello(h="x"):
    return f"echo hi"

def boom(i):
    if i == 3:
        raise KeyError(i)
    return f"echo {i}"

@local
def join(x, y):
    return f"{x}{y}"

@local
def bad_local(values):
    return values["nope"]

@local
def max(values):
    return "mine"
'''

INV = parse_inventory("hosts:\n  here: {local: true, slots: 4}\n  h1: {labels: [gpu]}\n  h2: {}\n"
                      "groups:\n  pair: [h1, h2]\n", "inv.yaml")


def compile_in(flowdir, text):
    flowdir("tk.py", TASKS)
    path = flowdir("f.flow", textwrap.dedent(text))
    return compile_file(str(path), **api.target_kw(INV))


def errors_of(flowdir, text):
    with pytest.raises(FlowError) as e:
        compile_in(flowdir, text)
    return str(e.value).replace(str(flowdir.path) + "/", "")


def run_in(flowdir, text, inv=None, **opts):
    flowdir("tk.py", TASKS)
    path = flowdir("f.flow", textwrap.dedent(text))
    inv = inv or local_inv()
    plan, _ = api.load(str(path), inv=inv)
    return api.run_sync(plan, inv, RunOptions(**opts), flowdir.path / "run")


# ------------------------------------------------------------------ expansion

def test_generator_expands_every_item(flowdir):
    plan = compile_in(flowdir, "from tk import sq\nsum(sq(i) for i in range(1, 11))\n")
    assert plan.shape() == "Sum[" + ", ".join(f"sq({i})" for i in range(1, 11)) + "]"
    assert [j.command for j in plan.jobs][:3] == ["echo 1", "echo 4", "echo 9"]


def test_clauses_nest_as_a_product_and_unpack(flowdir):
    plan = compile_in(flowdir, """\
        from tk import show
        par(show(n, title=s) for n in [1, 2] for s in ["x", "y"]) ; seq(show(n, title=t) for n, t in [[7, "p"], [8, "q"]])
        """)
    assert plan.shape() == ('Seq[Par[show(1, title="x"), show(1, title="y"), show(2, title="x"), '
                            'show(2, title="y")], Seq[show(7, title="p"), show(8, title="q")]]')


def test_generator_items_and_written_calls_are_the_same_jobs(flowdir):
    # items are compiled on a fast path (the task resolved once); they must meet the written-out
    # calls in one table: same job, same shared reference; 1, 1.0 and True stay three jobs
    plan = compile_in(flowdir, "from tk import show, sq\n"
                               "show(2, title=\"x\") | sq(1.0) | par(show(n, title=s) for n in [1, 2] for s in [\"x\"])"
                               " | par(sq(v) for v in [1, 1.0, True, 1]) | sq(1)\n")
    assert [j.label for j in plan.jobs] == ['show(2, title="x")', "sq(1.0)", 'show(1, title="x")', "sq(1)", "sq(True)"]
    first, _, gen, squares, last = plan.root.items
    assert gen.items[1] is first
    assert squares.items[0] is squares.items[3] is last and squares.items[1] is plan.root.items[1]


def test_inner_range_uses_outer_variable(flowdir):
    plan = compile_in(flowdir, "from tk import show\npar(show(i, title=str) for i in range(3) "
                               "for str in [\"a\"] for j in range(i))\n")
    assert [j.label for j in plan.jobs] == ['show(1, title="a")', 'show(2, title="a")']


def test_broadcast_places_each_item_on_its_host(flowdir):
    plan = compile_in(flowdir, "from tk import hello, a\npar(hello @ h for h in hosts(pair)); a\n")
    assert [(j.label, j.target) for j in plan.jobs] == [("hello @ h1", "h1"), ("hello @ h2", "h2"), ("a", None)]
    plan = compile_in(flowdir, "from tk import hello\npar(hello @ h for h in hosts(\"h[1-2]\"))\n")
    assert [j.target for j in plan.jobs] == ["h1", "h2"]


def test_hosts_of_a_loop_variable(flowdir):
    plan = compile_in(flowdir, "from tk import show\npar(show(1) @ h for g in [\"pair\", \"gpu\"] for h in hosts(g))\n")
    assert [j.target for j in plan.jobs] == ["h1", "h2"]   # h1 twice: the same call runs once
    assert plan.shape() == "Par[show(1) @ h1, show(1) @ h2, show(1) @ h1]"


def test_empty_generators(flowdir):
    plan = compile_in(flowdir, "from tk import sq\npar(sq(i) for i in range(0)) | seq(sq(i) for i in [])\n")
    assert plan.shape() == "Par[Par[], Seq[]]" and plan.jobs == ()


def test_user_names_shadow_builtins(flowdir):
    plan = compile_in(flowdir, "from tk import max, sq\nmax(sq(1) | sq(2))\n")
    assert plan.shape() == "max(<sq(1) | sq(2)>)"
    assert plan.root.fn.__module__ != "builtins"


# ----------------------------------------------------------- deferred jobs

def test_plan_shows_deferred_jobs_with_their_inputs(flowdir):
    plan = compile_in(flowdir, "from tk import *\nx = a | b\nreport(x, title=\"t\") ; twice(sq(3))\n")
    assert plan.deferred() == 2 and len(plan.jobs) == 3
    text = render_text(plan)
    assert 'report(<a | b>, title="t")  (deferred' in text and "twice(<sq(3)>)" in text
    assert "3 jobs + 2 deferred" in text
    doc = json.loads(render_json(plan))
    call = doc["root"]["items"][0]
    assert call["deferred"] is True and call["task"] == "report" and call["args"] == [{"input": 0}]
    assert call["kwargs"] == {"title": "t"}
    assert call["inputs"] == [{"op": "par", "items": [{"job": 1}, {"job": 2}]}]
    assert "report(<a | b>" in render_dot(plan)


# ------------------------------------------------------------ static errors

GOLDEN = [
    ("from tk import sq\nsum(sq(i) for i in range(0))\n",
     "f.flow:2:1: error: sum over nothing: the list is empty\n    sum(sq(i) for i in range(0))\n    ^^^"),
    ("from tk import sq\npar(sq(i) for i in xs)\n",
     "f.flow:2:20: error: unknown iterable 'xs': a generator loops over range(...), hosts(TARGET) or a list [...]"
     "\n    par(sq(i) for i in xs)\n                       ^^"),
    ("from tk import sq\npar(sq(i) for i in zip(1))\n",
     "f.flow:2:20: error: unknown iterable 'zip(...)': a generator loops over range(...), hosts(TARGET) or a "
     "list [...]\n    par(sq(i) for i in zip(1))\n                       ^^^"),
    ("from tk import sq\npar(i for i in range(2))\n",
     "f.flow:2:5: error: 'i' is a loop variable (a value), not a task; pass it to one: task(i)\n"
     "    par(i for i in range(2))\n        ^\n    in the generator item where i = 0"),
    ("from tk import hello\npar(hello @ h for h in hosts(nowhere))\n",
     "f.flow:2:30: error: hosts(): unknown host, group or label 'nowhere' (did you mean 'here'?)\n"
     "    par(hello @ h for h in hosts(nowhere))\n                                 ^^^^^^^"),
    ("from tk import hello\npar(hello @ h for h in hosts(paior))\n",
     "f.flow:2:30: error: hosts(): unknown host, group or label 'paior' (did you mean 'pair'?)\n"
     "    par(hello @ h for h in hosts(paior))\n                                 ^^^^^"),
    ("from tk import sq\npar(sq(a) for a, b in [1, 2])\n",
     "f.flow:2:11: error: cannot unpack 1 into a, b\n    par(sq(a) for a, b in [1, 2])\n              ^^^"),
    ("from tk import sq\npar(sq(i) for i in range(\"x\"))\n",
     "f.flow:2:20: error: range() takes whole numbers or loop variables, not \"x\"\n"
     "    par(sq(i) for i in range(\"x\"))\n                       ^^^^^"),
    ("from tk import sq\npar(sq(i) for i in 3)\n",
     "f.flow:2:11: error: cannot loop over 3: a generator loops over range(...), hosts(TARGET) or a list [...]\n"
     "    par(sq(i) for i in 3)\n              ^^^"),
    ("from tk import hello\npar(hello @ h for h in [1])\n",
     "f.flow:2:13: error: loop variable 'h' is 1, not a host, group or label name\n"
     "    par(hello @ h for h in [1])\n                ^\n    in the generator item where h = 1"),
    ("from tk import sq, twice\nfold(twice, sq(1) | sq(2))\n",
     "f.flow:2:6: error: fold needs a local function (a def marked @local, or len, min, max, mean, sorted); "
     "'twice' is not one\n    fold(twice, sq(1) | sq(2))\n         ^^^^^"),
    ("from tk import join\njoin\n",
     "f.flow:2:1: error: 'join' is a local function; call it on values: join(...)\n    join\n    ^^^^"),
    ("from tk import sq, twice\ntwice(sq(1), 2, 3)\n",
     "f.flow:2:1: error: bad arguments for task 'twice': too many positional arguments\n"
     "    twice(sq(1), 2, 3)\n    ^^^^^"),
    ("from tk import sq, join\njoin(sq(1))\n",
     "f.flow:2:1: error: bad arguments for local function 'join': missing a required argument: 'y'\n"
     "    join(sq(1))\n    ^^^^"),
    ("from tk import sq\nsum(sq(1), sq(2))\n",
     "f.flow:2:1: error: sum takes one list (sum(a | b)) or a generator (sum(f(i) for i in ...))\n"
     "    sum(sq(1), sq(2))\n    ^^^"),
    ("from tk import sq\nfold(sq(1) | sq(2))\n",
     "f.flow:2:1: error: fold takes a local function and an expression: fold(f, EXPR)\n"
     "    fold(sq(1) | sq(2))\n    ^^^^"),
    ("from tk import sq\nx = sq(1)\npar(x(i) for i in range(1))\n",
     "f.flow:3:5: error: 'x' names a sub-flow, not a task; it takes no arguments\n"
     "    par(x(i) for i in range(1))\n        ^\n    in the generator item where i = 0"),
]


@pytest.mark.parametrize("text,expected", GOLDEN, ids=[g[1].split("error: ")[1].split("\n")[0][:50] for g in GOLDEN])
def test_golden_errors(flowdir, text, expected):
    assert errors_of(flowdir, text) == expected


def test_error_in_one_item_names_the_item(flowdir):
    out = errors_of(flowdir, "from tk import boom\npar(boom(i) for i in range(5))\n")
    assert out.startswith("f.flow:2:5: error: task 'boom' raised KeyError: 3\n")
    assert "in the generator item where i = 3" in out and 'tk.py", line' in out
    assert out.count("error:") == 1


def test_an_error_repeated_by_every_item_is_reported_once(flowdir):
    out = errors_of(flowdir, "from tk import sq\npar(sqq(i) for i in range(50))\n")
    assert out.count("unknown name 'sqq'") == 1 and "(did you mean 'sq'?)" in out


def test_many_different_errors_at_one_place_are_capped(flowdir):
    flowdir("many.py", "def t(i):\n    raise ValueError(i)\n")
    out = errors_of(flowdir, "from many import t\npar(t(i) for i in range(10))\n")
    assert out.count("error: task 't' raised ValueError") == 3 and "... and 7 more errors here" in out


@pytest.mark.parametrize("iterable", ["range(99999999999999999999999)", "range(-2**63, 2**63)",
                                      "range(j, 99999999999999999999999)"])
def test_a_range_beyond_a_machine_word_is_too_long_not_a_crash(flowdir, iterable):
    """len(range(...)) raises OverflowError past sys.maxsize values: that is 'too many', worded."""
    iterable = iterable.replace("-2**63", str(-2**63)).replace("2**63", str(2**63))
    out = errors_of(flowdir, f"from tk import sq\npar(sq(i) for j in [1] for i in {iterable})\n")
    assert out.startswith("f.flow:2:33: error: range(") and "has more than 1000000 values" in out, out


def test_without_an_inventory_hosts_is_an_error(flowdir):
    flowdir("tk.py", TASKS)
    path = flowdir("f.flow", "from tk import hello\npar(hello for h in hosts(pair))\n")
    with pytest.raises(FlowError) as e:
        compile_file(str(path))
    assert "hosts() needs an inventory" in str(e.value)


# ------------------------------------------------------------------ running

def test_sum_over_a_range_runs_ten_jobs(flowdir):
    run = run_in(flowdir, "from tk import sq\nsum(sq(i) for i in range(1, 11))\n")
    assert run.result.ok and run.result.value == 385 and run.result.jobs_run == 10


def test_a_task_takes_another_tasks_value(flowdir):
    run = run_in(flowdir, "from tk import sq, twice\ntwice(sq(3))\n")
    assert run.result.ok and run.result.value == 18 and run.result.jobs_run == 2
    records = [json.loads(line) for line in (run.run_dir / "jobs.jsonl").read_text().splitlines()]
    assert [r["label"] for r in records] == ["sq(3)", "twice(9)"]
    assert records[1]["command"] == "echo $((2*9))"


def test_memoisation_includes_run_time_values(flowdir):
    # sq(3) and sq(-3) are both 9: twice(9) runs once
    run = run_in(flowdir, "from tk import sq, twice\ntwice(sq(3)) + twice(sq(-3)) + twice(sq(2))\n")
    assert run.result.ok and run.result.value == 18 + 18 + 8 and run.result.jobs_run == 5


def test_a_deferred_call_equal_to_a_planned_one_runs_once(flowdir):
    run = run_in(flowdir, "from tk import sq, twice\ntwice(9) ; twice(sq(3))\n")
    assert run.result.ok and run.result.value == 18 and run.result.jobs_run == 2


def test_deferred_calls_bind_to_the_signature_before_deduplicating(flowdir):
    # show(n, title="r"): show(4), show(n=4) and show(4, "r") are one invocation (issue 9 item 7),
    # written with run-time values as with literals
    run = run_in(flowdir, "from tk import sq, show\n"
                          "show(sq(2)) | show(n=sq(2)) | show(sq(2), \"r\") | show(sq(2), title=\"r\")\n")
    assert run.result.ok and run.result.value == ["r4"] * 4 and run.result.jobs_run == 2
    run = run_in(flowdir, "from tk import sq, show\nshow(n=4, title=\"r\") ; show(sq(2))\n")
    assert run.result.ok and run.result.value == "r4" and run.result.jobs_run == 2
    # 4 and 4.0 stay apart, as in the compiler
    run = run_in(flowdir, "from tk import sq, show\nshow(4.0) ; show(sq(2))\n")
    assert run.result.ok and run.result.jobs_run == 3


def test_values_of_lists_and_sub_flows_pass_in(flowdir):
    run = run_in(flowdir, "from tk import *\nx = a | b\nreport(x, title=\"n\") | report(par(sq(i) for i in range(4)))\n")
    assert run.result.ok and run.result.value == ["n:2", "r:4"]


def test_failed_argument_skips_the_call(flowdir):
    run = run_in(flowdir, "from tk import fail, twice, sq\ntwice(fail) | sq(2)\n")
    assert not run.result.ok and run.result.jobs_run == 2     # fail and sq(2); twice never ran
    assert [f.job.label for f in run.result.failures] == ["fail"]
    labels = [json.loads(line)["label"] for line in (run.run_dir / "jobs.jsonl").read_text().splitlines()]
    assert sorted(labels) == ["fail", "sq(2)"]


def test_def_raising_at_run_time_fails_the_job_with_its_frame(flowdir):
    run = run_in(flowdir, "from tk import picky, nonstr, sq\npicky(sq(3)) | nonstr(sq(1)) | picky(sq(2))\n")
    assert not run.result.ok
    reasons = {f.job.label: f.reason for f in run.result.failures}
    assert reasons["picky(9)"].startswith("task 'picky' raised ValueError: nine is not allowed")
    assert 'tk.py", line' in reasons["picky(9)"] and "in picky" in reasons["picky(9)"]
    assert reasons["nonstr(1)"] == "task 'nonstr' returned int, not a command string"
    # the failed builds never ran; independent work did
    labels = sorted(json.loads(line)["label"] for line in (run.run_dir / "jobs.jsonl").read_text().splitlines())
    assert labels == ["picky(4)", "sq(1)", "sq(2)", "sq(3)"]


def test_local_functions_and_builtins(flowdir):
    run = run_in(flowdir, """\
        from tk import sq, lst
        @local
        def spread(values):
            return max(values) - min(values)
        [mean(par(sq(i) for i in range(1, 4))), spread(sq(1) | sq(5)), len(lst), sorted(sq(3) | sq(1)), min(lst)]
        """.replace("[", "par(").replace("]\n", ")\n"))
    assert run.result.ok, run.result.failures
    assert run.result.value == [14 / 3, 24, 3, [1, 9], 1]


def test_sum_of_a_list_value_and_of_a_par(flowdir):
    run = run_in(flowdir, "from tk import lst, sq\nsum(lst) | sum(sq(1) | sq(2))\n")
    assert run.result.ok and run.result.value == [6, 5]


def test_empty_par_and_seq_values(flowdir):
    run = run_in(flowdir, "from tk import sq\npar(par(sq(i) for i in []), seq(sq(i) for i in []))\n")
    assert run.result.ok and run.result.value == [[], None]


def test_local_raising_fails_with_its_frame(flowdir):
    run = run_in(flowdir, "from tk import bad_local, lst\nbad_local(lst)\n")
    assert not run.result.ok
    reason = run.result.failures[0].reason
    assert reason.startswith("bad_local(<lst>) at ") and "raised TypeError" in reason
    assert "in bad_local" in reason and 'tk.py", line' in reason


def test_fold_is_in_source_order_whatever_the_finishing_order(flowdir, tmp_path):
    # each part waits for the file of the part after it: they finish d, c, b, a
    gate = tmp_path / "gate"
    gate.mkdir()
    flowdir("parts.py", textwrap.dedent(f'''
        def part(w, i, last):
            wait = "" if i == last else f"while [ ! -e {gate}/{{i + 1}} ]; do sleep 0.01; done; "
            return wait + f"touch {gate}/{{i}}; echo {{w}}"
        '''))
    run = run_in(flowdir, """\
        from tk import join
        from parts import part
        fold(join, par(part(w, i, 3) for i, w in [[0, "a"], [1, "b"], [2, "c"], [3, "d"]]))
        """)
    assert run.result.ok, run.result.failures
    # by construction each part's work ends after the next one's, so the values arrive d, c, b, a
    # (as cmflow sees exits, nearly always), and the fold is still the left-to-right one
    assert run.result.value == "abcd"
    assert sorted(p.name for p in gate.iterdir()) == ["0", "1", "2", "3"]


def test_fold_step_that_raises_fails_the_fold(flowdir):
    # two operands: one step, whatever finishes first (div is not associative, so with three the
    # eager fold could combine 4 and 9 first and never divide by zero)
    run = run_in(flowdir, """\
        from tk import sq
        @local
        def div(x, y):
            return x / (y - 4)
        fold(div, sq(1) | sq(2))
        """)
    assert not run.result.ok
    assert "div(1, 4) in fold at" in run.result.failures[0].reason
    assert "ZeroDivisionError" in run.result.failures[0].reason



@pytest.mark.parametrize("call, raised", [
    ("quits(sq(1))", "task 'quits' raised SystemExit: 0"),            # a def building a command at run time
    ("closes(sq(1))", "raised GeneratorExit"),                         # a @local function
    ("interrupts(sq(1))", "raised KeyboardInterrupt"),
    ("fold(base, sq(1) | sq(2))", "in fold at"),                       # a fold step
    ("quitter", "cannot read its value (parse): SystemExit"),           # a parse= callable
    ("bare", "cannot read its value (parse): BaseException: no"),
])
def test_user_code_raising_any_base_exception_at_run_time_is_its_error(flowdir, tmp_path, call, raised):
    """Issue 8.8 at run time: a def that raises SystemExit, GeneratorExit or a bare BaseException
    (or KeyboardInterrupt: Ctrl-C reaches a run as a signal, never from a def) fails what needs it.
    It made cmflow exit 0 silently, 130, or print a traceback."""
    flowdir("tk.py", TASKS + textwrap.dedent('''
        import sys

        def quits(x):
            sys.exit(0)

        @local
        def closes(x):
            raise GeneratorExit()

        @local
        def interrupts(x):
            raise KeyboardInterrupt()

        @local
        def base(x, y):
            raise BaseException("no")

        def _exit(text):
            raise SystemExit(0)

        def _base(text):
            raise BaseException("no")

        @task(parse=_exit)
        def quitter():
            return "echo 1"

        @task(parse=_base)
        def bare():
            return "echo 1"
        '''))
    flow = flowdir("f.flow", f"from tk import *\n{call} | sq(3)\n")
    r = cmflow("run", str(flow), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert raised in r.stderr and "Traceback (most recent call last)" not in r.stderr
    assert "ok #" in r.stderr     # independent work carried on (sq(3))

# ---------------------------------------------------------- CLI, eval, repl

def test_cli_run_eval_and_plan(flowdir, tmp_path):
    flowdir("tk.py", TASKS)
    flow = flowdir("f.flow", "from tk import sq\nsum(sq(i) for i in range(1, 11))\n")
    r = cmflow("run", str(flow), "-q", "--run-dir", str(tmp_path / "r1"), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "385\n", r.stderr
    r = cmflow("eval", "twice(sq(3))", "--tasks", str(flowdir.path / "tk.py"), "-q", "--run-dir",
               str(tmp_path / "r2"), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "18\n", r.stderr
    flowdir("g.flow", "from tk import sq, twice\ntwice(sq(3))\n")
    r = cmflow("plan", str(flowdir.path / "g.flow"), cwd=tmp_path)
    assert r.returncode == 0 and "twice(<sq(3)>)  (deferred" in r.stdout
    r = cmflow("check", str(flowdir.path / "g.flow"), cwd=tmp_path)
    assert r.returncode == 0 and "1 job + 1 deferred" in r.stdout
    bad = flowdir("bad.flow", "from tk import sq\nsum(sq(i) for i in range(0))\n")
    r = cmflow("check", str(bad), cwd=tmp_path)
    assert r.returncode == 2 and "sum over nothing" in r.stderr and "Traceback" not in r.stderr


def test_repl_plan_shows_the_expansion(flowdir, tmp_path):
    flowdir("tk.py", TASKS)
    s = Session(local_inv(), task_dirs=[str(flowdir.path)], run_root=tmp_path / "runs")
    s.handle("from tk import sq, twice\n")
    out = s.handle(":plan par(sq(i) for i in range(3))")
    assert "3 jobs" in out and "sq(0)" in out and "sq(2)" in out
    assert s.handle("twice(sq(3))\n") == "18"


def test_repl_reads_on_after_an_open_bracket_or_operator_as_a_flow_file_does(flowdir, tmp_path):
    """A generator pasted from a flow over several lines is one input, not an error per line."""
    flowdir("tk.py", TASKS)
    script = ("sum(sq(i)\n    for i in range(1, 11))\nsq(2) |\n  sq(3)\n:plan par(sq(i)\n  for i in range(2))\n"
              "sq(\n\nsq(4)\n")
    r = cmflow("repl", "--tasks", str(flowdir.path / "tk.py"), cwd=tmp_path, input=script)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[:3] == ["385", "[4, 9]", "<repl>: 2 jobs"], r.stdout
    # a blank line ends an unfinished input: its error, then the session goes on
    assert "<repl>:1:4: error: unexpected end of input" in r.stdout and out[-1] == "16"


# ------------------------------------------------------------ over real ssh

def test_broadcast_runs_once_on_every_host_of_a_group_over_ssh(sshd_hosts, flowdir):
    inv = parse_inventory(textwrap.dedent(f"""\
        ssh_config: {sshd_hosts.ssh_config}
        defaults: {{slots: 2}}
        hosts:
          h1: {{env: {{WHO: one}}}}
          h2: {{env: {{WHO: two}}}}
          h3: {{env: {{WHO: three}}}}
        groups:
          workers: [h3, h1]
        """), str(flowdir.path / "inv.yaml"))
    flowdir("bc.py", 'def setup():\n    return "echo $WHO"\n\ndef work(i):\n    return f"echo {i}"\n')
    flowdir("f.flow", "from bc import setup, work\npar(setup @ h for h in hosts(workers)); "
                      "sum(work(i) @ workers for i in range(4))\n")
    plan, _ = api.load(str(flowdir.path / "f.flow"), inv=inv)
    assert [j.label for j in plan.jobs][:2] == ["setup @ h3", "setup @ h1"]
    run = api.run_sync(plan, inv, RunOptions(), flowdir.path / "run")
    assert run.result.ok, run.result.failures
    assert run.result.value == 6
    rows = [json.loads(line) for line in (run.run_dir / "jobs.jsonl").read_text().splitlines()]
    setups = sorted((r["host"], r["value"]) for r in rows if r["task"] == "setup")
    assert setups == [("h1", "one"), ("h3", "three")]
    assert {r["host"] for r in rows if r["task"] == "work"} <= {"h1", "h3"}


# ------------------------------------------------------------------ examples

@pytest.mark.parametrize("name,check", [
    ("sweep", lambda v: v == 9590),
    ("broadcast", lambda v: v == sum(sum(range(i, 101, i)) for i in range(1, 9))),
    ("pi_mean", lambda v: abs(v - 3.1416) < 0.01),
    ("report", lambda v: v.startswith("8 parts, hits per part ")),
])
def test_example_flows_run(name, check, tmp_path):
    from conftest import ROOT

    inv = local_inv(slots=4)
    plan, _ = api.load(str(ROOT / "flows" / f"{name}.flow"), inv=inv)
    run = api.run_sync(plan, inv, RunOptions(), tmp_path / "run")
    assert run.result.ok, run.result.failures
    assert check(run.result.value), run.result.value


def test_files_values_pass_into_a_deferred_task(flowdir):
    flowdir("ft.py", textwrap.dedent('''
        from cmflow import command

        def part(i):
            return command(f"echo {i} > out{i}.txt", outputs=[f"out{i}.txt"])

        def merge(files):
            return f"cat {' '.join(files)}"
        '''))
    run = run_in(flowdir, "from ft import part, merge\nmerge(sum(part(i) for i in range(1, 4)))\n")
    assert run.result.ok, run.result.failures
    assert run.result.value.split() == ["1", "2", "3"]
