"""Parser: precedence and shapes, positions, round trips, and fuzzing."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmflow import ast as A
from cmflow.errors import FlowError
from cmflow.parser import parse, parse_expr


def n(x: str) -> A.Name:
    return A.Name(tuple(x.split(".")))


a, b, c, d = n("a"), n("b"), n("c"), n("d")

SHAPES = [
    ("a", a),
    ("(a | b | c); d; a + b + c + d", A.Seq((A.Par((a, b, c)), d, A.Sum((a, b, c, d))))),
    ("a | b + c", A.Par((a, A.Sum((b, c))))),
    ("a + b | c", A.Par((A.Sum((a, b)), c))),
    ("a ; b | c", A.Seq((a, A.Par((b, c))))),
    ("(a | b) | c", A.Par((a, b, c))),
    ("a | (b | c)", A.Par((a, b, c))),
    ("(a ; b) ; c", A.Seq((a, b, c))),
    ("(a + b) + c", A.Sum((a, b, c))),
    ("(a ; b) | c", A.Par((A.Seq((a, b)), c))),
    ("a + (b | c)", A.Sum((a, A.Par((b, c))))),
    ("a @ h1 + b", A.Sum((A.Placed(a, "h1"), b))),
    ("(a | b) @ gpu", A.Placed(A.Par((a, b)), "gpu")),
    ("a @ node[01-04] | b @ \"x y\"", A.Par((A.Placed(a, "node[01-04]"), A.Placed(b, "x y")))),
    ("t.a + t.b", A.Sum((n("t.a"), n("t.b")))),
    ("f(1, 2.5, 'x', True, None, [1, [2]], k=-3)",
     A.Call(n("f"), (1, 2.5, "x", True, None, (1, (2,))), (("k", -3),))),
    ("f()", A.Call(n("f"))),
    ("f([])", A.Call(n("f"), ((),))),
    ("(((a)))", a),
    ("a |\n b", A.Par((a, b))),
    ("(a\n | b\n)", A.Par((a, b))),
    ("f(1,\n  2)", A.Call(n("f"), (1, 2))),
    ("a + # comment\n b", A.Sum((a, b))),
    ("par(run(n) for n in range(8))",
     A.Gen(n("par"), A.Call(n("run"), (n("n"),)), (A.For(("n",), A.Call(n("range"), (8,))),))),
    ("sum(f(i, s) for i in range(1, 5) for s in ['x', 'y'])",
     A.Gen(n("sum"), A.Call(n("f"), (n("i"), n("s"))),
           (A.For(("i",), A.Call(n("range"), (1, 5))), A.For(("s",), ("x", "y"))))),
    ("par(setup @ h for h in hosts(node[01-04]))",
     A.Gen(n("par"), A.Placed(n("setup"), "h"), (A.For(("h",), A.HostsOf("node[01-04]")),))),
    ("seq(a for x, y in [[1, 'x']])", A.Gen(n("seq"), a, (A.For(("x", "y"), ((1, "x"),)),))),
    ("report(a | b)", A.Call(n("report"), (A.Par((a, b)),))),
    ("plot(fit(x), bins=20)", A.Call(n("plot"), (A.Call(n("fit"), (n("x"),)),), (("bins", 20),))),
    ("twice(sq(3))", A.Call(n("twice"), (A.Call(n("sq"), (3,)),))),
    ("fold(f, a | b)", A.Call(n("fold"), (n("f"), A.Par((a, b))))),
    ("hosts + b", A.Sum((n("hosts"), b))),
]


@pytest.mark.parametrize("text,tree", SHAPES, ids=[s[0] for s in SHAPES])
def test_shape(text, tree):
    assert parse_expr(text) == tree


def test_statements_and_positions():
    flow = parse("import tasks\nimport tasks as t\nfrom m import a, b as c\nfrom m import *\n"
                 "x = a | b\n\n# note\nx; c\n", "f.flow")
    s = flow.statements
    assert s[0] == A.Import("tasks") and s[1] == A.Import("tasks", "t")
    assert s[2] == A.FromImport("m", (("a", None), ("b", "c"))) and s[3] == A.FromImport("m", None)
    assert s[4] == A.Bind("x", A.Par((a, b)))
    assert s[5] == A.ExprStmt(A.Seq((n("x"), c)))
    assert (s[5].pos.line, s[5].pos.column) == (8, 1)
    assert (s[4].expr.items[1].pos.line, s[4].expr.items[1].pos.column) == (5, 9)


def test_inline_def_is_captured_with_decorators():
    text = "@task(parse='lines')\ndef e(n):\n    # body\n\n    return f'seq {n}'\n\ne(3)\n"
    flow = parse(text)
    d = flow.statements[0]
    assert isinstance(d, A.Def) and d.name == "e" and d.pos.line == 1
    assert d.source.startswith("@task(parse='lines')\ndef e(n):") and d.source.endswith("return f'seq {n}'")
    assert flow.statements[1] == A.ExprStmt(A.Call(n("e"), (3,)))


@pytest.mark.parametrize("text,where,message", [
    ("a b", "1:3", "unexpected 'b'"),
    ("a |", "1:4", "unexpected end of input"),
    ("(a | b", "1:7", "expected ')'"),
    ("a @", "1:4", "unexpected end of input"),
    ("f(x=1, 2)", "1:1", "positional argument after keyword argument"),
    ("a $ b", "1:3", "unexpected character '$'"),
    ("par(1 for i in range(3))", "1:7", "unexpected 'for'"),
    ("par(a for i range(3))", "1:13", "expected"),
    ("par(a for i in hosts())", "1:22", "unexpected ')'"),
    ("f(a, b for i in [1])", "1:8", "unexpected 'for'"),
    ("f('abc)", "1:3", "unterminated string"),
])
def test_syntax_errors_are_positioned(text, where, message):
    with pytest.raises(FlowError) as e:
        parse(text, "x.flow")
    out = str(e.value)
    assert out.startswith(f"x.flow:{where}: error: ") and message in out
    line, col = map(int, where.split(":"))
    caret_line = out.splitlines()[2]
    assert caret_line.index("^") - 4 == col - 1


# ------------------------------------------------------------ property tests
names = st.sampled_from(["a", "b", "c", "t.x", "run_1"])
literals = st.recursive(
    st.one_of(st.integers(-10**6, 10**6), st.integers(), st.floats(allow_nan=False),
              st.text(st.characters(blacklist_characters="\0"), max_size=8), st.booleans(), st.none()),
    lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)
calls = st.builds(lambda nm, args, kw: A.Call(A.Name(tuple(nm.split("."))), tuple(args), tuple(kw.items())),
                  names, st.lists(literals, max_size=3),
                  st.dictionaries(st.sampled_from(["k", "size", "n"]), literals, max_size=2))
leaves = st.one_of(names.map(lambda x: A.Name(tuple(x.split(".")))), calls)
targets = st.sampled_from(["h1", "gpu", "node[01-04]", "web-1", "a b", "x.y"])


loop_names = st.sampled_from(["i", "n", "h", "x_1"])
iterables = st.one_of(
    st.builds(lambda args: A.Call(A.Name(("range",)), tuple(args)),
              st.lists(st.one_of(st.integers(-5, 20), loop_names.map(lambda x: A.Name((x,)))), min_size=1, max_size=3)),
    st.builds(A.HostsOf, targets),
    st.lists(literals, max_size=3).map(tuple),
    names.map(lambda x: A.Name(tuple(x.split(".")))),
)
clauses = st.builds(A.For, st.lists(loop_names, min_size=1, max_size=2).map(tuple), iterables)


def _v2(inner):
    """v2 forms: calls with expression arguments, generators."""
    args = st.one_of(st.integers(-5, 5), st.text(st.characters(blacklist_characters="\0"), max_size=3), inner)
    return st.one_of(
        st.builds(lambda nm, a, kw: A.Call(A.Name(tuple(nm.split("."))), tuple(a), tuple(kw.items())),
                  names, st.lists(args, max_size=3), st.dictionaries(st.sampled_from(["k", "n"]), args, max_size=2)),
        st.builds(lambda nm, item, cl: A.Gen(A.Name((nm,)), item, tuple(cl)),
                  st.sampled_from(["par", "sum", "seq", "mean"]), inner, st.lists(clauses, min_size=1, max_size=2)),
    )


def _exprs():
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, min_size=2, max_size=4).map(A.seq),
            st.lists(inner, min_size=2, max_size=4).map(A.par),
            st.lists(inner, min_size=2, max_size=4).map(A.plus),
            st.builds(A.Placed, inner, targets),
            _v2(inner),
        ), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_exprs())
def test_unparse_parse_round_trip(tree):
    text = A.unparse(tree)
    assert parse_expr(text) == tree, text


@pytest.mark.parametrize("text", ["f(1e400, -1e400, k=[1e999])", "f(-0.0, 5e-324, 1.7976931348623157e308)",
                                  "f(123456789012345678901234567890)"])
def test_round_trip_of_extreme_numbers(text):
    """1e400 reads as infinity (as in Python); unparse must write something that reads back as it."""
    tree = parse_expr(text)
    again = parse_expr(A.unparse(tree))
    assert again == tree and repr(again) == repr(tree)


@settings(max_examples=100, deadline=None)
@given(st.lists(_exprs(), min_size=1, max_size=3))
def test_flow_round_trip(exprs):
    flow = A.Flow((A.Import("tasks", "t"), A.FromImport("m", (("a", "b"),)),
                   A.Bind("x", exprs[0]), *(A.ExprStmt(e) for e in exprs)))
    assert parse(A.unparse(flow)) == flow


ALPHABET = "ab()|;+@=,.[]'\"\n #:01xyz_-\t\\*"
V2_WORDS = st.sampled_from(["for ", " in ", "hosts(", "range(", "par(", "sum(", "f(", "n", ")", ",", "[", "]",
                            " ", "\n", "1", "'x'", "@ h", "|", "=", "a"])


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_fuzz_only_positioned_errors(text):
    try:
        parse(text, "fuzz.flow")
    except FlowError as e:
        assert str(e).startswith("fuzz.flow:")
        assert all(d.line >= 1 and d.column >= 1 for d in e.diagnostics)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_fuzz_any_unicode(text):
    try:
        parse(text, "fuzz.flow")
    except FlowError as e:
        assert str(e).startswith("fuzz.flow:")


# ----------------------------------------- the fast path agrees with Lark
def positions(node) -> list:
    """Every node's type and (line, column), in order: positions take no part in ==."""
    from dataclasses import fields, is_dataclass

    out = []

    def walk(n):
        if isinstance(n, tuple):
            for x in n:
                walk(x)
        elif is_dataclass(n) and not isinstance(n, A.Pos):
            pos = getattr(n, "pos", None)
            out.append((type(n).__name__, (pos.line, pos.column) if pos else None))
            for f in fields(n):
                if f.name != "pos":
                    walk(getattr(n, f.name))

    walk(node)
    return out


def same_as_reference(text: str) -> None:
    from cmflow.fastparse import Fallback, fast_parse
    from cmflow.parser import parse_reference

    text = text if text.endswith("\n") else text + "\n"
    try:
        fast = fast_parse(text, "t.flow")
    except Fallback:
        return  # the reference parser handles it: nothing to compare
    ref = parse_reference(text, "t.flow")
    assert fast == ref, text
    assert positions(fast) == positions(ref), text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_exprs(), min_size=1, max_size=3), st.sampled_from(["", "\n", "  # c\n", "\n\n"]))
def test_fast_path_matches_reference_on_generated_flows(exprs, gap):
    from cmflow.fastparse import fast_parse

    flow = A.Flow((A.Import("tasks", "t"), A.FromImport("m", (("a", "b"),)), A.FromImport("n", None),
                   A.Def("e", "@task(parse='lines')\ndef e(n):\n    return f'echo {n}'"),
                   A.Bind("x", exprs[0]), *(A.ExprStmt(e) for e in exprs)))
    text = gap.join(A.unparse(A.Flow((stmt,))) for stmt in flow.statements)
    fast_parse(text, "t.flow")   # well-formed flows must not fall back
    same_as_reference(text)


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet=ALPHABET + "def@TrueNonas-", max_size=60))
def test_fast_path_matches_reference_on_random_text(text):
    same_as_reference(text)


@settings(max_examples=1500, deadline=None)
@given(st.lists(V2_WORDS, max_size=25).map("".join))
def test_fast_path_matches_reference_on_v2_fragments(text):
    same_as_reference(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(V2_WORDS, max_size=25).map("".join))
def test_v2_fragments_only_positioned_errors(text):
    try:
        parse(text, "fuzz.flow")
    except FlowError as e:
        assert str(e).startswith("fuzz.flow:")
        assert all(d.line >= 1 and d.column >= 1 for d in e.diagnostics)


DEF_LINES = st.sampled_from(["@x", "  @y", "@task(parse='lines')", "def f():", "def g(n):", "    return 'echo 1'",
                             "", "a", "# c", "  ", "\tdef h(): pass", "(a", "@ h)", "a @ h", "@", "  def k():", "g(1)"])


@settings(max_examples=1000, deadline=None)
@given(st.lists(DEF_LINES, min_size=1, max_size=12).map("\n".join))
def test_fast_path_matches_reference_on_decorators_and_defs(text):
    """Decorator lines with and without their def (the fast path takes a run of them whole)."""
    same_as_reference(text)


def test_fast_path_positions_examples():
    for text in ["(a | b) @ h; c\n", "import t\nx = (a;\n b) + t.c(1, [2], k='v')\n",
                 "a |\n  b @\n  h1 + c\n", "from m import *\n\n\n# x\nf(-1, +2.5e3)\n",
                 "par(run(n) for n in range(8))\n", "x = sum(\n  f(i, j)\n  for i in range(3)\n  for j in [1, 2])\n",
                 "par(setup @ h for h in hosts(node[01-04])) ; report(a | b, k=(c))\n",
                 "fold(f, par(g(x) for x, y in [[1, 'a']]))\n", "twice(sq(3))\n"]:
        same_as_reference(text)
