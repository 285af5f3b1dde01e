"""AST of the flow language: immutable nodes that carry their source position.

Positions take no part in equality (``field(compare=False)``), so two trees
that say the same thing compare equal wherever their text stood; that is what
lets ``parse(unparse(tree)) == tree`` hold.

``|``, ``;`` and ``+`` are n-ary: the constructors ``seq``, ``par`` and
``plus`` flatten nested nodes of the same kind, so ``(a | b) | c`` and
``a | b | c`` build the same node.

A call's arguments are literals (plain Python values, lists as tuples) or
expression nodes (a loop variable, a task, a sub-flow: resolved by the
compiler). ``Gen`` is a call with a generator, ``par(run(n) for n in range(8))``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple, Union

Literal = Union[int, float, str, bool, None, tuple]  # lists are tuples here (hashable)


class Pos(NamedTuple):
    """1-based line and column of a node's first token (a tuple: cheap to make, immutable)."""

    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


NOPOS = Pos()


def _pos() -> Pos:
    return field(default=NOPOS, compare=False, repr=False)  # type: ignore[return-value]


# ---------------------------------------------------------------- expressions

@dataclass(frozen=True)
class Name:
    """A reference to a task or binding: ``a`` or ``tasks.a``."""

    parts: tuple[str, ...]
    pos: Pos = _pos()

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class Call:
    """A call: ``run(3, size="big")``, ``report(a | b)``, ``twice(sq(n))``.

    Each argument is a literal or an expression node (see ``is_expr``).
    """

    name: Name
    args: tuple[Arg, ...] = ()
    kwargs: tuple[tuple[str, Arg], ...] = ()
    pos: Pos = _pos()


@dataclass(frozen=True)
class HostsOf:
    """The iterable ``hosts(TARGET)``: the host names of a host, group, label or range."""

    target: str
    pos: Pos = _pos()


@dataclass(frozen=True)
class For:
    """One clause ``for a, b in ITER``; ITER is a Call (``range(...)``), HostsOf, a list literal,
    or anything else the grammar accepts there (a Name, a literal), which the compiler rejects."""

    names: tuple[str, ...]
    iter: Union[Call, HostsOf, Name, Literal]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Gen:
    """``name(item for ... for ...)``: clauses nest left to right, as in Python."""

    name: Name
    item: Expr
    clauses: tuple[For, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Placed:
    """``expr @ target``: run every task in ``expr`` on a host, group or label."""

    expr: Expr
    target: str
    pos: Pos = _pos()


@dataclass(frozen=True)
class Seq:
    items: tuple[Expr, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Par:
    items: tuple[Expr, ...]
    pos: Pos = _pos()


@dataclass(frozen=True)
class Sum:
    items: tuple[Expr, ...]
    pos: Pos = _pos()


Expr = Union[Name, Call, Gen, Placed, Seq, Par, Sum]
Arg = Union[Literal, Expr]
EXPR_TYPES = (Name, Call, Gen, Placed, Seq, Par, Sum)


def is_expr(arg: object) -> bool:
    """An argument that is an expression node, not a literal."""
    return isinstance(arg, EXPR_TYPES)


def _flatten(kind: type, items: list[Expr] | tuple[Expr, ...]) -> tuple[Expr, ...]:
    out: list[Expr] = []
    for item in items:
        if type(item) is kind:
            out.extend(item.items)  # type: ignore[union-attr]
        else:
            out.append(item)
    return tuple(out)


def seq(items: list[Expr] | tuple[Expr, ...], pos: Pos = NOPOS) -> Expr:
    flat = _flatten(Seq, items)
    return flat[0] if len(flat) == 1 else Seq(flat, pos)


def par(items: list[Expr] | tuple[Expr, ...], pos: Pos = NOPOS) -> Expr:
    flat = _flatten(Par, items)
    return flat[0] if len(flat) == 1 else Par(flat, pos)


def plus(items: list[Expr] | tuple[Expr, ...], pos: Pos = NOPOS) -> Expr:
    flat = _flatten(Sum, items)
    return flat[0] if len(flat) == 1 else Sum(flat, pos)


# ----------------------------------------------------------------- statements

@dataclass(frozen=True)
class Import:
    """``import m`` / ``import m as t``."""

    module: str
    alias: str | None = None
    pos: Pos = _pos()


@dataclass(frozen=True)
class FromImport:
    """``from m import a, b as c`` (names) or ``from m import *`` (names is None)."""

    module: str
    names: tuple[tuple[str, str | None], ...] | None
    pos: Pos = _pos()


@dataclass(frozen=True)
class Def:
    """An inline task: Python source of a def (with its decorators)."""

    name: str
    source: str
    pos: Pos = _pos()


@dataclass(frozen=True)
class Bind:
    """``name = EXPR``: every reference to name shares one evaluation."""

    name: str
    expr: Expr
    pos: Pos = _pos()


@dataclass(frozen=True)
class ExprStmt:
    expr: Expr
    pos: Pos = _pos()


Stmt = Union[Import, FromImport, Def, Bind, ExprStmt]


@dataclass(frozen=True)
class Flow:
    statements: tuple[Stmt, ...]
    filename: str = field(default="<flow>", compare=False)


# -------------------------------------------------------------------- unparse

_PREC = {Seq: 1, Par: 2, Sum: 3, Placed: 4}
_OPS = {Seq: "; ", Par: " | ", Sum: " + "}


def unparse_literal(value: Literal) -> str:
    match value:
        case bool() | None:
            return repr(value)
        case int():
            return str(value)
        case float():
            if value in (math.inf, -math.inf):
                # a literal too large for a float (1e400) reads as infinity; "inf" would read as a name
                return "1e999" if value > 0 else "-1e999"
            return repr(value)
        case str():
            return json.dumps(value, ensure_ascii=False)
        case tuple():
            return "[" + ", ".join(unparse_literal(v) for v in value) + "]"
    raise TypeError(f"not a flow literal: {value!r}")


def unparse_expr(node: Expr, outer: int = 0) -> str:
    """Canonical text of an expression; parentheses only where precedence needs them."""
    match node:
        case Name():
            return node.dotted
        case Call():
            args = [unparse_arg(a) for a in node.args]
            args += [f"{k}={unparse_arg(v)}" for k, v in node.kwargs]
            return f"{node.name.dotted}({', '.join(args)})"
        case Gen():
            clauses = " ".join(f"for {', '.join(c.names)} in {unparse_iter(c.iter)}" for c in node.clauses)
            return f"{node.name.dotted}({unparse_expr(node.item)} {clauses})"
        case Placed():
            target = unparse_target(node.target)
            # the operand of @ must be a primary: parenthesise anything composite
            text = f"{unparse_expr(node.expr, _PREC[Placed] + 1)} @ {target}"
            return f"({text})" if _PREC[Placed] < outer else text
        case Seq() | Par() | Sum():
            prec = _PREC[type(node)]
            # operands of the same kind would flatten, so they need brackets too
            text = _OPS[type(node)].join(unparse_expr(i, prec + 1) for i in node.items)
            return f"({text})" if prec < outer else text
    raise TypeError(f"not an expression node: {node!r}")


def unparse_arg(arg: Arg) -> str:
    return unparse_expr(arg) if is_expr(arg) else unparse_literal(arg)  # type: ignore[arg-type]


def unparse_iter(it: object) -> str:
    if isinstance(it, HostsOf):
        return f"hosts({unparse_target(it.target)})"
    return unparse_arg(it)  # type: ignore[arg-type]


def unparse_target(target: str) -> str:
    return target if _plain_target(target) else json.dumps(target, ensure_ascii=False)


def _plain_target(target: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(\[[0-9,\-]+\][A-Za-z0-9_.\-]*)*", target)) and \
        target not in _KEYWORDS


# words the grammar reserves somewhere; a target spelled so is quoted
_KEYWORDS = frozenset({"True", "False", "None", "import", "from", "as", "for", "in", "hosts"})


def unparse(flow: Flow | Expr) -> str:
    """Canonical text: ``parse(unparse(tree)) == tree``."""
    if not isinstance(flow, Flow):
        return unparse_expr(flow)
    lines: list[str] = []
    for stmt in flow.statements:
        match stmt:
            case Import(module, alias):
                lines.append(f"import {module}" + (f" as {alias}" if alias else ""))
            case FromImport(module, None):
                lines.append(f"from {module} import *")
            case FromImport(module, names):
                parts = [n + (f" as {a}" if a else "") for n, a in names or ()]
                lines.append(f"from {module} import {', '.join(parts)}")
            case Def(_, source):
                lines.append(source)
            case Bind(name, expr):
                lines.append(f"{name} = {unparse_expr(expr)}")
            case ExprStmt(expr):
                lines.append(unparse_expr(expr))
    return "\n".join(lines) + "\n"
