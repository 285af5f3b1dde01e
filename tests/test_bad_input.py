"""Every user mistake is cmflow's own error (exit 2), never a traceback; tiny inputs stay cheap.

Issue 8 items 7 and 8: bad string escapes, deep nesting, alias bombs, huge
node ranges, non-UTF-8 and wrong-typed config files, defs that raise anything.
"""
from __future__ import annotations

import pytest

from cmflow.errors import FlowError
from cmflow.parser import parse, parse_reference


@pytest.mark.parametrize("text,col,message", [
    ('a("\\x0")', 4, "truncated \\x escape"),
    ('a("\\N{nope}")', 4, "unknown Unicode character name 'nope'"),
    ('a("ab\0")', 6, "may not contain a NUL"),
    ('a("\\0")', 4, "may not contain a NUL"),
    ('a("\\ud800")', 4, "lone surrogate"),
    ('a("\\U00110000")', 4, "beyond the last Unicode character"),
    ('a @ "\\x1"', 6, "truncated \\x escape"),
    ("a(k='\\u12')", 6, "truncated \\u escape"),
])
def test_bad_string_escapes_are_positioned_errors(text, col, message):
    for parser in (parse, parse_reference):
        with pytest.raises(FlowError) as e:
            parser(text + "\n", "f.flow")
        d = e.value.diagnostics[0]
        assert (d.line, d.column) == (1, col) and message in d.message, (parser, str(e.value))


def test_good_escapes_decode_as_in_python():
    flow = parse('a("\\x41\\u00e9\\N{BULLET}\\n\\d\\101\\\'")\n')
    assert flow.statements[0].expr.args == ("Aé•\n\\dA'",)


@pytest.mark.parametrize("text", [
    "a(" + "[" * 5000 + "]" * 5000 + ")",
    "(" * 5000 + "a" + ")" * 5000,
    "(a;" * 3000 + "a" + ")" * 3000,
    "(" * 60 + "a(" + "[" * 60 + "]" * 60 + ")" + ")" * 60,
])
def test_deep_nesting_is_an_error_not_a_recursion_error(text):
    with pytest.raises(FlowError) as e:
        parse(text + "\n", "f.flow")
    assert "nested too deeply (the limit is 100)" in str(e.value)
    assert len(str(e.value)) < 400      # the line is shown as a window around the caret


def test_nesting_up_to_the_limit_parses():
    from cmflow.fastparse import fast_parse

    text = "(" * 49 + "a(" + "[" * 50 + "]" * 50 + ")" + ")" * 49 + "\n"
    assert fast_parse(text, "f") == parse_reference(text)
    parse_reference("(" * 99 + "a" + ")" * 99 + "\n")


def test_cli_bad_escape_exits_2(cli, flowdir):
    flowdir("t.py", "def a(x=0):\n    return f'echo {x}'\n")
    f = flowdir("f.flow", 'from t import a\na("\\x0")\n')
    r = cli("check", str(f))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "f.flow:2:4: error: bad string" in r.stderr


def test_nested_calls_fast_path_stays_within_the_limit():
    from cmflow.fastparse import Fallback, fast_parse

    for depth in (10, 48, 60, 99):
        text = "f(" * depth + "a" + ")" * depth + "\n"
        try:
            fast = fast_parse(text, "f")
        except Fallback:
            fast = None
        ref = parse_reference(text)
        assert fast is None or fast == ref
    with pytest.raises(FlowError) as e:
        parse("f(" * 101 + "a" + ")" * 101 + "\n", "f.flow")
    assert "nested too deeply" in str(e.value)
