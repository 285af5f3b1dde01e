"""A fast path for the grammar in grammar.lark: same language, same AST, same positions.

Lark's LALR parser costs ~15 µs per token in CPython; a flow with 100 000
task references has ~500 000 tokens. This parser reads the same language in a
small fraction of that: the text is cut into tokens by one regex in C (a whole
one-line call ``run(3, size="big")`` is one token, its arguments parsed once
per distinct text), and expressions are grouped by precedence in one loop with
an explicit stack for brackets.

It never reports an error itself: on anything it does not accept it gives up
(``Fallback``) and the Lark parser, the reference, parses the text and words
the error. The tests check that both give the same tree, positions included,
on generated flows and on random text.
"""
from __future__ import annotations

import re
from bisect import bisect_left

from . import ast
from .parser_common import MAX_NESTING, decode_string, def_name

_S = r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'"""
_N = r"[A-Za-z_][A-Za-z0-9_]*"
_T = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(?:\[[0-9,\-]+\][A-Za-z0-9_.\-]*)*"     # a host name, group or range
_NUM = r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?"
# Every token match starts with the blanks before it, and a catch-all ends the
# alternatives, so matches are contiguous and nothing is skipped unseen.
_TOKEN = re.compile(rf"""[ \t]*(?:
   (?P<nl>(?:\#[^\n]*)?(?:\r?\n[ \t]*(?:\#[^\n]*)?)+)
  |(?P<call>{_N}(?:\.{_N})*\((?:[^()"'\n\\]|{_S})*\))
  |(?P<ref>{_N}(?:\.{_N})*)
  |(?P<at>@[ \t]*(?:{_S}|{_T}))
  |(?P<op>[;|+()=,*\[\]])
  |(?P<num>{_NUM})
  |(?P<str>{_S})
  |(?P<cont>\\\r?\n)
  |(?P<bad>[^\n]|\Z)
)""", re.X)
# a def block where a line starts: decorators, the def line, then indented or blank lines.
# A run of decorator lines is taken whole (possessive) and matches even without its def (group
# "def" then empty, skipped by the caller): a search that failed at its first line would otherwise
# be tried again from each of its other lines, quadratic in the run's length.
_DEF_AT_LINE = re.compile(r"^[ \t]*(?=@|def[ \t])((?:@[^\n]*\n[ \t]*)*+"
                          r"(?P<def>def[ \t][^\n]*(?:\n[ \t]*(?=\n)|\n[ \t]+[^\n]*)*)?)", re.M)
_ARG = re.compile(rf"""[ \t]*(?:(?P<num>{_NUM})|(?P<name>{_N})
  |(?P<str>{_S})|(?P<op>[,=\[\]]))""", re.X)
_KEYWORDS = frozenset({"import", "from", "as", "True", "False", "None", "for", "in"})
_TARGET = re.compile(_T)
_LITERALS = {"True": True, "False": False, "None": None}
_BINARY = frozenset({";", "|", "+"})
# The reference parser counts ( and [ together against MAX_NESTING; this path
# bounds each kind to half (a call's own '(' included), so whatever it accepts,
# the reference accepts too: deeper text falls back and gets the reference's error.
_MAX_PARENS = MAX_NESTING // 2 - 1
_MAX_LISTS = MAX_NESTING // 2


class Fallback(Exception):
    """The fast path does not accept this text; let the reference parser decide."""


# A token is a tuple (kind, text without the blanks before it, start offset):
# tuples are the cheapest thing CPython makes, and a big flow has ~250 000 tokens.
_Tok = tuple


def _tokens(text: str) -> list[_Tok]:
    toks: list[_Tok] = []
    pos = 0
    for d in _DEF_AT_LINE.finditer(text):
        if d.group("def") is None:
            continue      # decorator lines with no def after them: tokens, which the parser refuses
        _scan(text, pos, d.start(1), toks)
        toks.append(("def", d.group(1), d.start(1)))
        pos = d.end(1)
    _scan(text, pos, len(text), toks)
    toks.append(("eof", "", len(text)))
    return toks


def _scan(text: str, pos: int, end: int, out: list[_Tok]) -> None:
    append = out.append
    for m in _TOKEN.finditer(text, pos, end):
        kind = m.lastgroup
        if kind == "cont":
            continue
        if kind == "bad":
            if m.group(kind) == "" and m.end() == end:
                return     # blanks before the end of the segment
            raise Fallback()
        val = m.group(kind)
        append((kind, val, m.end() - len(val)))


class _Parser:
    def __init__(self, text: str, filename: str):
        self.text = text
        self.filename = filename
        self.toks = _tokens(text)
        self.i = 0
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.calls: dict[str, tuple[tuple[str, ...], tuple, tuple]] = {}   # call text -> parsed, per parse
        self.refs: dict[str, tuple[str, ...]] = {}
        self.depth = 0     # brackets open around the call being read (enclosing calls and groups)

    def pos(self, offset: int) -> ast.Pos:
        line = bisect_left(self.newlines, offset)      # newlines before offset
        line_start = self.newlines[line - 1] + 1 if line else 0
        return ast.Pos(line + 1, offset - line_start + 1)

    def parts(self, dotted: str) -> tuple[str, ...]:
        parts = self.refs.get(dotted)
        if parts is None:
            parts = tuple(dotted.split("."))
            if not _KEYWORDS.isdisjoint(parts):
                raise Fallback()
            self.refs[dotted] = parts
        return parts

    # ------------------------------------------------------------- statements
    def flow(self) -> ast.Flow:
        toks = self.toks
        stmts: list[ast.Stmt] = []
        if toks[0][0] == "nl":
            self.i = 1
        while toks[self.i][0] != "eof":
            stmts.append(self.statement())
            kind = toks[self.i][0]
            if kind == "nl":
                self.i += 1
            elif kind != "eof":
                raise Fallback()
        return ast.Flow(tuple(stmts), self.filename)

    def take(self, kind: str, val: str | None = None) -> _Tok:
        tok = self.toks[self.i]
        if tok[0] != kind or (val is not None and tok[1] != val):
            raise Fallback()
        self.i += 1
        return tok

    def name(self) -> str:
        tok = self.take("ref")
        if "." in tok[1] or tok[1] in _KEYWORDS:
            raise Fallback()
        return tok[1]

    def statement(self) -> ast.Stmt:
        tok = self.toks[self.i]
        kind, val = tok[0], tok[1]
        if kind == "def":
            self.i += 1
            source = val.rstrip()
            return ast.Def(def_name(source), source, self.pos(tok[2]))
        if kind == "ref" and val == "import":
            self.i += 1
            module = self.take("ref")[1]
            self.parts(module)
            alias = None
            nxt = self.toks[self.i]
            if nxt[0] == "ref" and nxt[1] == "as":
                self.i += 1
                alias = self.name()
            return ast.Import(module, alias, self.pos(tok[2]))
        if kind == "ref" and val == "from":
            self.i += 1
            module = self.take("ref")[1]
            self.parts(module)
            self.take("ref", "import")
            if self.toks[self.i][0] == "op" and self.toks[self.i][1] == "*":
                self.i += 1
                return ast.FromImport(module, None, self.pos(tok[2]))
            names = [self.import_name()]
            while self.toks[self.i][0] == "op" and self.toks[self.i][1] == ",":
                self.i += 1
                names.append(self.import_name())
            return ast.FromImport(module, tuple(names), self.pos(tok[2]))
        nxt = self.toks[self.i + 1]
        if kind == "ref" and nxt[0] == "op" and nxt[1] == "=":
            if "." in val or val in _KEYWORDS:
                raise Fallback()
            self.i += 2
            while self.toks[self.i][0] == "nl":   # a newline after '=' continues
                self.i += 1
            expr, _ = self.expression()
            return ast.Bind(val, expr, self.pos(tok[2]))
        expr, start = self.expression()
        return ast.ExprStmt(expr, start)

    def import_name(self) -> tuple[str, str | None]:
        name = self.name()
        nxt = self.toks[self.i]
        if nxt[0] == "ref" and nxt[1] == "as":
            self.i += 1
            return name, self.name()
        return name, None

    # ------------------------------------------------------------ expressions
    def expression(self, nested: bool = False) -> tuple[ast.Expr, ast.Pos]:
        """operand (op operand)* with brackets, grouped by precedence (+ over | over ;).

        Returns (node, start): start is where the node's text begins, which for a
        bracketed operand is its '(' -- the position Lark gives a rule whose first
        operand is in brackets, while the bracketed node keeps its own position.
        ``nested``: an argument inside a call's brackets; it ends before a ',',
        ')' or 'for' that the caller takes, and newlines in it are blanks.
        """
        toks, i = self.toks, self.i
        plus, par, seq = ast.plus, ast.par, ast.seq
        newlines, Pos = self.newlines, ast.Pos
        stack: list[tuple] = []
        seq_items: list = []
        par_items: list = []
        sum_items: list = []
        seq_start = par_start = sum_start = paren_start = None
        op: str | None = None       # the operator before the operand about to come
        while True:
            # ---- an operand (newlines are skipped inside brackets and after an operator)
            tok = toks[i]
            kind = tok[0]
            while kind == "nl" and (stack or nested or op is not None):
                i += 1
                tok = toks[i]
                kind = tok[0]
            if kind == "op" and tok[1] == "(":
                if len(stack) + self.depth >= _MAX_PARENS:
                    raise Fallback()
                stack.append((seq_items, par_items, sum_items, seq_start, par_start, sum_start, op,
                              self.pos(tok[2])))
                seq_items, par_items, sum_items = [], [], []
                seq_start = par_start = sum_start = None
                op = None
                i += 1
                continue
            if kind == "call":
                val = tok[1]
                parsed = self.calls.get(val) if not self.depth else None
                offset = tok[2]      # self.pos(offset), inline: this runs once per reference
                line = bisect_left(newlines, offset)
                start = Pos(line + 1, offset - (newlines[line - 1] + 1 if line else 0) + 1)
                if parsed is None:
                    node: ast.Expr = self.call_token(tok, start, len(stack))
                else:
                    node = ast.Call(ast.Name(parsed[0], start), parsed[1], parsed[2], start)
            elif kind == "ref":
                start = self.pos(tok[2])
                name = ast.Name(self.parts(tok[1]), start)
                nxt = toks[i + 1]
                if nxt[0] == "op" and nxt[1] == "(":
                    # a call whose arguments hold brackets: f(g(1)), par(x for ...)
                    self.i = i + 2
                    self.depth += len(stack)
                    node = self.arglist(name, start)
                    self.depth -= len(stack)
                    i = self.i - 1
                else:
                    node = name
            else:
                raise Fallback()
            i += 1
            while True:
                # ---- an optional placement, then the operand joins its frame
                tok = toks[i]
                if tok[0] == "at":
                    text = tok[1][1:].lstrip(" \t")
                    if text[0] in "\"'":
                        target = decode_string(text)
                    elif text in _KEYWORDS:
                        raise Fallback()
                    else:
                        target = text
                    node = ast.Placed(node, target, start)
                    i += 1
                if op is None:
                    sum_items, seq_start, par_start, sum_start = [node], start, start, start
                elif op == "+":
                    sum_items.append(node)
                else:
                    # a group of one is its item (the common case: skip building and flattening)
                    par_items.append(sum_items[0] if len(sum_items) == 1 else plus(sum_items, sum_start))
                    sum_items, sum_start = [node], start
                    if op == ";":
                        seq_items.append(par_items[0] if len(par_items) == 1 else par(par_items, par_start))
                        par_items, par_start = [], start
                # ---- an operator, a closing bracket, or the end
                tok = toks[i]
                while tok[0] == "nl" and (stack or nested):
                    i += 1
                    tok = toks[i]
                if tok[0] == "op" and tok[1] in _BINARY:
                    op = tok[1]
                    i += 1
                    break
                par_items.append(sum_items[0] if len(sum_items) == 1 else plus(sum_items, sum_start))
                seq_items.append(par_items[0] if len(par_items) == 1 else par(par_items, par_start))
                result = seq_items[0] if len(seq_items) == 1 else seq(seq_items, seq_start)
                result_start = seq_start
                if not stack:
                    if not nested and tok[0] == "op" and tok[1] == ")":
                        raise Fallback()
                    self.i = i
                    return result, result_start
                if not (tok[0] == "op" and tok[1] == ")"):
                    raise Fallback()
                i += 1
                seq_items, par_items, sum_items, seq_start, par_start, sum_start, op, paren_start = stack.pop()
                node, start = result, paren_start

    # ------------------------------------------------------- calls, generators
    def call_token(self, tok: _Tok, start: ast.Pos, groups: int = 0) -> ast.Call | ast.Gen:
        """A one-line call token: literal arguments are parsed once per distinct text;
        anything else (names, operators) by the general argument parser on its tokens.
        ``groups``: brackets of the expression being read that are open around it."""
        val = tok[1]
        paren = val.index("(")
        try:
            # groups + self.depth <= _MAX_PARENS - 1, so the lists of calls in brackets fit too
            args, kwargs = _arguments(val[paren + 1:-1], _MAX_LISTS - self.depth)
        except Fallback:
            self.depth += groups
            try:
                return self.sub_arglist(tok, start, paren)
            finally:
                self.depth -= groups
        parsed = (self.parts(val[:paren]), args, kwargs)
        if not self.depth:    # parsed under the full nesting budget: reusable anywhere
            self.calls[val] = parsed
        return ast.Call(ast.Name(parsed[0], start), args, kwargs, start)

    def sub_arglist(self, tok: _Tok, start: ast.Pos, paren: int) -> ast.Call | ast.Gen:
        # tokens of the text between the brackets (it holds no brackets or newlines)
        inner: list[_Tok] = []
        begin, end = tok[2] + paren + 1, tok[2] + len(tok[1]) - 1
        _scan(self.text, begin, end, inner)
        inner += [("op", ")", end), ("eof", "", end + 1)]
        saved = self.toks, self.i
        self.toks, self.i = inner, 0
        try:
            node = self.arglist(ast.Name(self.parts(tok[1][:paren]), start), start)
            if self.toks[self.i][0] != "eof":
                raise Fallback()
        finally:
            self.toks, self.i = saved
        return node

    def skip_nl(self) -> _Tok:
        toks = self.toks
        while toks[self.i][0] == "nl":
            self.i += 1
        return toks[self.i]

    def arglist(self, name: ast.Name, start: ast.Pos) -> ast.Call | ast.Gen:
        """Arguments after '(' up to and including ')'; a generator if 'for' follows the first."""
        self.depth += 1
        if self.depth >= _MAX_PARENS:
            raise Fallback()
        try:
            return self._arglist(name, start)
        finally:
            self.depth -= 1

    def _arglist(self, name: ast.Name, start: ast.Pos) -> ast.Call | ast.Gen:
        args: list = []
        kwargs: list = []
        toks = self.toks
        while True:
            tok = self.skip_nl()
            if tok[0] == "op" and tok[1] == ")":
                break
            nxt = toks[self.i + 1]
            if tok[0] == "ref" and nxt[0] == "op" and nxt[1] == "=":
                if "." in tok[1] or tok[1] in _KEYWORDS:
                    raise Fallback()
                self.i += 2
                kwargs.append((tok[1], self.argument()))
            elif kwargs:
                raise Fallback()   # positional after keyword: the reference parser words the error
            else:
                is_expr = not (tok[0] in ("num", "str") or tok[0] == "op" and tok[1] == "["
                               or tok[0] == "ref" and tok[1] in _LITERALS)
                value = self.argument()
                tok = self.skip_nl()
                if tok[0] == "ref" and tok[1] == "for":
                    if args or not is_expr:
                        raise Fallback()
                    return ast.Gen(name, value, self.clauses(), start)
                args.append(value)
            tok = self.skip_nl()
            if tok[0] == "op" and tok[1] == ",":
                self.i += 1
                continue
            if not (tok[0] == "op" and tok[1] == ")"):
                raise Fallback()
            break
        self.i += 1
        return ast.Call(name, tuple(args), tuple(kwargs), start)

    def argument(self) -> ast.Arg:
        tok = self.skip_nl()
        if tok[0] in ("num", "str") or tok[0] == "op" and tok[1] == "[" or tok[0] == "ref" and tok[1] in _LITERALS:
            return self.literal()
        node, _ = self.expression(nested=True)
        return node

    def literal(self) -> ast.Literal:
        tok = self.skip_nl()
        self.i += 1
        kind, val = tok[0], tok[1]
        if kind == "num":
            return _number(val)
        if kind == "str":
            return decode_string(val)
        if kind == "ref" and val in _LITERALS:
            return _LITERALS[val]
        if kind == "op" and val == "[":
            items = []
            self.depth += 1
            if self.depth >= _MAX_PARENS:
                raise Fallback()
            while True:
                tok = self.skip_nl()
                if tok[0] == "op" and tok[1] == "]":
                    self.i += 1
                    self.depth -= 1
                    return tuple(items)
                items.append(self.literal())
                tok = self.skip_nl()
                if tok[0] == "op" and tok[1] == ",":
                    self.i += 1
                elif not (tok[0] == "op" and tok[1] == "]"):
                    raise Fallback()
        raise Fallback()

    def clauses(self) -> tuple[ast.For, ...]:
        """``for a, b in ITER ...`` up to and including the ')' of the generator call."""
        out: list[ast.For] = []
        while True:
            tok = self.skip_nl()
            if tok[0] == "op" and tok[1] == ")":
                self.i += 1
                return tuple(out)
            if not (tok[0] == "ref" and tok[1] == "for"):
                raise Fallback()
            self.i += 1
            names = [self.loop_name()]
            while self.skip_nl()[0] == "op" and self.toks[self.i][1] == ",":
                self.i += 1
                names.append(self.loop_name())
            if self.skip_nl()[:2] != ("ref", "in"):
                raise Fallback()
            self.i += 1
            out.append(ast.For(tuple(names), self.iterable(), self.pos(tok[2])))

    def loop_name(self) -> str:
        tok = self.skip_nl()
        if tok[0] != "ref" or "." in tok[1] or tok[1] in _KEYWORDS or tok[1] == "hosts":
            raise Fallback()
        self.i += 1
        return tok[1]

    def iterable(self) -> object:
        tok = self.skip_nl()
        kind, val = tok[0], tok[1]
        start = self.pos(tok[2])
        if kind == "call" and val.startswith("hosts("):
            text = val[6:-1].strip(" \t")
            if text[:1] in ("'", '"'):
                target = decode_string(text)
            elif _TARGET.fullmatch(text) and text not in _KEYWORDS:
                target = text
            else:
                raise Fallback()
            self.i += 1
            return ast.HostsOf(target, start)
        if kind == "call":
            self.i += 1
            return self.call_token(tok, start)
        if kind == "ref" and val not in _LITERALS:
            if val == "hosts":
                raise Fallback()
            name = ast.Name(self.parts(val), start)
            nxt = self.toks[self.i + 1]
            if nxt[0] == "op" and nxt[1] == "(":
                self.i += 2
                return self.arglist(name, start)
            self.i += 1
            return name
        return self.literal()


def _arguments(text: str, max_lists: int = _MAX_LISTS) -> tuple[tuple, tuple]:
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

    depth = 0

    def literal() -> object:
        nonlocal i, depth
        if i >= len(toks):
            raise Fallback()
        kind, val = toks[i]
        i += 1
        if kind == "num":
            return _number(val)
        if kind == "str":
            return decode_string(val)
        if kind == "name" and val in _LITERALS:
            return _LITERALS[val]
        if kind == "op" and val == "[":
            depth += 1
            if depth > max_lists:
                raise Fallback()
            items = []
            while not (i < len(toks) and toks[i] == ("op", "]")):
                items.append(literal())
                if i < len(toks) and toks[i] == ("op", ","):
                    i += 1
                elif not (i < len(toks) and toks[i] == ("op", "]")):
                    raise Fallback()
            i += 1
            depth -= 1
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
        return _Parser(text, filename).flow()
    except (ValueError, SyntaxError, IndexError, RecursionError):
        raise Fallback() from None
