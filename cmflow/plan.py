"""The Plan: concrete jobs under a Seq/Par/Sum structure, and its renderers.

A Plan is what the compiler hands the executor: every command is known, each
distinct invocation (task, arguments, placement) is one ``Job`` however often
it is referenced, and a binding's sub-plan is one shared node object.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator, Union

from .ast import Pos, unparse_literal
from .files.spec import JobFiles
from .tasks import TaskOptions


@dataclass(frozen=True)
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

    @property
    def label(self) -> str:
        """``task(args)`` as written in a flow, with ``@ target`` if placed."""
        parts = [unparse_literal(a) for a in self.args] + [f"{k}={unparse_literal(v)}" for k, v in self.kwargs]
        text = f"{self.task}({', '.join(parts)})" if parts else self.task
        return f"{text} @ {self.target}" if self.target else text

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.pos.line}:{self.pos.column}"


@dataclass(frozen=True, eq=False)
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
    items: tuple["PlanNode", ...]
    pos: Pos = Pos()


PlanNode = Union[JobRef, PSeq, PPar, PSum]


@dataclass(frozen=True)
class Plan:
    root: PlanNode | None
    jobs: tuple[Job, ...]
    filename: str = "<flow>"

    def shape(self) -> str:
        """Compact structure, e.g. ``Seq[Par[a, b, c], d, Sum[a, b, c, d]]``."""
        return _shape(self.root) if self.root is not None else "(empty)"


def _shape(node: PlanNode) -> str:
    match node:
        case JobRef(job):
            return job.label
        case PSeq(items):
            return "Seq[" + ", ".join(_shape(i) for i in items) + "]"
        case PPar(items):
            return "Par[" + ", ".join(_shape(i) for i in items) + "]"
        case PSum(items):
            return "Sum[" + ", ".join(_shape(i) for i in items) + "]"
    raise TypeError(node)


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
        if not isinstance(n, JobRef):
            stack.extend(reversed(n.items))


# ------------------------------------------------------------------ renderers

def render_text(plan: Plan) -> str:
    lines = [f"{plan.filename}: {len(plan.jobs)} job{'s' if len(plan.jobs) != 1 else ''}"]
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
        case PSeq(items) | PPar(items) | PSum(items):
            return {"op": type(node).__name__[1:].lower(), "items": [_node_json(i) for i in items]}
    raise TypeError(node)


def job_json(job: Job) -> dict:
    doc = {"id": job.id, "task": job.task, "args": _jsonable(job.args), "kwargs": dict(_jsonable(job.kwargs)),
           "target": job.target, "command": job.command, "where": job.where}
    if job.files:
        doc["inputs"] = [{"source": i.source, "dest": i.dest} for i in job.files.inputs]
        doc["outputs"] = [{"pattern": o.pattern, **({"publish": o.publish} if o.publish else {})}
                          for o in job.files.outputs]
    return doc


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def render_json(plan: Plan) -> str:
    doc = {"flow": plan.filename, "jobs": [job_json(j) for j in plan.jobs],
           "root": _node_json(plan.root) if plan.root is not None else None}
    return json.dumps(doc, indent=2) + "\n"


def render_dot(plan: Plan) -> str:
    from .plan_dot import render_dot as dot    # its own module: layout, escaping, collapsing

    return dot(plan)


RENDERERS = {"text": render_text, "json": render_json, "dot": render_dot}
