"""The reference parser: Lark's LALR parser over grammar.lark, one transformer, worded errors.

This is the definition of the language. ``parser.parse`` tries the fast path
(fastparse.py) first and comes here for anything it does not accept, which
includes every text with a syntax error. Imported only then: Lark costs
start-up time a well-formed flow does not need to pay.
"""
from __future__ import annotations

import functools
from importlib.resources import files
from typing import Iterator

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast
from .errors import Diagnostic, FlowError, source_lines
from .parser_common import MAX_NESTING, BadString, decode_string, def_name

# After these tokens a newline continues the statement (a binary operator or a
# separator inside an argument list is waiting for its right-hand side).
_CONTINUES = {"SEMICOLON", "VBAR", "PLUS", "AT", "COMMA", "EQUAL", "LPAR", "LSQB"}
_OPEN = {"LPAR", "LSQB"}
_CLOSE = {"RPAR", "RSQB"}

_TOKEN_NAMES = {
    "SEMICOLON": "';'", "VBAR": "'|'", "PLUS": "'+'", "AT": "'@'", "LPAR": "'('", "RPAR": "')'",
    "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "EQUAL": "'='", "DOT": "'.'", "_NL": "end of line",
    "NAME": "a name", "STRING": "a string", "SIGNED_NUMBER": "a number", "TARGET": "a host name",
    "DEF_BLOCK": "a def", "STAR": "'*'", "$END": "end of input", "IMPORT": "'import'", "FROM": "'from'",
    "AS": "'as'", "TRUE": "True", "FALSE": "False", "NONE": "None", "FOR": "'for'", "IN": "'in'",
    "HOSTS": "'hosts'",
}


class _TooDeep(Exception):
    def __init__(self, tok: Token):
        self.tok = tok


class _BadLiteral(Exception):
    """A string token that does not decode, with the token (for its position)."""

    def __init__(self, tok: Token, error: BadString):
        self.tok, self.error = tok, error


def _decode(tok: Token) -> str:
    try:
        return decode_string(str(tok))
    except BadString as e:
        raise _BadLiteral(tok, e) from None


class _Postlex:
    """Drops newlines inside brackets and after a binary operator; bounds nesting."""

    always_accept: tuple[str, ...] = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        prev: str | None = None
        for tok in stream:
            if tok.type == "_NL":
                if depth > 0 or prev in _CONTINUES or prev is None:
                    continue
            elif tok.type in _OPEN:
                depth += 1
                if depth > MAX_NESTING:
                    raise _TooDeep(tok)
            elif tok.type in _CLOSE:
                depth = max(depth - 1, 0)
            prev = tok.type
            yield tok


def _pos(meta_or_tok) -> ast.Pos:
    return ast.Pos(meta_or_tok.line, meta_or_tok.column)


@v_args(meta=True)
class _ToAst(Transformer):
    """The one transformer from Lark's tree to cmflow's AST."""

    def start(self, meta, stmts):
        return tuple(stmts)

    def dotted(self, meta, names):
        return ast.Name(tuple(str(n) for n in names), _pos(meta))

    def import_stmt(self, meta, children):
        alias = str(children[1]) if len(children) > 1 and children[1] is not None else None
        return ast.Import(children[0].dotted, alias, _pos(meta))

    def import_name(self, meta, children):
        return (str(children[0]), str(children[1]) if len(children) > 1 and children[1] is not None else None)

    def from_stmt(self, meta, children):
        module = children[0].dotted
        if isinstance(children[1], Token) and children[1].type == "STAR":
            return ast.FromImport(module, None, _pos(meta))
        return ast.FromImport(module, tuple(children[1:]), _pos(meta))

    def def_stmt(self, meta, children):
        tok: Token = children[0]
        source = str(tok).rstrip()
        name = def_name(source)
        return ast.Def(name, source, _pos(tok))

    def bind_stmt(self, meta, children):
        return ast.Bind(str(children[0]), children[1], _pos(meta))

    def expr_stmt(self, meta, children):
        return ast.ExprStmt(children[0], _pos(meta))

    def seq(self, meta, items):
        return ast.seq(items, _pos(meta))

    def par(self, meta, items):
        return ast.par(items, _pos(meta))

    def sum(self, meta, items):
        return ast.plus(items, _pos(meta))

    def placed(self, meta, children):
        return ast.Placed(children[0], children[1], _pos(meta))

    def target(self, meta, children):
        tok = children[0]
        return _decode(tok) if tok.type == "STRING" else str(tok)

    def ref(self, meta, children):
        return children[0]

    def call(self, meta, children):
        name, arguments = children[0], children[1] if len(children) > 1 else None
        args: list = []
        kwargs: list = []
        for arg in arguments or ():
            if isinstance(arg, _Kw):
                kwargs.append((arg.key, arg.value))
            else:
                if kwargs:
                    raise _PositionalAfterKeyword(meta)
                args.append(arg)
        return ast.Call(name, tuple(args), tuple(kwargs), _pos(meta))

    def gen(self, meta, children):
        return ast.Gen(children[0], children[1], tuple(children[2:]), _pos(meta))

    def comp_for(self, meta, children):
        return ast.For(tuple(str(n) for n in children[:-1]), children[-1], _pos(meta))

    def hosts_of(self, meta, children):
        return ast.HostsOf(children[0], _pos(meta))

    def arguments(self, meta, children):
        return children

    def kwarg(self, meta, children):
        return _Kw(str(children[0]), children[1])

    def number(self, meta, children):
        text = str(children[0])
        try:
            return int(text)
        except ValueError:
            return float(text)

    def string(self, meta, children):
        return _decode(children[0])

    def true(self, meta, _):
        return True

    def false(self, meta, _):
        return False

    def none(self, meta, _):
        return None

    def list(self, meta, children):
        return tuple(children)

    def empty_list(self, meta, _):
        return ()


class _Kw:
    __slots__ = ("key", "value")

    def __init__(self, key: str, value: object):
        self.key, self.value = key, value


class _PositionalAfterKeyword(Exception):
    def __init__(self, meta):
        self.meta = meta


@functools.cache
def _parser() -> Lark:
    # Built once per process; cached like a compiled regex (read-only afterwards).
    grammar = files("cmflow").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="contextual", postlex=_Postlex(),
                propagate_positions=True, maybe_placeholders=True, cache=False)


def parse(text: str, filename: str = "<flow>") -> ast.Flow:
    """The Lark parser over grammar.lark: the definition of the language."""
    if not text.endswith("\n"):
        text += "\n"
    lines = source_lines(text)
    try:
        tree = _parser().parse(text)
        stmts = _ToAst().transform(tree)
    except UnexpectedInput as e:
        raise FlowError([_syntax_diag(e, text, lines, filename)]) from None
    except _TooDeep as e:
        raise FlowError([Diagnostic(filename, e.tok.line, e.tok.column,
                                    f"brackets nested too deeply (the limit is {MAX_NESTING})",
                                    _line(lines, e.tok.line))]) from None
    except VisitError as e:
        orig = e.orig_exc
        if isinstance(orig, _PositionalAfterKeyword):
            m = orig.meta
            raise FlowError([Diagnostic(filename, m.line, m.column, "positional argument after keyword argument",
                                        _line(lines, m.line))]) from None
        if isinstance(orig, _BadLiteral):
            t, err = orig.tok, orig.error
            raise FlowError([Diagnostic(filename, t.line, t.column + err.offset, f"bad string: {err.message}",
                                        _line(lines, t.line), err.width)]) from None
        raise
    return ast.Flow(stmts, filename)


def _line(lines: list[str], n: int) -> str:
    return lines[n - 1] if 0 < n <= len(lines) else ""


def _syntax_diag(e: UnexpectedInput, text: str, lines: list[str], filename: str) -> Diagnostic:
    line, col = getattr(e, "line", 0) or 0, getattr(e, "column", 0) or 0
    if isinstance(e, UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            line, col = len(lines), len(_line(lines, len(lines))) + 1
            what = "end of input"
        elif tok.type == "_NL":
            what = "end of line"
            # point just past the last character of the line the newline ends
            col = len(_line(lines, line).rstrip()) + 1
        else:
            what = f"{tok!s}" if len(str(tok)) < 30 else _TOKEN_NAMES.get(tok.type, tok.type)
            what = repr(what) if tok.type not in _TOKEN_NAMES or tok.type in {"NAME", "SIGNED_NUMBER", "STRING", "TARGET"} else _TOKEN_NAMES[tok.type]
        expected = sorted({_TOKEN_NAMES.get(x, x) for x in e.expected if not x.startswith("__")})
        msg = f"unexpected {what}"
        if expected and len(expected) <= 6:
            msg += f"; expected {', '.join(expected)}"
        width = max(1, len(str(tok))) if tok.type not in {"_NL", "$END"} else 1
        return Diagnostic(filename, line, col, msg, _line(lines, line), width)
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        msg = f"unexpected character {ch!r}"
        if ch in "\"'":
            msg = "unterminated string"
        return Diagnostic(filename, line, col, msg, _line(lines, line))
    if isinstance(e, UnexpectedEOF):
        return Diagnostic(filename, len(lines), len(_line(lines, len(lines))) + 1, "unexpected end of input",
                          _line(lines, len(lines)))
    return Diagnostic(filename, line, col, "syntax error", _line(lines, line))
