"""The Plan: concrete jobs under a Seq/Par/Sum structure, and its renderers.

A Plan is what the compiler hands the executor: each distinct invocation
(task, arguments, placement) is one ``Job`` however often it is referenced,
and a binding's sub-plan is one shared node object. A job whose command
needs run-time values (``report(a | b)``) is a ``Deferred`` node: its def is
called by the executor once its inputs have values. A ``Local`` node is a
local function called in cmflow's process on values.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Union

from . import values
from .ast import Pos
from .files.spec import JobFiles
from .tasks import TaskOptions


# Slotted (a plan may hold a million) and not frozen: a frozen dataclass sets each of its 11
# fields through object.__setattr__, 5x the time of the whole compile of a generator item.
# Nothing assigns to a Job after the compiler made it; hash and equality are the frozen ones.
@dataclass(slots=True, unsafe_hash=True)
class Job:
    id: int
    task: str
    args: tuple
    kwargs: tuple[tuple[str, object], ...]
    target: str | None
    command: str
    options: TaskOptions = field(compare=False)
    filename: str = field(default="<flow>", compare=False)
    pos: Pos = field(default=Pos(), compare=False)
    files: JobFiles | None = field(default=None, compare=False)   # inputs to stage, outputs to fetch
    fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)   # the def that built it

    @property
    def label(self) -> str:
        """``task(args)`` as written in a flow, with ``@ target`` if placed."""
        parts = [values.label(a) for a in self.args] + [f"{k}={values.label(v)}" for k, v in self.kwargs]
        text = f"{self.task}({', '.join(parts)})" if parts else self.task
        return f"{text} @ {self.target}" if self.target else text

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.pos.line}:{self.pos.column}"


@dataclass(eq=False, slots=True)    # one per job: not frozen for the same reason as Job
class JobRef:
    job: Job
    pos: Pos = Pos()


@dataclass(frozen=True, eq=False)
class PSeq:
    items: tuple["PlanNode", ...]
    pos: Pos = Pos()


@dataclass(frozen=True, eq=False)
class PPar:
    items: tuple["PlanNode", ...]
    pos: Pos = Pos()


@dataclass(frozen=True, eq=False)
class PSum:
    """``+`` (fn None), or ``fold(f, ...)``: items reduced eagerly, in order, with fn."""

    items: tuple["PlanNode", ...]
    pos: Pos = Pos()
    fn: Callable[[Any, Any], Any] | None = None
    fn_name: str = ""


@dataclass(frozen=True)
class Input:
    """An argument slot filled at run time with the value of ``inputs[index]``."""

    index: int


@dataclass(frozen=True, eq=False)
class Deferred:
    """A task call with run-time arguments: the def builds its command once the inputs have values."""

    fn: Callable[..., Any]
    task: str
    args: tuple                                # literals (Python values) and Input slots
    kwargs: tuple[tuple[str, Any], ...]
    inputs: tuple["PlanNode", ...]
    target: str | None
    options: TaskOptions = field(repr=False)
    filename: str = "<flow>"
    pos: Pos = Pos()
    base: str = "."          # the flow's folder: relative input paths a def declares at run time start here

    @property
    def label(self) -> str:
        text = f"{self.task}({_arg_text(self)})"
        return f"{text} @ {self.target}" if self.target else text

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.pos.line}:{self.pos.column}"


@dataclass(frozen=True, eq=False)
class Local:
    """A local function (``@local`` def or built-in) called in cmflow's process on values."""

    fn: Callable[..., Any]
    name: str
    args: tuple
    kwargs: tuple[tuple[str, Any], ...]
    inputs: tuple["PlanNode", ...]
    filename: str = "<flow>"
    pos: Pos = Pos()

    @property
    def label(self) -> str:
        return f"{self.name}({_arg_text(self)})"

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.pos.line}:{self.pos.column}"


PlanNode = Union[JobRef, PSeq, PPar, PSum, Deferred, Local]


def _arg_text(node: Deferred | Local) -> str:
    def one(a: Any) -> str:
        return f"<{expr_text(node.inputs[a.index])}>" if isinstance(a, Input) else values.label(a)

    return ", ".join([one(a) for a in node.args] + [f"{k}={one(v)}" for k, v in node.kwargs])


def fill(node: Deferred | Local, got: list[Any]) -> tuple[list[Any], dict[str, Any]]:
    """The arguments with each Input slot replaced by its run-time value (as a def receives it)."""
    def one(a: Any) -> Any:
        return values.argument(got[a.index]) if isinstance(a, Input) else a

    return [one(a) for a in node.args], {k: one(v) for k, v in node.kwargs}


_PREC = {PSeq: 1, PPar: 2, PSum: 3}
_OPS = {PSeq: "; ", PPar: " | ", PSum: " + "}


def expr_text(node: PlanNode, outer: int = 0, limit: int = 60) -> str:
    """A plan node as flow text with every name and loop variable resolved: ``a | sq(3)``.

    Long lists keep their ends: ``s(1) | s(2) | ... | s(8)`` (8 items)."""
    match node:
        case JobRef(job):
            text = job.label
        case Deferred() | Local():
            text = node.label
        case PSum(items, _, fn) if fn is not None:
            text = f"fold({node.fn_name}, {expr_text(PPar(items), 0, limit)})"
        case PSeq(items) | PPar(items) | PSum(items):
            prec, op = _PREC[type(node)], _OPS[type(node)]
            parts = [expr_text(i, prec + 1, limit) for i in items]
            text = op.join(parts) if items else {PSeq: "seq()", PPar: "par()", PSum: "sum()"}[type(node)]
            if len(text) > limit and len(parts) > 3:
                text = f"{parts[0]}{op}{parts[1]}{op}...{op}{parts[-1]}"
            if prec < outer and len(items) > 1:
                text = f"({text})"
        case _:
            raise TypeError(node)
    return text


@dataclass(frozen=True)
class Plan:
    root: PlanNode | None
    jobs: tuple[Job, ...]
    filename: str = "<flow>"

    def shape(self) -> str:
        """Compact structure, e.g. ``Seq[Par[a, b, c], d, Sum[a, b, c, d]]``."""
        return _shape(self.root) if self.root is not None else "(empty)"

    def deferred(self) -> int:
        """How many deferred calls the plan holds (each makes at most one job at run time)."""
        count = self.__dict__.get("_deferred")
        if count is None:
            # counted once (a run asks several times); jobs have no inputs, so the walk skips
            # them and remembers only the nodes above them, not a million JobRefs
            count, seen, stack = 0, set(), [self.root] if self.root is not None else []
            while stack:
                node = stack.pop()
                if type(node) is JobRef or id(node) in seen:
                    continue
                seen.add(id(node))
                count += isinstance(node, Deferred)
                stack.extend(children(node))
            self.__dict__["_deferred"] = count
        return count


def _shape(node: PlanNode) -> str:
    match node:
        case JobRef(job):
            return job.label
        case PSeq(items):
            return "Seq[" + ", ".join(_shape(i) for i in items) + "]"
        case PPar(items):
            return "Par[" + ", ".join(_shape(i) for i in items) + "]"
        case PSum(items, _, fn) if fn is not None:
            return f"Fold[{node.fn_name}: " + ", ".join(_shape(i) for i in items) + "]"
        case PSum(items):
            return "Sum[" + ", ".join(_shape(i) for i in items) + "]"
        case Deferred() | Local():
            return f"{node.label}"
    raise TypeError(node)


def children(node: PlanNode) -> tuple[PlanNode, ...]:
    if isinstance(node, JobRef):
        return ()
    if isinstance(node, (Deferred, Local)):
        return node.inputs
    return node.items


def walk(node: PlanNode) -> Iterator[PlanNode]:
    """Every node under node, depth first, shared nodes once."""
    seen: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        stack.extend(reversed(children(n)))


# ------------------------------------------------------------------ renderers

def render_text(plan: Plan) -> str:
    deferred = plan.deferred()
    more = f" + {deferred} deferred (commands built at run time)" if deferred else ""
    lines = [f"{plan.filename}: {len(plan.jobs)} job{'s' if len(plan.jobs) != 1 else ''}{more}"]
    if plan.root is None:
        lines.append("  (no expression)")
        return "\n".join(lines) + "\n"
    lines.append(f"  {plan.shape()}" if len(plan.jobs) <= 12 else "")
    seen: set[int] = set()

    def go(node: PlanNode, depth: int) -> None:
        pad = "  " * depth
        match node:
            case JobRef(job):
                again = " (again)" if job.id in seen else ""
                seen.add(job.id)
                lines.append(f"{pad}#{job.id} {job.label}{again}")
                if not again:
                    # continuation lines of a multi-line command stay under its first
                    lines.append(f"{pad}    $ " + job.command.rstrip("\n").replace("\n", f"\n{pad}      "))
                    if job.files:
                        lines.extend(f"{pad}    < {i.dest}" + (f" (from {i.source})" if i.source != i.dest else "")
                                     for i in job.files.inputs)
                        lines.extend(f"{pad}    > {o.pattern}" + (f" (publish data:{o.publish})" if o.publish else "")
                                     for o in job.files.outputs)
            case Deferred():
                lines.append(f"{pad}{node.label}  (deferred: the def is called when its inputs have values)")
                for item in node.inputs:
                    go(item, depth + 1)
            case Local():
                lines.append(f"{pad}{node.label}  (local)")
                for item in node.inputs:
                    go(item, depth + 1)
            case PSum(items, _, fn) if fn is not None:
                lines.append(f"{pad}Fold {node.fn_name}")
                for item in items:
                    go(item, depth + 1)
            case PSeq(items) | PPar(items) | PSum(items):
                lines.append(f"{pad}{type(node).__name__[1:]}")
                for item in items:
                    go(item, depth + 1)

    go(plan.root, 1)
    return "\n".join(line for line in lines if line) + "\n"


def _node_json(node: PlanNode) -> dict:
    match node:
        case JobRef(job):
            return {"job": job.id}
        case PSum(items, _, fn) if fn is not None:
            return {"op": "fold", "function": node.fn_name, "items": [_node_json(i) for i in items]}
        case PSeq(items) | PPar(items) | PSum(items):
            return {"op": type(node).__name__[1:].lower(), "items": [_node_json(i) for i in items]}
        case Deferred():
            return {"op": "call", "deferred": True, "task": node.task, "label": node.label,
                    "args": [_slot_json(a) for a in node.args],
                    "kwargs": {k: _slot_json(v) for k, v in node.kwargs}, "target": node.target,
                    "where": node.where, "inputs": [_node_json(i) for i in node.inputs]}
        case Local():
            return {"op": "local", "function": node.name, "label": node.label,
                    "args": [_slot_json(a) for a in node.args],
                    "kwargs": {k: _slot_json(v) for k, v in node.kwargs},
                    "where": node.where, "inputs": [_node_json(i) for i in node.inputs]}
    raise TypeError(node)


def _slot_json(arg: Any) -> Any:
    return {"input": arg.index} if isinstance(arg, Input) else _jsonable(arg)


def job_json(job: Job) -> dict:
    doc = {"id": job.id, "task": job.task, "args": _jsonable(job.args), "kwargs": dict(_jsonable(job.kwargs)),
           "target": job.target, "command": job.command, "where": job.where}
    if job.files:
        doc["inputs"] = [{"source": i.source, "dest": i.dest} for i in job.files.inputs]
        doc["outputs"] = [{"pattern": o.pattern, **({"publish": o.publish} if o.publish else {})}
                          for o in job.files.outputs]
    return doc


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return values.label(value, 1000)


def render_json(plan: Plan) -> str:
    doc = {"flow": plan.filename, "jobs": [job_json(j) for j in plan.jobs],
           "root": _node_json(plan.root) if plan.root is not None else None}
    return json.dumps(doc, indent=2) + "\n"


def render_dot(plan: Plan) -> str:
    from .plan_dot import render_dot as dot    # its own module: layout, escaping, collapsing

    return dot(plan)


RENDERERS = {"text": render_text, "json": render_json, "dot": render_dot}
