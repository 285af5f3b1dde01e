"""``cmflow repl``: evaluate flow expressions interactively.

Statements (imports, bindings, inline defs) accumulate in the session;
an expression is compiled together with them and run at once. The same API
as ``cmflow run`` does the work.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, TextIO

from . import api
from .compiler import compile_flow
from .errors import CmflowError, FlowError
from .options import RunOptions
from .hosts import Inventory
from .ast import ExprStmt, Flow, Stmt
from .parser import parse
from .plan import render_text
from .rundir import SESSION, RunLock
from .runlog import new_run_id, write_atomic
from .tasks import TaskLoader

HELP = """Enter a flow expression to run it, e.g.  a | b   or   (a | b); a + b
Statements stay for the session: import m / from m import a / x = a | b / def f(): ...
(a def ends with a blank line).
  :plan EXPR   show the jobs EXPR would run, without running them
  :hosts       the inventory
  :reset       forget the session's statements
  :help        this text
  :quit        leave (or Ctrl-D)"""


@dataclass
class Session:
    inventory: Inventory
    options: RunOptions = RunOptions()
    task_dirs: list[str] = field(default_factory=list)   # folders of --tasks files, searched first
    statements: list[Stmt] = field(default_factory=list)     # parsed once, each from its own input
    run_root: Path = Path("runs")
    session_dir: Path | None = field(default=None, init=False)   # runs/repl-ID, made at the first evaluation
    evaluations: int = field(default=0, init=False)
    _lock: RunLock | None = field(default=None, init=False, repr=False)

    def next_run_dir(self) -> Path:
        """The session shares one folder: each evaluation is a run directory inside it (0001, 0002, ...)."""
        if self.session_dir is None:
            d = self.run_root / f"repl-{new_run_id()}"
            d.mkdir(parents=True, exist_ok=True)
            write_atomic(d / SESSION, json.dumps({"kind": "repl", "started": time.time(), "pid": os.getpid()}) + "\n")
            self._lock = RunLock(d)   # held while the session lasts: runs clean leaves it alone
            self.session_dir = d
        self.evaluations += 1
        return self.session_dir / f"{self.evaluations:04d}"

    def close(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _compile(self, text: str, new: tuple[Stmt, ...]):
        # error positions are those of the new input: earlier statements compiled already
        base = TaskLoader.for_flow(None)
        loader = TaskLoader(base.flow_dir, [*self.task_dirs, *base.search_path])
        return compile_flow(Flow((*self.statements, *new), "<repl>"), text, loader=loader,
                            **api.target_kw(self.inventory))

    def handle(self, text: str) -> str:
        """One input (a line, or a def block); returns what to print."""
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            return ""
        if stripped.startswith(":"):
            return self._command(stripped)
        new = parse(text, "<repl>").statements
        if not any(isinstance(s, ExprStmt) for s in new):
            self._compile(text, new)          # check it before it joins the session
            self.statements.extend(new)
            return ""
        plan = self._compile(text, new)
        run = api.run_sync(plan, self.inventory, self.options, self.next_run_dir(), display="quiet")
        if run.result.ok:
            from .cli import format_value

            return format_value(run.result.value, "text")
        lines = [f"failed: {f.job.label + ' on ' + str(f.host) + ': ' if f.job else ''}{f.reason}"
                 for f in run.result.failures] or ["interrupted"]
        return "\n".join(lines)

    def _command(self, cmd: str) -> str:
        name, _, rest = cmd.partition(" ")
        if name == ":plan":
            return render_text(self._compile(rest, parse(rest, "<repl>").statements)).rstrip()
        if name == ":hosts":
            return "\n".join(f"{h.name}: {'local' if h.local else h.hostname}, {h.slots} slots"
                             for h in self.inventory.hosts)
        if name == ":reset":
            self.statements.clear()
            return "session cleared"
        if name == ":help":
            return HELP
        raise CmflowError(f"unknown command {name} (try :help)")


def _goes_on(block: str) -> bool:
    """The input so far is a statement (or :plan EXPR) that ends too early: more lines may complete it."""
    text = block.lstrip()
    if text.startswith(":"):
        name, _, text = text.partition(" ")
        if name != ":plan" or not text.strip():
            return False
    try:
        parse(text, "<repl>")
    except FlowError as e:
        return any(d.message.startswith("unexpected end of input") for d in e.diagnostics)
    return False


def run_repl(tasks: Sequence[str], inventory: Inventory, stdin: TextIO = sys.stdin,
             stdout: TextIO = sys.stdout) -> int:
    session = Session(inventory, task_dirs=[str(Path(t).resolve().parent) for t in tasks if t.endswith(".py")])
    for t in tasks:
        session.handle(f"from {Path(t).stem if t.endswith('.py') else t} import *")
    interactive = stdin.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        stdout.write("cmflow repl: :help for help, Ctrl-D to leave\n")
    try:
        while True:
            try:
                line = input("cmflow> ") if interactive else stdin.readline()
            except EOFError:
                break
            except KeyboardInterrupt:
                stdout.write("\n")
                continue
            if not interactive and line == "":
                break
            if line.strip() in (":quit", ":q", ":exit"):
                break
            block = line if line.endswith("\n") else line + "\n"
            # a def block reads on until a blank line; any other statement, as in a flow file,
            # goes on after an open bracket or a binary operator (a blank line ends it anyway)
            is_def = line.lstrip().startswith(("def ", "@"))
            while is_def or _goes_on(block):
                more = input("   ...> ") if interactive else stdin.readline()
                if not more.strip():
                    break
                block += more if more.endswith("\n") else more + "\n"
            try:
                out = session.handle(block)
            except CmflowError as e:
                out = str(e)
            except KeyboardInterrupt:
                out = "interrupted"
            if out:
                stdout.write(out + "\n")
                stdout.flush()
    finally:
        session.close()
    return 0
