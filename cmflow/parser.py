"""Text to AST: a fast path for well-formed flows, Lark's parser (the reference) for the rest.

``parse`` is what everything else calls. fastparse.py reads well-formed flows
quickly and gives up on anything else; lark_parser.py, the LALR parser over
grammar.lark, then parses the text and words any syntax error with its
position. The tests check that the two agree.
"""
from __future__ import annotations

from . import ast
from ._gc import paused
from .errors import Diagnostic, FlowError, source_lines
from .fastparse import Fallback, fast_parse


def parse(text: str, filename: str = "<flow>") -> ast.Flow:
    """Parse flow text; raise FlowError with a positioned message on bad syntax.

    The hand-written fast path reads well-formed flows; anything it does not
    accept goes to the Lark parser (the reference), which also words every
    syntax error.
    """
    if not text.endswith("\n"):
        text += "\n"
    with paused():
        try:
            return fast_parse(text, filename)
        except Fallback:
            pass
    return parse_reference(text, filename)


def parse_reference(text: str, filename: str = "<flow>") -> ast.Flow:
    """Parse with the Lark reference parser only (used by the tests to check the fast path)."""
    from . import lark_parser

    return lark_parser.parse(text, filename)


def parse_expr(text: str, filename: str = "<expr>") -> ast.Expr:
    """Parse a single expression (for ``cmflow eval`` and the REPL)."""
    flow = parse(text, filename)
    exprs = [s for s in flow.statements if isinstance(s, ast.ExprStmt)]
    if len(exprs) != len(flow.statements) or not exprs:
        raise FlowError([Diagnostic(filename, 1, 1, "expected one expression", _line(source_lines(text), 1))])
    return ast.seq([e.expr for e in exprs])


def _line(lines: list[str], n: int) -> str:
    return lines[n - 1] if 0 < n <= len(lines) else ""
