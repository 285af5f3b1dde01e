"""AST to Plan: resolve names, call defs, dedupe invocations, report static errors.

Like a resolver pass in a tree-walk interpreter, it reports *every* static
error it can find before anything runs. It knows nothing of hosts: whether a
placement target exists is asked through the ``is_target`` callable.
"""
from __future__ import annotations

import difflib
import inspect
import os
import re
import traceback
import types
from dataclasses import dataclass, field
from typing import Any, Callable

from . import ast
from ._gc import paused
from .errors import Diagnostic, FlowError, short
from .files.spec import Command, JobFiles, SpecError
from .files.spec import resolve as resolve_files
from .parser import parse
from .plan import Job, JobRef, Plan, PlanNode, PPar, PSeq, PSum
from .tasks import ModuleNotFound, TaskLoader, exec_inline_def, options_of, public_tasks, reraise_interrupt

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_MISSING = object()
_PLAN_KIND = {ast.Seq: PSeq, ast.Par: PPar, ast.Sum: PSum}


@dataclass
class _Binding:
    expr: ast.Expr
    compiled: dict[str | None, PlanNode | None] = field(default_factory=dict)


class _Compiler:
    def __init__(self, filename: str, source: str, loader: TaskLoader,
                 is_target: Callable[[str], bool] | None, target_names: list[str]):
        self.filename = filename
        self.lines = source.splitlines()
        self.loader = loader
        self.is_target = is_target
        self.target_names = target_names
        self.names: dict[str, Any] = {}  # name -> callable | module | _Binding
        self.diags: list[Diagnostic] = []
        self.jobs: dict[tuple, Job] = {}
        self.job_refs: dict[int, JobRef] = {}
        # (ids of name parts, args, kwargs; target) -> compiled reference; valid while
        # the namespace is unchanged (every statement that binds a name clears it) and
        # the AST is alive (so no id is reused)
        self._refs: dict[tuple, PlanNode | None] = {}
        self._signatures: dict[int, _Signature | None] = {}
        self._alive: list[Callable] = []

    # -------------------------------------------------------------- reporting
    def error(self, pos: ast.Pos, message: str, width: int = 1, notes: tuple[str, ...] = ()) -> None:
        line = self.lines[pos.line - 1] if 0 < pos.line <= len(self.lines) else ""
        self.diags.append(Diagnostic(self.filename, pos.line, pos.column, message, line, width, notes))

    def _suggest(self, name: str, candidates: list[str]) -> str:
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
        return f" (did you mean '{close[0]}'?)" if close else ""

    # ------------------------------------------------------------- statements
    def statement(self, stmt: ast.Stmt) -> ast.Expr | None:
        if not isinstance(stmt, ast.ExprStmt):
            self._refs.clear()
        match stmt:
            case ast.Import(module, alias):
                mod = self._load(module, stmt.pos)
                if mod is not None:
                    self.names[alias or module] = mod
            case ast.FromImport(module, None):
                mod = self._load(module, stmt.pos)
                if mod is not None:
                    self.names.update(public_tasks(mod))
            case ast.FromImport(module, names):
                mod = self._load(module, stmt.pos)
                if mod is not None:
                    available = public_tasks(mod)
                    for name, alias in names or ():
                        fn = getattr(mod, name, None)
                        if not callable(fn):
                            self.error(self._imported_name_pos(stmt.pos, name), f"module '{module}' has no task "
                                       f"'{name}'" + self._suggest(name, list(available)), len(name))
                            continue
                        self.names[alias or name] = fn
            case ast.Def(name, source):
                self._define(stmt, name, source)
            case ast.Bind(name, expr):
                # check the expression now, so errors point at it once
                binding = _Binding(expr)
                binding.compiled[None] = self.expr(expr, None)
                self.names[name] = binding
            case ast.ExprStmt(expr):
                return expr
        return None

    def _imported_name_pos(self, pos: ast.Pos, name: str) -> ast.Pos:
        """Where a name stands after 'import' on a from-import's line (the statement's start if not found)."""
        line = self.lines[pos.line - 1] if 0 < pos.line <= len(self.lines) else ""
        at = re.search(r"\bimport\b", line[pos.column - 1:])
        if at:
            m = re.compile(rf"\b{re.escape(name)}\b").search(line, pos.column - 1 + at.end())
            if m:
                return ast.Pos(pos.line, m.start() + 1)
        return pos

    def _load(self, module: str, pos: ast.Pos) -> types.ModuleType | None:
        try:
            return self.loader.load(module)
        except ModuleNotFound:
            self.error(pos, f"no task module '{module}' (looked for {module.replace('.', '/')}.py next to the flow, "
                       f"on CMFLOW_PATH and on sys.path)", 1)
        except SyntaxError as e:
            self.error(pos, f"task module '{module}' has a syntax error: {e.filename}:{e.lineno}: {e.msg}")
        except BaseException as e:  # the module's own code raised while importing (sys.exit too)
            reraise_interrupt(e)
            self.error(pos, f"task module '{module}' failed to import: {type(e).__name__}: {e}",
                       notes=tuple(_user_frames(e)))
        return None

    def _define(self, stmt: ast.Def, name: str, source: str) -> None:
        try:
            namespace = exec_inline_def(source, self.filename, stmt.pos.line)
        except SyntaxError as e:
            pos = ast.Pos(e.lineno or stmt.pos.line, e.offset or 1)
            self.error(pos, f"invalid Python in def {name}: {e.msg}")
            return
        except BaseException as e:  # a decorator raised (e.g. @task with a bad option)
            reraise_interrupt(e)
            self.error(stmt.pos, f"def {name}: {type(e).__name__}: {e}", 3, tuple(_user_frames(e)))
            return
        fn = namespace.get(name)
        if not callable(fn):
            self.error(stmt.pos, f"def {name} did not define a callable named {name}")
            return
        self.names[name] = fn

    # ------------------------------------------------------------ expressions
    def expr(self, node: ast.Expr, target: str | None) -> PlanNode | None:
        """Compile one expression under an enclosing placement; None after an error."""
        kind = type(node)
        if kind is ast.Call:
            # Keyed by identity: the parser shares one tuple per distinct call text, so
            # repeated calls hit without hashing their arguments; equal calls written
            # differently miss here and meet again in _job's value-keyed table.
            key = (id(node.name.parts), id(node.args), id(node.kwargs), target)
            ref = self._refs.get(key, _MISSING)
            if ref is _MISSING:
                ref = self._refs[key] = self._reference(node.name, node.args, node.kwargs, target, node.pos,
                                                        call=True)
            return ref
        if kind is ast.Name:
            key = (id(node.parts), target)
            ref = self._refs.get(key, _MISSING)
            if ref is _MISSING:
                ref = self._refs[key] = self._reference(node, (), (), target, node.pos)
            return ref
        if kind is ast.Seq or kind is ast.Par or kind is ast.Sum:
            refs, parts = self._refs, []
            for item in node.items:  # type: ignore[union-attr]
                # the hot path (a call seen before) inline: a big flow is mostly that
                if type(item) is ast.Call:
                    ref = refs.get((id(item.name.parts), id(item.args), id(item.kwargs), target), _MISSING)
                    parts.append(self.expr(item, target) if ref is _MISSING else ref)
                else:
                    parts.append(self.expr(item, target))
            if None in parts:
                return None
            if kind is ast.Sum:
                # a job's reference is shared by every place that names it; an operand of '+'
                # gets its own, so a failed addition points at the operands as written
                parts = [JobRef(p.job, item.pos) if type(p) is JobRef and p.pos != item.pos else p
                         for p, item in zip(parts, node.items)]  # type: ignore[union-attr]
            return _PLAN_KIND[kind](tuple(parts), node.pos)  # type: ignore[arg-type]
        if kind is ast.Placed:
            if not self._check_target(node.target, node.pos):
                return self.expr(node.expr, target)  # still look for errors inside
            # the innermost placement wins: it is the more specific one
            return self.expr(node.expr, node.target)
        raise TypeError(node)

    def _check_target(self, where: str, pos: ast.Pos) -> bool:
        try:
            if self.is_target is None or self.is_target(where):
                return True
            why = f"unknown host, group or label {short(where)}" + self._suggest(where, self.target_names)
        except ValueError as e:      # a bad or too large node set
            why = str(e)
        # point at the target itself, after the '@'
        line = self.lines[pos.line - 1] if 0 < pos.line <= len(self.lines) else ""
        at = line.find("@", pos.column - 1)
        col = line.find(where, at) + 1 if at >= 0 and line.find(where, at) >= 0 else pos.column
        self.error(ast.Pos(pos.line, col), why, len(where))
        return False

    def _lookup(self, name: ast.Name) -> Any:
        # the longest dotted prefix that is bound: "import a.b" binds "a.b"
        for cut in range(len(name.parts), 0, -1):
            if ".".join(name.parts[:cut]) in self.names:
                break
        head, rest = ".".join(name.parts[:cut]), name.parts[cut:]
        if head not in self.names:
            self.error(name.pos, f"unknown name '{head}'" + self._suggest(head, list(self.names)), len(head))
            return None
        value = self.names[head]
        for i, part in enumerate(rest):
            prefix = ".".join(name.parts[:cut + i])
            if not isinstance(value, types.ModuleType):
                self.error(name.pos, f"'{prefix}' is not a module", len(name.dotted))
                return None
            nxt = getattr(value, part, None)
            if nxt is None or not callable(nxt) and not isinstance(nxt, types.ModuleType):
                # the caret under the part that is wrong, not the whole dotted name
                self.error(ast.Pos(name.pos.line, name.pos.column + len(prefix) + 1), f"module '{prefix}' has no "
                           f"task '{part}'" + self._suggest(part, list(public_tasks(value))), len(part))
                return None
            value = nxt
        return value

    def _reference(self, name: ast.Name, args: tuple, kwargs: tuple, target: str | None, pos: ast.Pos,
                   call: bool = False) -> PlanNode | None:
        value = self._lookup(name)
        if value is None:
            return None
        if isinstance(value, _Binding):
            if call:
                self.error(pos, f"'{name.dotted}' names a sub-flow, not a task; it takes no arguments",
                           len(name.dotted))
                return None
            if target not in value.compiled:
                value.compiled[target] = self.expr(value.expr, target)
            return value.compiled[target]
        if isinstance(value, types.ModuleType):
            self.error(pos, f"'{name.dotted}' is a module; name one of its tasks ({name.dotted}.NAME)",
                       len(name.dotted))
            return None
        return self._job(value, name, args, kwargs, target, pos)

    def _job(self, fn: Callable, name: ast.Name, args: tuple, kwargs: tuple, target: str | None,
             pos: ast.Pos) -> PlanNode | None:
        options = options_of(fn)
        if target is None and options.hosts is not None:
            if not self._check_target(options.hosts, pos):
                return None
            target = options.hosts
        # one invocation however it is written: f(1), f(level=1) and f() (default 1) bind alike;
        # repr keeps 1, 1.0 and True apart (they hash alike)
        bound = _bind(self._signature(fn), args, kwargs)
        key = (id(fn), repr(bound), "", target) if bound is not None else (id(fn), repr(args), repr(kwargs), target)
        job = self.jobs.get(key)
        if job is None:
            command = self._call(fn, name, args, kwargs, pos)
            if command is None:
                return None
            files = None
            if isinstance(command, Command) or options.files is not None:
                files = self._files(command, options, name, pos)
                if files is None:
                    return None
                command = str(command)
            job = Job(len(self.jobs) + 1, name.dotted, args, kwargs, target, command, options, self.filename, pos,
                      files or None)
            self.jobs[key] = job
        ref = self.job_refs.get(job.id)
        if ref is None:
            ref = self.job_refs[job.id] = JobRef(job, pos)
        return ref

    def _signature(self, fn: Callable) -> _Signature | None:
        sig = self._signatures.get(id(fn), _MISSING)
        if sig is _MISSING:
            sig = self._signatures[id(fn)] = _signature_of(fn)
            self._alive.append(fn)     # the id stays this function's for the compilation
        return sig  # type: ignore[return-value]

    def _files(self, command: str | Command, options: Any, name: ast.Name, pos: ast.Pos) -> JobFiles | None:
        own = options.files
        try:
            return resolve_files(command if isinstance(command, Command) else None,
                                 own.inputs if own else (), own.outputs if own else (), self.loader.flow_dir,
                                 own.publish if own else ())
        except SpecError as e:
            self.error(pos, f"task '{name.dotted}': {e}", len(name.dotted))
            return None

    def _call(self, fn: Callable, name: ast.Name, args: tuple, kwargs: tuple, pos: ast.Pos) -> str | Command | None:
        py_args = [_to_python(a) for a in args]
        py_kwargs = {k: _to_python(v) for k, v in kwargs}
        try:
            command = fn(*py_args, **py_kwargs)
        except BaseException as e:     # SystemExit, GeneratorExit...: all the def's own error
            reraise_interrupt(e)
            # A TypeError may be a bad call or the def's own bug: the signature tells
            # (bound only here, off the hot path: binding costs more than calling).
            if isinstance(e, TypeError) and (why := _bad_arguments_of(fn, py_args, py_kwargs)):
                self.error(pos, f"bad arguments for task '{name.dotted}': {why}", len(name.dotted))
            else:
                self.error(pos, f"task '{name.dotted}' raised {type(e).__name__}: {str(e)[:300]}", len(name.dotted),
                           tuple(_user_frames(e)))
            return None
        if not isinstance(command, (str, Command)):
            self.error(pos, f"task '{name.dotted}' returned {type(command).__name__}, not a command string",
                       len(name.dotted))
            return None
        return command


# A def's parameters: (names in order, how many take a position, the names a keyword may give, defaults)
_Signature = tuple[tuple[str, ...], int, frozenset[str], dict[str, Any]]


def _signature_of(fn: Callable) -> _Signature | None:
    """The parameters, when every one is named (no *args or **kwargs); else None (calls compare as written)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names: list[str] = []
    positional = 0
    by_keyword: set[str] = set()
    defaults: dict[str, Any] = {}
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return None
        names.append(p.name)
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            by_keyword.add(p.name)
        if p.default is not p.empty:
            defaults[p.name] = p.default
    return tuple(names), positional, frozenset(by_keyword), defaults


def _bind(sig: _Signature | None, args: tuple, kwargs: tuple) -> tuple | None:
    """The call's arguments in parameter order, defaults filled in; None if it does not bind (the call says why)."""
    if sig is None:
        return None
    names, positional, by_keyword, defaults = sig
    if len(args) > positional:
        return None
    bound = dict(zip(names, args))
    for k, v in kwargs:
        if k in bound or k not in by_keyword:
            return None
        bound[k] = v
    try:
        return tuple(bound[n] if n in bound else defaults[n] for n in names)
    except KeyError:
        return None


def _bad_arguments_of(fn: Callable, args: list, kwargs: dict) -> str | None:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        return str(e)
    except ValueError:
        pass  # no signature (a builtin): the call's own error stands
    return None


def _to_python(value: Any) -> Any:
    return [_to_python(v) for v in value] if isinstance(value, tuple) else value


def _user_frames(exc: BaseException) -> list[str]:
    """The traceback without cmflow's own frames: the def's file and line are what matter."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_PKG_DIR)]
    out = ["    Traceback (the task's own frames):"]
    for f in frames:
        out.append(f'      File "{f.filename}", line {f.lineno}, in {f.name}')
        if f.line:
            out.append(f"        {f.line}")
    return out if frames else []


def compile_flow(flow: ast.Flow, source: str, *, loader: TaskLoader | None = None,
                 is_target: Callable[[str], bool] | None = None, target_names: list[str] | None = None) -> Plan:
    """Compile a parsed flow to a Plan, or raise FlowError listing every static error."""
    c = _Compiler(flow.filename, source, loader or TaskLoader.for_flow(flow.filename), is_target,
                  target_names or [])
    exprs: list[tuple[ast.Expr, PlanNode | None]] = []
    try:
        with paused():
            for stmt in flow.statements:
                expr = c.statement(stmt)
                if expr is not None:
                    exprs.append((expr, c.expr(expr, None)))
    except RecursionError:
        c.error(ast.Pos(1, 1), "expression nested too deeply")
    if c.diags:
        raise FlowError(c.diags)
    nodes = [n for _, n in exprs if n is not None]
    root: PlanNode | None
    if not nodes:
        root = None
    elif len(nodes) == 1:
        root = nodes[0]
    else:
        # several expression statements run in order, as if joined by ';'
        flat: list[PlanNode] = []
        for n in nodes:
            flat.extend(n.items if isinstance(n, PSeq) else (n,))
        root = PSeq(tuple(flat), exprs[0][0].pos)
    return Plan(root, tuple(c.jobs.values()), flow.filename)


def compile_text(source: str, filename: str = "<flow>", **kw: Any) -> Plan:
    return compile_flow(parse(source, filename), source, **kw)


def compile_file(path: str, **kw: Any) -> Plan:
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except OSError as e:
        raise FlowError([Diagnostic(path, 0, 0, f"cannot read flow file: {e.strerror}")]) from None
    except UnicodeDecodeError as e:
        raise FlowError([Diagnostic(path, 1, 1, f"flow file is not UTF-8 text ({e.reason})")]) from None
    return compile_flow(parse(source, path), source, **kw)
