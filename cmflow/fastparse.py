"""A fast path for the grammar in grammar.lark: same language, same AST, same positions.

Lark's LALR parser costs ~15 µs per token in CPython; a flow with 100 000
task references has ~500 000 tokens. This hand-written recursive-descent
parser reads the same language in a fraction of that. It never reports an
error itself: on anything it does not accept it gives up (``Fallback``) and
the Lark parser, the reference, parses the text and reports the error. The
tests check that both parsers give the same tree, positions included, on
generated flows and on random text.
"""
from __future__ import annotations

import ast as pyast
import re

from . import ast

_S = r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'"""
_N = r"[A-Za-z_][A-Za-z0-9_]*"
# Leading blanks are part of every token match (one regex call per token),
# and a whole one-line call ``run(3, size="big")`` is one token: most of a
# big flow is calls, and their argument texts repeat.
_TOKEN = re.compile(rf"""[ \t]*(?:
   (?P<nl>(?:\#[^\n]*)?(?:\r?\n[ \t]*(?:\#[^\n]*)?)+)
  |(?P<call>{_N}(?:\.{_N})*\((?:[^()"'\n\\]|{_S})*\))
  |(?P<ref>{_N}(?:\.{_N})*)
  |(?P<at>@[ \t]*(?:{_S}|[A-Za-z0-9_][A-Za-z0-9_.\-]*(?:\[[0-9,\-]+\][A-Za-z0-9_.\-]*)*))
  |(?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  |(?P<op>[;|+@()\[\],=.*\-])
  |(?P<str>{_S})
  |(?P<cont>\\\r?\n)
)""", re.X)
_ARG = re.compile(rf"""[ \t]*(?:(?P<num>[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)|(?P<name>{_N})
  |(?P<str>{_S})|(?P<op>[,=\[\]]))""", re.X)
_BLANK = re.compile(r"[ \t]*(?:\#[^\n]*)?\Z")
_DEF = re.compile(r"(?:@[^\n]*\n[ \t]*)*def[ \t][^\n]*(?:\n[ \t]*(?=\n)|\n[ \t]+[^\n]*)*")
_KEYWORDS = frozenset({"import", "from", "as", "True", "False", "None"})
# a newline after one of these continues the statement (as the postlexer in parser.py)
_CONTINUES = frozenset({";", "|", "+", "@", ",", "=", "(", "["})
_LITERALS = {"True": True, "False": False, "None": None}
_BINARY = frozenset({";", "|", "+"})


class Fallback(Exception):
    """The fast path does not accept this text; let the reference parser decide."""


class _Parser:
    __slots__ = ("text", "end", "pos", "line", "line_start", "depth", "prev", "kind", "val", "tstart", "_args",
                 "_parts")

    def __init__(self, text: str):
        self.text = text
        self.end = len(text)
        self.pos = 0
        self.line = 1
        self.line_start = 0
        self.depth = 0
        self.prev: str | None = None
        self.kind = self.val = ""
        self.tstart = 0
        self._args: dict[str, tuple[tuple, tuple]] = {}     # argument text -> parsed (per parse)
        self._parts: dict[str, tuple[str, ...]] = {}        # dotted name -> its parts
        self.advance()

    # ---------------------------------------------------------------- scanner
    def _newlines(self, start: int, value: str) -> None:
        n = value.count("\n")
        if n:
            self.line += n
            self.line_start = start + value.rindex("\n") + 1

    def advance(self) -> None:
        """Scan the next significant token into kind/val/tstart (line and column on demand)."""
        text, match = self.text, _TOKEN.match
        while True:
            m = match(text, self.pos)
            if m is None:
                if _BLANK.match(text, self.pos):
                    self.kind, self.val, self.tstart = "eof", "", self.end
                    return
                raise Fallback()
            kind = m.lastgroup
            val = m.group(kind)
            self.pos = end = m.end()
            start = end - len(val)
            if kind == "nl" or kind == "cont":
                self._newlines(start, val)
                if kind == "cont" or self.depth > 0 or self.prev is None or self.prev in _CONTINUES:
                    continue
            elif kind == "op":
                if val in "([":
                    self.depth += 1
                elif val in ")]":
                    self.depth = max(self.depth - 1, 0)
                self.val = self.prev = val
                self.kind = "op"
                self.tstart = start
                return
            self.kind, self.val, self.tstart, self.prev = kind, val, start, kind
            return

    def pos_here(self) -> ast.Pos:
        return ast.Pos(self.line, self.tstart - self.line_start + 1)

    def is_op(self, op: str) -> bool:
        return self.kind == "op" and self.val == op

    def parts(self, dotted: str) -> tuple[str, ...]:
        parts = self._parts.get(dotted)
        if parts is None:
            parts = tuple(dotted.split("."))
            if any(p in _KEYWORDS for p in parts):
                raise Fallback()
            self._parts[dotted] = parts
        return parts

    def name(self) -> str:
        if self.kind != "ref" or "." in self.val or self.val in _KEYWORDS:
            raise Fallback()
        val = self.val
        self.advance()
        return val

    def dotted(self) -> str:
        if self.kind != "ref":
            raise Fallback()
        val = self.val
        self.parts(val)
        self.advance()
        return val

    # ------------------------------------------------------------- statements
    def flow(self, filename: str) -> ast.Flow:
        stmts: list[ast.Stmt] = []
        while self.kind != "eof":
            stmts.append(self.statement())
            if self.kind == "nl":
                self.advance()
            elif self.kind != "eof":
                raise Fallback()
        return ast.Flow(tuple(stmts), filename)

    def statement(self) -> ast.Stmt:
        kind, val = self.kind, self.val
        if (kind == "ref" and val == "def") or kind == "at" or (kind == "op" and val == "@"):
            m = _DEF.match(self.text, self.tstart)
            if m is None:
                raise Fallback()
            pos = self.pos_here()
            source = m.group().rstrip()
            self._newlines(self.tstart, m.group())
            self.pos = m.end()
            self.prev = "DEF"
            self.depth = 0
            self.advance()
            from .parser import _def_name

            return ast.Def(_def_name(source), source, pos)
        if kind == "ref" and val == "import":
            pos = self.pos_here()
            self.advance()
            module = self.dotted()
            alias = None
            if self.kind == "ref" and self.val == "as":
                self.advance()
                alias = self.name()
            return ast.Import(module, alias, pos)
        if kind == "ref" and val == "from":
            pos = self.pos_here()
            self.advance()
            module = self.dotted()
            if not (self.kind == "ref" and self.val == "import"):
                raise Fallback()
            self.advance()
            if self.is_op("*"):
                self.advance()
                return ast.FromImport(module, None, pos)
            names = [self.import_name()]
            while self.is_op(","):
                self.advance()
                names.append(self.import_name())
            return ast.FromImport(module, tuple(names), pos)
        expr, start = self.seq()
        if self.is_op("="):
            if kind != "ref" or type(expr) is not ast.Name or len(expr.parts) != 1:
                raise Fallback()
            self.advance()
            return ast.Bind(expr.parts[0], self.seq()[0], expr.pos)
        return ast.ExprStmt(expr, start)

    def import_name(self) -> tuple[str, str | None]:
        name = self.name()
        if self.kind == "ref" and self.val == "as":
            self.advance()
            return name, self.name()
        return name, None

    # ------------------------------------------------------------ expressions
    # Each returns (node, start): start is where the node's text begins, which
    # for a parenthesised operand is its '(' -- the position Lark gives a rule
    # whose first operand is in brackets, while the bracketed node keeps its own.
    def seq(self) -> tuple[ast.Expr, ast.Pos]:
        """operand (op operand)*, grouped by precedence (+ over | over ;) in one pass."""
        node, start = self.operand()
        if not (self.kind == "op" and self.val in _BINARY):
            return node, start
        seq_items: list[ast.Expr] = []
        par_items: list[ast.Expr] = []
        sum_items = [node]
        seq_start = par_start = sum_start = start
        while self.kind == "op" and self.val in _BINARY:
            op = self.val
            self.advance()
            node, start = self.operand()
            if op == "+":
                sum_items.append(node)
                continue
            par_items.append(ast.plus(sum_items, sum_start))
            sum_items, sum_start = [node], start
            if op == ";":
                seq_items.append(ast.par(par_items, par_start))
                par_items, par_start = [], start
        par_items.append(ast.plus(sum_items, sum_start))
        seq_items.append(ast.par(par_items, par_start))
        return ast.seq(seq_items, seq_start), seq_start

    def operand(self) -> tuple[ast.Expr, ast.Pos]:
        """A primary with its optional ``@ target``."""
        kind = self.kind
        start = ast.Pos(self.line, self.tstart - self.line_start + 1)
        expr: ast.Expr
        if kind == "call":
            val = self.val
            paren = val.index("(")
            dotted = val[:paren]
            parts = self._parts.get(dotted) or self.parts(dotted)
            parsed = self._args.get(val)
            if parsed is None:
                parsed = self._args[val] = _arguments(val[paren + 1:-1])
            expr = ast.Call(ast.Name(parts, start), parsed[0], parsed[1], start)
        elif kind == "ref":
            expr = ast.Name(self._parts.get(self.val) or self.parts(self.val), start)
        elif kind == "op" and self.val == "(":
            self.advance()
            expr, _ = self.seq()
            if not (self.kind == "op" and self.val == ")"):
                raise Fallback()
        else:
            raise Fallback()
        self.advance()
        kind = self.kind
        if kind == "at":
            text = self.val[1:].lstrip(" \t")
            if text[0] in "\"'":
                target = pyast.literal_eval(text)
            elif text in _KEYWORDS:
                raise Fallback()
            else:
                target = text
            self.prev = "TARGET"
            self.advance()
            return ast.Placed(expr, target, start), start
        if kind == "op" and (self.val == "@" or self.val == "(" and type(expr) is ast.Name):
            raise Fallback()   # '@' with its target on the next line, or a call spread over lines
        return expr, start


def _arguments(text: str) -> tuple[tuple, tuple]:
    """Literal arguments of a one-line call: positional, then keyword."""
    toks: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    while pos < n:
        m = _ARG.match(text, pos)
        if m is None:
            if text[pos:].strip(" \t") == "":
                break
            raise Fallback()
        kind = m.lastgroup
        toks.append((kind, m.group(kind)))
        pos = m.end()
    i = 0
    args: list = []
    kwargs: list = []

    def literal() -> object:
        nonlocal i
        if i >= len(toks):
            raise Fallback()
        kind, val = toks[i]
        i += 1
        if kind == "num":
            return _number(val)
        if kind == "str":
            return pyast.literal_eval(val)
        if kind == "name" and val in _LITERALS:
            return _LITERALS[val]
        if kind == "op" and val == "[":
            items = []
            while not (i < len(toks) and toks[i] == ("op", "]")):
                items.append(literal())
                if i < len(toks) and toks[i] == ("op", ","):
                    i += 1
                elif not (i < len(toks) and toks[i] == ("op", "]")):
                    raise Fallback()
            i += 1
            return tuple(items)
        raise Fallback()

    while i < len(toks):
        kind, val = toks[i]
        if kind == "name" and val not in _LITERALS:
            if val in _KEYWORDS or i + 1 >= len(toks) or toks[i + 1] != ("op", "="):
                raise Fallback()
            i += 2
            kwargs.append((val, literal()))
        elif kwargs:
            raise Fallback()   # positional after keyword: the reference parser words the error
        else:
            args.append(literal())
        if i < len(toks):
            if toks[i] != ("op", ","):
                raise Fallback()
            i += 1
    return tuple(args), tuple(kwargs)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def fast_parse(text: str, filename: str) -> ast.Flow:
    """Parse text that ends in a newline; raise Fallback on anything unusual."""
    try:
        return _Parser(text).flow(filename)
    except (RecursionError, ValueError, SyntaxError):
        raise Fallback() from None
