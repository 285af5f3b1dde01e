"""``cmflow plan --format dot``: the plan as a Graphviz graph a person can read.

Layout carries the meaning, left to right: a sequence is a chain of stages
(each stage starts after the one before it ends); ``|`` forks into its operands
and joins them into a list, ``+`` forks and adds them at a ``+`` node, the
operands kept top to bottom in the order written (``ordering=out``). A job
referenced again (a memoised call) is drawn as a dashed "reused" box, not as an
edge back across the graph. Runs of similar siblings are collapsed into one
node ("3000 × t(0 … 2999)"), and no composite shows more than a screenful of
children, so a plan of any size stays a picture Graphviz can lay out.

Labels are Graphviz strings: UTF-8 as is, quotes and backslashes escaped,
lines left-justified with ``\\l``, tabs expanded, control characters shown,
and a visible ellipsis where a command was cut.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .ast import unparse_literal
from .plan import Deferred, Job, JobRef, Local, Plan, PlanNode, PPar, PSeq, PSum, walk

LINE_CHARS = 60          # a command line is cut after this many characters
COMMAND_LINES = 3        # and a command after this many lines
COLLAPSE_RUN = 5         # this many similar siblings in a row become one node
MAX_CHILDREN = 24        # at most this many children of one composite are drawn
ELLIPSIS = "…"


def dot_string(text: str) -> str:
    """A Graphviz double-quoted string whose label shows ``text`` as written, lines left-justified."""
    out = []
    for ch in text.expandtabs(4):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\l")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\\\x{ord(ch):02x}")   # shown as the text \x1b, not sent to the renderer
        else:
            out.append(ch)
    return '"' + "".join(out) + '\\l"'


def cut_command(command: str) -> str:
    """At most COMMAND_LINES lines of LINE_CHARS characters, with an ellipsis wherever something was cut."""
    lines = command.rstrip("\n").split("\n")
    shown = []
    for line in lines[:COMMAND_LINES]:
        shown.append(line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + ELLIPSIS)
    if len(lines) > COMMAND_LINES:
        shown.append(ELLIPSIS)
    return "\n".join(shown)


def _job_text(job: Job) -> str:
    command = cut_command(job.command).replace("\n", "\n  ")
    return f"#{job.id} {job.label}\n$ {command}"


@dataclass(frozen=True)
class _Group:
    """Siblings drawn as one node: a run of similar ones, or the rest past MAX_CHILDREN."""
    items: Sequence[PlanNode]
    similar: bool


def _jobs_under(nodes: Iterable[PlanNode]) -> list[Job]:
    jobs: dict[int, Job] = {}
    for n in nodes:
        for m in walk(n):
            if isinstance(m, JobRef):
                jobs.setdefault(m.job.id, m.job)
    return list(jobs.values())


def _range_text(values: list[Any]) -> str:
    """How one argument varies across a collapsed run: its value, a numeric range, or an ellipsis."""
    first = values[0]
    if all(v == first for v in values):
        return unparse_literal(first)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return f"{min(values)} {ELLIPSIS} {max(values)}"
    return ELLIPSIS


def _pattern(nodes: Sequence[PlanNode]) -> str:
    """What a run of similar siblings has in common, e.g. ``t(0 … 2999)`` or ``Seq[prep(…), run(…)]``."""
    first = nodes[0]
    match first:
        case JobRef(job):
            jobs = [n.job for n in nodes]  # type: ignore[union-attr]
            parts = [_range_text([j.args[i] for j in jobs]) for i in range(len(job.args))]
            parts += [f"{k}={_range_text([dict(j.kwargs)[k] for j in jobs])}" for k, _ in job.kwargs]
            text = f"{job.task}({', '.join(parts)})" if parts else job.task
            return f"{text} @ {job.target}" if job.target else text
        case PSeq(items) | PPar(items) | PSum(items):
            text = f"{type(first).__name__[1:]}[{', '.join(_outline(i) for i in items[:4])}" + \
                   (f", {ELLIPSIS}]" if len(items) > 4 else "]")
            return text if len(text) <= LINE_CHARS else text[:LINE_CHARS] + ELLIPSIS
    return type(first).__name__


def _outline(node: PlanNode) -> str:
    match node:
        case JobRef(job):
            return f"{job.task}({ELLIPSIS})" if job.args or job.kwargs else job.task
        case PSeq(items) | PPar(items) | PSum(items):
            return f"{type(node).__name__[1:]}[{ELLIPSIS}]"
    return type(node).__name__


class _DotWriter:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.out = ["digraph plan {", "  rankdir=LR;", "  compound=true;", '  charset="UTF-8";',
                    '  node [fontname="monospace", fontsize=10];', '  edge [arrowsize=0.6];']
        self.count = 0
        self.clusters = 0
        self.job_node: dict[int, str] = {}          # job id -> the node it is drawn in first
        self.drawn: dict[int, str] = {}             # id(composite) -> its fork node, when drawn once already
        self.keys: dict[int, Any] = {}
        self.depth = 1
        # edges to a node drawn earlier: at top level, because a node named inside a cluster joins it
        self.links: list[str] = []

    # ---------------------------------------------------------- primitives
    def node(self, attrs: str) -> str:
        name = f"n{self.count}"
        self.count += 1
        self.out.append(f"{'  ' * self.depth}{name} [{attrs}];")
        return name

    def edge(self, a: str, b: str, attrs: str = "") -> None:
        self.out.append(f"{'  ' * self.depth}{a} -> {b}{f' [{attrs}]' if attrs else ''};")

    def link(self, first: str, again: str) -> None:
        """A dotted line from where something is drawn first to where it is used again; no effect on layout."""
        self.links.append(f"  {first} -> {again} [style=dotted, color=gray60, arrowhead=none, constraint=false];")

    def open_cluster(self, label: str) -> None:
        self.clusters += 1
        self.out.append(f"{'  ' * self.depth}subgraph cluster_{self.clusters} {{")
        self.depth += 1
        self.out.append(f"{'  ' * self.depth}label={dot_string(label)}; labeljust=l; style=rounded; color=gray70; "
                        "fontcolor=gray40;")

    def close_cluster(self) -> None:
        self.depth -= 1
        self.out.append(f"{'  ' * self.depth}}}")

    # ------------------------------------------------------------ grouping
    def key(self, node: PlanNode) -> Any:
        """Nodes with equal keys differ only in their arguments: they may be collapsed together."""
        k = self.keys.get(id(node))
        if k is None:
            match node:
                case JobRef(job):
                    k = ("job", job.task, job.target, len(job.args), tuple(name for name, _ in job.kwargs))
                case PSeq(items) | PPar(items) | PSum(items):
                    k = (type(node).__name__, tuple(self.key(i) for i in items))
                case _:
                    k = (type(node).__name__, id(node))
            self.keys[id(node)] = k
        return k

    def groups(self, items: Sequence[PlanNode]) -> list[PlanNode | _Group]:
        shown: list[PlanNode | _Group] = []
        i = 0
        while i < len(items):
            j = i + 1
            while j < len(items) and self.key(items[j]) == self.key(items[i]):
                j += 1
            if j - i >= COLLAPSE_RUN:
                shown.append(_Group(items[i:j], True))
            else:
                shown.extend(items[i:j])
            i = j
        if len(shown) > MAX_CHILDREN:
            rest = shown[MAX_CHILDREN - 1:]
            flat = [n for g in rest for n in (g.items if isinstance(g, _Group) else [g])]
            shown = shown[:MAX_CHILDREN - 1] + [_Group(flat, False)]
        return shown

    # ------------------------------------------------------------- drawing
    def draw(self, node: PlanNode | _Group) -> tuple[str, str]:
        """Draw a node; return its entry and exit (the nodes a sequence chains from and to)."""
        match node:
            case _Group(items, similar):
                jobs = _jobs_under(items)
                if similar:
                    text = f"{len(items)} × {_pattern(items)}"
                    if isinstance(items[0], JobRef):
                        text += f"\n$ {cut_command(items[0].job.command).splitlines()[0]} {ELLIPSIS}"
                else:
                    text = f"{ELLIPSIS} {len(items)} more ({len(jobs)} job{'s' if len(jobs) != 1 else ''})"
                n = self.node(f"shape={'box3d' if similar else 'note'}, label={dot_string(text)}")
                for job in jobs:
                    self.job_node.setdefault(job.id, n)
                return n, n
            case JobRef(job):
                first = self.job_node.get(job.id)
                if first is not None:
                    n = self.node(f"shape=box, style=dashed, color=gray40, "
                                  f"label={dot_string(f'#{job.id} {job.label} (reused)')}")
                    self.link(first, n)
                    return n, n
                n = self.node(f"shape=box, label={dot_string(_job_text(job))}")
                self.job_node[job.id] = n
                return n, n
        if id(node) in self.drawn:
            n = self.node(f"shape=box, style=\"dashed,rounded\", color=gray40, "
                          f"label={dot_string(_pattern([node]) + ' (again)')}")
            self.link(self.drawn[id(node)], n)
            return n, n
        match node:
            case PSeq(items):
                return self.sequence(node, items)
            case PPar(items):
                return self.fork_join(node, items, "| at once", 'shape=circle, label="|", ordering=out',
                                      "shape=point, width=0.08", "")
            case PSum(items):
                op = node.fn_name if node.fn is not None else "+"     # fold(f, ...) reduces with f, in order
                return self.fork_join(node, items, f"{op} added" if op == "+" else f"fold {op}",
                                      "shape=point, width=0.08, ordering=out",
                                      'shape=circle, label="+"' if op == "+" else
                                      f"shape=ellipse, label={dot_string(op)}", "ordering=in, ")
            case Deferred() | Local():
                return self.call(node, node.inputs)
        items = getattr(node, "items", ())          # a kind of node this renderer does not know yet
        n = self.node(f"shape=box, style=rounded, label={dot_string(type(node).__name__)}")
        self.drawn[id(node)] = n
        for item in items:
            entry, _ = self.draw(item)
            self.edge(n, entry)
        return n, n

    def call(self, node: Deferred | Local, inputs: Sequence[PlanNode]) -> tuple[str, str]:
        """A call on run-time values (a task whose command needs them, or a local function): its inputs first,
        then the call, so it sits right of what it waits for."""
        ends = [self.draw(part) for part in self.groups(inputs)]
        if isinstance(node, Deferred):
            n = self.node(f"shape=box, style=dashed, label={dot_string(node.label + chr(10) + '(deferred)')}")
        else:
            n = self.node(f"shape=box, style=rounded, label={dot_string(node.label + chr(10) + '(local)')}")
        self.drawn[id(node)] = n
        if not ends:
            return n, n
        if len(ends) == 1:
            self.edge(ends[0][1], n)
            return ends[0][0], n
        fork = self.node("shape=point, width=0.08, ordering=out")
        for entry, exit_ in reversed(ends):
            self.edge(fork, entry)
            self.edge(exit_, n)
        return fork, n

    def sequence(self, node: PlanNode, items: Sequence[PlanNode]) -> tuple[str, str]:
        nested = node is not self.plan.root
        if nested:
            self.open_cluster("; in order")
        entry = exit_ = ""
        for part in self.groups(items):
            first, last = self.draw(part)
            if exit_:
                self.edge(exit_, first, "style=bold")
            else:
                entry = first
                self.drawn[id(node)] = first
            exit_ = last
        if nested:
            self.close_cluster()
        return entry, exit_

    def fork_join(self, node: PlanNode, items: Sequence[PlanNode], title: str, fork_attrs: str, join_attrs: str,
                  join_extra: str) -> tuple[str, str]:
        nested = node is not self.plan.root
        if nested:
            self.open_cluster(title)
        fork = self.node(fork_attrs)
        self.drawn[id(node)] = fork
        ends = [self.draw(part) for part in self.groups(items)]
        join = self.node(join_extra + join_attrs)
        # rankdir=LR turns dot's left-to-right order into bottom-to-top: edges in reverse put the first on top
        for entry, exit_ in reversed(ends):
            self.edge(fork, entry)
            self.edge(exit_, join)
        if nested:
            self.close_cluster()
        return fork, join

    def render(self) -> str:
        if self.plan.root is not None:
            self.draw(self.plan.root)
        else:
            self.node(f"shape=plaintext, label={dot_string('(no expression)')}")
        self.out += self.links
        self.out.append("}")
        return "\n".join(self.out) + "\n"


def render_dot(plan: Plan) -> str:
    return _DotWriter(plan).render()
