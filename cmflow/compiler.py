"""AST to Plan: resolve names, call defs, dedupe invocations, report static errors.

Like a resolver pass in a tree-walk interpreter, it reports *every* static
error it can find before anything runs. It knows nothing of hosts: whether a
placement target exists is asked through the ``is_target`` callable, and the
host names ``hosts(TARGET)`` loops over through ``hosts_of``.

Generators are expanded here: loop variables are compile-time values, so the
plan lists every expanded job. Arguments that are expressions become inputs
of a Deferred job or a Local call, evaluated at run time.
"""
from __future__ import annotations

import inspect
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from . import ast, values
from ._gc import paused
from .errors import Diagnostic, FlowError, short, source_lines
from .files.spec import Command, JobFiles, SpecError
from .files.spec import resolve as resolve_files
from .parser import parse
from .plan import Deferred, Input, Job, JobRef, Local, Plan, PlanNode, PPar, PSeq, PSum
from .tasks import (ModuleNotFound, TaskLoader, exec_inline_def, is_local, options_of, public_tasks, reraise_interrupt,
                    user_frames)

_MISSING = object()
MAX_ITEMS = 1_000_000     # items one generator (fan-out) may make: a flow of a few bytes stays cheap
MAX_BINDINGS = 2 * MAX_ITEMS   # loop-variable bindings one generator may make, all its for clauses together
_PLAN_KIND = {ast.Seq: PSeq, ast.Par: PPar, ast.Sum: PSum}


@dataclass
class _Binding:
    expr: ast.Expr
    compiled: dict[str | None, PlanNode | None] = field(default_factory=dict)
    used: bool = False     # its unplaced compilation (made at the binding, to check it) was referenced


class _Compiler:
    def __init__(self, filename: str, source: str, loader: TaskLoader,
                 is_target: Callable[[str], bool] | None, target_names: list[str],
                 hosts_of: Callable[[str], Sequence[str]] | None = None):
        self.filename = filename
        self.hosts_of = hosts_of
        self.env: dict[str, Any] = {}          # loop variables of the generator items being compiled
        self._stmt_pos = ast.Pos(1, 1)
        self.lines = source_lines(source)
        self.loader = loader
        self.is_target = is_target
        self.target_names = target_names
        self.names: dict[str, Any] = {}  # name -> callable | module | _Binding
        self.diags: list[Diagnostic] = []
        self.bindings: list[_Binding] = []
        # names a failed import or def would have bound: the error is reported once, where the
        # name is defined, not again as "unknown name" at every use
        self._undefined: set[str] = set()
        self.jobs: list[Job] = []           # in id order
        # (id(fn), target) -> call key (see _call_key) -> the job's shared reference; two
        # levels, so that a million calls of one task hold a small key each, often their args
        self._calls: dict[tuple[int, str | None], dict[Any, JobRef]] = {}
        # (ids of name parts, args, kwargs; target) -> compiled reference; valid while
        # the namespace is unchanged (every statement that binds a name clears it) and
        # the AST is alive (so no id is reused)
        self._refs: dict[tuple, PlanNode | None] = {}
        self._signatures: dict[int, _Signature | None] = {}
        self._alive: list[Callable] = []

    # -------------------------------------------------------------- reporting
    def error(self, pos: ast.Pos, message: str, width: int = 1, notes: tuple[str, ...] = ()) -> None:
        line = self.lines[pos.line - 1] if 0 < pos.line <= len(self.lines) else ""
        if self.env:
            # an error in one expanded item names the item
            where = ", ".join(f"{k} = {_lit(v)}" for k, v in self.env.items())
            notes = (f"    in the generator item where {where}", *notes)
        self.diags.append(Diagnostic(self.filename, pos.line, pos.column, message, line, width, notes))

    def _suggest(self, name: str, candidates: list[str]) -> str:
        import difflib   # error path only (start-up time)

        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
        return f" (did you mean '{close[0]}'?)" if close else ""

    # ------------------------------------------------------------- statements
    def statement(self, stmt: ast.Stmt) -> ast.Expr | None:
        if not isinstance(stmt, ast.ExprStmt):
            self._refs.clear()
        self._stmt_pos = stmt.pos
        match stmt:
            case ast.Import(module, alias):
                mod = self._load(module, stmt.pos)
                if mod is not None:
                    self.names[alias or module] = mod
                else:
                    self._undefined.add(alias or module)
            case ast.FromImport(module, None):
                mod = self._load(module, stmt.pos)
                if mod is not None:
                    self.names.update(public_tasks(mod))
            case ast.FromImport(module, names):
                mod = self._load(module, stmt.pos)
                if mod is None:
                    self._undefined.update(alias or name for name, alias in names or ())
                else:
                    available = public_tasks(mod)
                    for name, alias in names or ():
                        fn = getattr(mod, name, None)
                        if not callable(fn):
                            self.error(self._imported_name_pos(stmt.pos, name), f"module '{module}' has no task "
                                       f"'{name}'" + self._suggest(name, list(available)), len(name))
                            self._undefined.add(alias or name)
                            continue
                        self.names[alias or name] = fn
            case ast.Def(name, source):
                self._define(stmt, name, source)
            case ast.Bind(name, expr):
                # check the expression now, so errors point at it once
                binding = _Binding(expr)
                binding.compiled[None] = self.expr(expr, None)
                self.names[name] = binding
                self.bindings.append(binding)
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
                       notes=tuple(user_frames(e)))
        return None

    def _define(self, stmt: ast.Def, name: str, source: str) -> None:
        self._undefined.add(name)     # until it is defined
        try:
            namespace = exec_inline_def(source, self.filename, stmt.pos.line)
        except SyntaxError as e:
            pos = ast.Pos(e.lineno or stmt.pos.line, e.offset or 1)
            self.error(pos, f"invalid Python in def {name}: {e.msg}")
            return
        except BaseException as e:  # a decorator raised (e.g. @task with a bad option), sys.exit too
            reraise_interrupt(e)
            self.error(stmt.pos, f"def {name}: {type(e).__name__}: {str(e)[:300]}", 3, tuple(user_frames(e)))
            return
        fn = namespace.get(name)
        if not callable(fn):
            self.error(stmt.pos, f"def {name} did not define a callable named {name}")
            return
        self.names[name] = fn
        self._undefined.discard(name)

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
                ref = self._refs[key] = self._call(node, target)  # type: ignore[arg-type]
            return ref
        if kind is ast.Name:
            if self.env and node.parts[0] in self.env:  # type: ignore[union-attr]
                self.error(node.pos, f"'{node.parts[0]}' is a loop variable (a value), not a task; "  # type: ignore[union-attr]
                           f"pass it to one: task({node.parts[0]})", len(node.parts[0]))  # type: ignore[union-attr]
                return None
            key = (id(node.parts), target)  # type: ignore[union-attr]
            ref = self._refs.get(key, _MISSING)
            if ref is _MISSING:
                ref = self._refs[key] = self._reference(node, target)  # type: ignore[arg-type]
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
            where = self._target(node.target, node.pos)  # type: ignore[union-attr]
            if where is None:
                return self.expr(node.expr, target)  # type: ignore[union-attr]  # still look for errors inside
            # the innermost placement wins: it is the more specific one
            return self.expr(node.expr, where)  # type: ignore[union-attr]
        if kind is ast.Gen:
            return self._gen(node, target)  # type: ignore[arg-type]
        raise TypeError(node)

    def _target(self, where: str, pos: ast.Pos) -> str | None:
        """The host, group or label a placement names (a loop variable gives its value)."""
        if where in self.env:
            value = self.env[where]
            if not isinstance(value, str):
                self.error(self._target_pos(where, pos), f"loop variable '{where}' is {_lit(value)}, "
                           "not a host, group or label name", len(where))
                return None
            where = value
        return where if self._check_target(where, pos) else None

    def _target_pos(self, where: str, pos: ast.Pos) -> ast.Pos:
        # point at the target itself, after the '@'
        line = self.lines[pos.line - 1] if 0 < pos.line <= len(self.lines) else ""
        at = line.find("@", pos.column - 1)
        col = line.find(where, at) + 1 if at >= 0 and line.find(where, at) >= 0 else pos.column
        return ast.Pos(pos.line, col)

    def _check_target(self, where: str, pos: ast.Pos) -> bool:
        shown = next((k for k, v in self.env.items() if v == where), where)
        try:
            if self.is_target is None or self.is_target(where):
                return True
            why = f"unknown host, group or label {short(where)}" + self._suggest(where, self.target_names)
        except ValueError as e:      # a bad or too large node set
            why = str(e)
        self.error(self._target_pos(shown, pos), why, len(shown))
        return False

    def _lookup(self, name: ast.Name) -> Any:
        # the longest dotted prefix that is bound: "import a.b" binds "a.b"
        for cut in range(len(name.parts), 0, -1):
            if ".".join(name.parts[:cut]) in self.names:
                break
        head, rest = ".".join(name.parts[:cut]), name.parts[cut:]
        if head not in self.names:
            if any(name.dotted == n or name.dotted.startswith(n + ".") for n in self._undefined):
                return None             # the failed import said why
            if head in BUILTINS and not rest:
                return BUILTINS[head]   # user names shadow the built-ins
            self.error(name.pos, f"unknown name '{head}'" + self._suggest(head, [*self.names, *BUILTINS]),
                       len(head))
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

    def _reference(self, name: ast.Name, target: str | None) -> PlanNode | None:
        """A name without brackets: a task called with no arguments, or a sub-flow."""
        value = self._lookup(name)
        if value is None:
            return None
        if isinstance(value, _Binding):
            value.used = value.used or target is None
            if target not in value.compiled:
                # a binding's text knows nothing of the loop variables where it is used
                saved, self.env = self.env, {}
                try:
                    value.compiled[target] = self.expr(value.expr, target)
                finally:
                    self.env = saved
            return value.compiled[target]
        if isinstance(value, types.ModuleType):
            self.error(name.pos, f"'{name.dotted}' is a module; name one of its tasks ({name.dotted}.NAME)",
                       len(name.dotted))
            return None
        if isinstance(value, _Builtin) or is_local(value):
            self.error(name.pos, f"'{name.dotted}' is a local function; call it on values: {name.dotted}(...)",
                       len(name.dotted))
            return None
        return self._job(value, name, (), (), target, name.pos)

    def _call(self, node: ast.Call, target: str | None) -> PlanNode | None:
        name = node.name
        if self.env and name.parts[0] in self.env:
            self.error(name.pos, f"'{name.parts[0]}' is a loop variable (a value), not a task",
                       len(name.parts[0]))
            return None
        value = self._lookup(name)
        if value is None:
            self._arguments(node.args, node.kwargs, target)  # still look for errors inside
            return None
        if isinstance(value, _Binding):
            self.error(node.pos, f"'{name.dotted}' names a sub-flow, not a task; it takes no arguments",
                       len(name.dotted))
            return None
        if isinstance(value, types.ModuleType):
            self.error(node.pos, f"'{name.dotted}' is a module; name one of its tasks ({name.dotted}.NAME)",
                       len(name.dotted))
            return None
        if isinstance(value, _Builtin) and value.form:
            return self._form(value, node, target)
        compiled = self._arguments(node.args, node.kwargs, target)
        if compiled is None:
            return None
        return self._apply(value, name, node.pos, *compiled, target)

    def _arguments(self, args: tuple, kwargs: tuple, target: str | None
                   ) -> tuple[tuple, tuple, tuple[PlanNode, ...]] | None:
        """Literal arguments stay; loop variables give their values; any other expression
        is compiled and becomes an Input slot, its value passed at run time."""
        if not any(ast.is_expr(a) for a in args) and not any(ast.is_expr(v) for _, v in kwargs):
            return args, kwargs, ()   # all literals: the parser's own tuples (shared by equal calls)
        inputs: list[PlanNode] = []
        ok = True

        def one(arg: Any) -> Any:
            nonlocal ok
            if not ast.is_expr(arg):
                return arg
            if type(arg) is ast.Name and len(arg.parts) == 1 and arg.parts[0] in self.env:
                return self.env[arg.parts[0]]
            compiled = self.expr(arg, target)
            if compiled is None:
                ok = False
                return None
            inputs.append(compiled)
            return Input(len(inputs) - 1)

        out_args = tuple(one(a) for a in args)
        out_kwargs = tuple((k, one(v)) for k, v in kwargs)
        return (out_args, out_kwargs, tuple(inputs)) if ok else None

    def _apply(self, fn: Any, name: ast.Name, pos: ast.Pos, args: tuple, kwargs: tuple,
               inputs: tuple[PlanNode, ...], target: str | None) -> PlanNode | None:
        """Call a task or local function with compiled arguments."""
        if isinstance(fn, _Builtin) or is_local(fn):
            impl = fn.fn if isinstance(fn, _Builtin) else fn
            if not isinstance(fn, _Builtin):
                why = _bad_arguments_of(impl, [_placeholder(a) for a in args],
                                        {k: _placeholder(v) for k, v in kwargs})
                if why:
                    self.error(pos, f"bad arguments for local function '{name.dotted}': {why}", len(name.dotted))
                    return None
            return Local(impl, name.dotted, tuple(_to_python(a) for a in args),
                         tuple((k, _to_python(v)) for k, v in kwargs), inputs, self.filename, pos)
        if not inputs:
            return self._job(fn, name, args, kwargs, target, pos)
        options = options_of(fn)
        if target is None and options.hosts is not None:
            if not self._check_target(options.hosts, pos):
                return None
            target = options.hosts
        why = _bad_arguments_of(fn, [_placeholder(a) for a in args], {k: _placeholder(v) for k, v in kwargs})
        if why:
            self.error(pos, f"bad arguments for task '{name.dotted}': {why}", len(name.dotted))
            return None
        return Deferred(fn, name.dotted, tuple(_to_python(a) for a in args),
                        tuple((k, _to_python(v)) for k, v in kwargs), inputs, target, options, self.filename, pos,
                        str(self.loader.flow_dir))

    # ----------------------------------------------------- built-in forms
    def _form(self, form: "_Builtin", node: ast.Call, target: str | None) -> PlanNode | None:
        """par(a, b), seq(a, b), sum(EXPR), fold(f, EXPR): structure, not a function of values."""
        name, pos = node.name.dotted, node.pos
        if node.kwargs:
            self.error(pos, f"{name}() takes no keyword arguments", len(name))
            return None
        if form.name == "fold":
            if len(node.args) != 2 or not isinstance(node.args[0], ast.Name):
                self.error(pos, "fold takes a local function and an expression: fold(f, EXPR)", len(name))
                return None
            fn = self._lookup(node.args[0])
            items = self._operand(node.args[1], target)
            if fn is None or items is None:
                return None
            if not (isinstance(fn, _Builtin) and not fn.form or is_local(fn)):
                self.error(node.args[0].pos, f"fold needs a local function (a def marked @local, or len, min, "
                           f"max, mean, sorted); '{node.args[0].dotted}' is not one", len(node.args[0].dotted))
                return None
            impl = fn.fn if isinstance(fn, _Builtin) else fn
            return self._reduce(impl, node.args[0].dotted, items, pos, "fold")
        operands = [self._operand(a, target) for a in node.args]
        if None in operands:
            return None
        if form.name == "sum":
            if len(operands) != 1:
                self.error(pos, "sum takes one list (sum(a | b)) or a generator (sum(f(i) for i in ...))",
                           len(name))
                return None
            return self._reduce(None, "+", operands[0], pos, "sum")  # type: ignore[arg-type]
        kind = PPar if form.name == "par" else PSeq
        return kind(tuple(operands), pos)  # type: ignore[arg-type]

    def _operand(self, arg: Any, target: str | None) -> PlanNode | None:
        if not ast.is_expr(arg):
            self.error(self._stmt_pos, f"expected an expression, not the literal {_lit(arg)}")
            return None
        return self.expr(arg, target)

    def _reduce(self, fn: Callable | None, fn_name: str, node: PlanNode, pos: ast.Pos, what: str
                ) -> PlanNode | None:
        """sum(...) / fold(f, ...): a list written as ``|`` (or a generator) is reduced eagerly
        as its items finish; any other list value once it is there."""
        if isinstance(node, PPar):
            if not node.items:
                self.error(pos, f"{what} over nothing: the list is empty", len(what))
                return None
            return PSum(node.items, pos, fn, fn_name)
        return Local(_reduce_list(fn), what if fn is None else f"fold[{fn_name}]", (Input(0),), (), (node,),
                     self.filename, pos)

    # ---------------------------------------------------------- generators
    def _gen(self, node: ast.Gen, target: str | None) -> PlanNode | None:
        head = self._lookup(node.name)
        items: list[PlanNode] = []
        ok = head is not None
        saved_env, saved_refs = self.env, self._refs
        known = _static_count(node.clauses)
        if known is not None and known > MAX_ITEMS and len(node.clauses) > 1:   # one range says so itself
            # known before expanding (literal lists and ranges): no need to build a million items first
            self.error(node.pos, f"generator makes more than {MAX_ITEMS} items ({known:.3g})", len(node.name.dotted))
            return None
        fast = self._fast_item(node, target) if ok else None
        bindings = self._expand(node.clauses, dict(self.env)) if known != 0 else iter(())
        try:
            for env in bindings:
                if env is None:
                    ok = False
                    continue
                if len(items) >= MAX_ITEMS:
                    # a generator is an expansion like a node range: bounded, and the error says so
                    self.error(node.pos, f"generator makes more than {MAX_ITEMS} items", len(node.name.dotted))
                    ok = False
                    break
                self.env = env     # an error in the item names the item
                if fast is not None:
                    item = fast(env)
                else:
                    # names resolve per item: the identity cache holds only within one item
                    self._refs = {}
                    item = self.expr(node.item, target)
                if item is None:
                    ok = False
                else:
                    items.append(item)
        except _TooMuchLooping as e:
            self.error(e.pos, f"generator loops more than {MAX_BINDINGS} times (its for clauses multiply)", 3)
            ok = False
        finally:
            self.env, self._refs = saved_env, saved_refs
        if not ok:
            return None
        name = node.name.dotted
        if isinstance(head, _Builtin) and head.form:
            if head.name == "sum":
                return self._reduce(None, "+", PPar(tuple(items), node.pos), node.pos, "sum")
            if head.name == "fold":
                self.error(node.pos, "fold takes a local function and an expression: fold(f, par(x for ...))",
                           len(name))
                return None
            return (PPar if head.name == "par" else PSeq)(tuple(items), node.pos)
        if isinstance(head, (_Binding, types.ModuleType)):
            self.error(node.pos, f"'{name}' is not a task or function; it cannot take a generator", len(name))
            return None
        # any other function gets the list of the items' values
        return self._apply(head, node.name, node.pos, (Input(0),), (), (PPar(tuple(items), node.pos),), target)

    def _fast_item(self, node: ast.Gen, target: str | None) -> Callable[[dict[str, Any]], PlanNode | None] | None:
        """The common item, a task called on literals and loop variables (``run(i, size=s)``),
        resolved once for all items: per item only its arguments, its key and, the first
        time, the call of the def. None when the item needs the general path (anything else);
        both make the same jobs, references and errors."""
        item = node.item
        if type(item) is not ast.Call:
            return None
        loop_names = {n for clause in node.clauses for n in clause.names} | set(self.env)
        parts = item.name.parts
        if len(parts) != 1 or parts[0] in loop_names:
            return None
        fn = self.names.get(parts[0])
        if not callable(fn) or isinstance(fn, _Builtin) or is_local(fn):
            return None
        options = options_of(fn)
        if target is None and options.hosts is not None:
            return None

        def template(arg: Any) -> tuple[bool, Any] | None:
            """(True, name) for a loop variable, (False, value) for a literal; None for an expression."""
            if not ast.is_expr(arg):
                return False, arg
            if type(arg) is ast.Name and len(arg.parts) == 1 and arg.parts[0] in loop_names:
                return True, arg.parts[0]
            return None

        arg_slots = [template(a) for a in item.args]
        kw_slots = [(k, template(v)) for k, v in item.kwargs]
        if None in arg_slots or any(t is None for _, t in kw_slots):
            return None
        sig, calls, name, pos = self._signature(fn), self._calls_of(fn, target), item.name, item.pos
        new_job = self._new_job

        def compile_item(env: dict[str, Any]) -> PlanNode | None:
            args = tuple([env[v] if var else v for var, v in arg_slots])  # type: ignore[misc]
            kwargs = tuple([(k, env[v] if var else v) for k, (var, v) in kw_slots]) if kw_slots else ()  # type: ignore[misc]
            key = _call_key(_bind(sig, args, kwargs), args, kwargs)
            ref = calls.get(key)
            return ref if ref is not None else new_job(fn, name, args, kwargs, target, pos, options, calls, key)

        return compile_item

    def _expand(self, clauses: tuple[ast.For, ...], env: dict[str, Any],
                budget: list[int] | None = None) -> Iterator[dict[str, Any] | None]:
        """Every binding of the loop variables, in generator order (None: an error was reported).

        Bounded in work, not only in items: `for a in range(10**6) for b in []` makes no item
        but would loop a million times, and nested clauses multiply. Every binding, at every
        level, spends one of MAX_BINDINGS.
        """
        if budget is None:
            budget = [MAX_BINDINGS]
        if not clauses:
            yield env
            return
        clause = clauses[0]
        saved, self.env = self.env, env
        try:
            values = self._iterate(clause)
        finally:
            self.env = saved
        if values is None:
            yield None
            return
        for value in values:
            budget[0] -= 1
            if budget[0] < 0:
                raise _TooMuchLooping(clause.pos)
            bound = self._unpack(clause, value)
            if bound is None:
                yield None
                return
            yield from self._expand(clauses[1:], {**env, **bound}, budget)

    def _iterate(self, clause: ast.For) -> list | None:
        it = clause.iter
        match it:
            case ast.HostsOf(where):
                value = self.env.get(where, where)   # hosts(g) with g a loop variable: its value
                if not isinstance(value, str):
                    self.error(it.pos, f"hosts() of loop variable '{where}': it is {_lit(value)}, "
                               "not a host, group or label name", 5)
                    return None
                return self._hosts_of(value, it.pos)
            case ast.Call(ast.Name(("range",)), args, kwargs):
                if kwargs:
                    self.error(it.pos, "range() takes no keyword arguments", 5)
                    return None
                nums = []
                for a in args:
                    if type(a) is ast.Name and len(a.parts) == 1 and a.parts[0] in self.env:
                        a = self.env[a.parts[0]]
                    if ast.is_expr(a) or type(a) is not int:
                        what = ast.unparse_arg(a) if ast.is_expr(a) else _lit(a)
                        self.error(it.pos, f"range() takes whole numbers or loop variables, not {what}", 5)
                        return None
                    nums.append(a)
                try:
                    if len(range(*nums)) > MAX_ITEMS:
                        self.error(it.pos, f"range{tuple(nums)!r} has more than {MAX_ITEMS} values"
                                   .replace(",)", ")"), 5)
                        return None
                    return list(range(*nums))
                except (TypeError, ValueError) as e:
                    self.error(it.pos, f"range{tuple(nums)!r}: {e}".replace(",)", ")"), 5)
                    return None
            case ast.Name(parts) if len(parts) == 1 and parts[0] in self.env:
                value = self.env[parts[0]]
                if isinstance(value, tuple):
                    return list(value)
                self.error(it.pos, f"cannot loop over loop variable '{parts[0]}': it is {_lit(value)}, "
                           "not a list", len(parts[0]))
                return None
            case ast.Name() | ast.Call() | ast.Gen():
                text = it.dotted if isinstance(it, ast.Name) else f"{it.name.dotted}(...)"
                width = len(it.dotted if isinstance(it, ast.Name) else it.name.dotted)
                self.error(it.pos, f"unknown iterable '{text}': a generator loops over range(...), "
                           "hosts(TARGET) or a list [...]", width)
                return None
            case tuple():
                return list(it)
        self.error(clause.pos, f"cannot loop over {_lit(it)}: a generator loops over range(...), "
                   "hosts(TARGET) or a list [...]", 3)
        return None

    def _hosts_of(self, where: str, pos: ast.Pos) -> list | None:
        line = self.lines[pos.line - 1] if 0 < pos.line <= len(self.lines) else ""
        found = line.find(where, pos.column - 1)
        at = ast.Pos(pos.line, found + 1 if found >= 0 else pos.column)
        if self.hosts_of is None:
            self.error(at, "hosts() needs an inventory; none was given to the compiler", len(where))
            return None
        try:
            names = list(self.hosts_of(where))
        except (KeyError, ValueError):
            names = []
        if not names:
            self.error(at, f"hosts(): unknown host, group or label '{where}'"
                       + self._suggest(where, self.target_names), len(where))
            return None
        return names

    def _unpack(self, clause: ast.For, value: Any) -> dict[str, Any] | None:
        names = clause.names
        if len(names) == 1:
            return {names[0]: value}
        if isinstance(value, tuple) and len(value) == len(names):
            return dict(zip(names, value))
        self.error(clause.pos, f"cannot unpack {_lit(value)} into {', '.join(names)}", 3)
        return None

    # ---------------------------------------------------------------- jobs
    def _job(self, fn: Callable, name: ast.Name, args: tuple, kwargs: tuple, target: str | None,
             pos: ast.Pos) -> PlanNode | None:
        options = options_of(fn)
        if target is None and options.hosts is not None:
            if not self._check_target(options.hosts, pos):
                return None
            target = options.hosts
        calls = self._calls_of(fn, target)
        key = _call_key(_bind(self._signature(fn), args, kwargs), args, kwargs)
        ref = calls.get(key)
        return ref if ref is not None else self._new_job(fn, name, args, kwargs, target, pos, options, calls, key)

    def _calls_of(self, fn: Callable, target: str | None) -> dict[Any, JobRef]:
        calls = self._calls.get((id(fn), target))
        if calls is None:
            calls = self._calls[(id(fn), target)] = {}
            self._alive.append(fn)     # the id stays this function's for the compilation
        return calls

    def _new_job(self, fn: Callable, name: ast.Name, args: tuple, kwargs: tuple, target: str | None,
                 pos: ast.Pos, options: Any, calls: dict[Any, JobRef], key: Any) -> JobRef | None:
        """The first call of a task with these arguments: call the def, make the job and its reference."""
        command = self._command(fn, name, args, kwargs, pos)
        if command is None:
            return None
        files = None
        if isinstance(command, Command) or options.files is not None:
            files = self._files(command, options, name, pos)
            if files is None:
                return None
            command = str(command)
        job = Job(len(self.jobs) + 1, name.dotted, args, kwargs, target, command, options, self.filename, pos,
                  files or None, fn)
        self.jobs.append(job)
        # one reference per job, shared by every place that names it
        ref = calls[key] = JobRef(job, pos)
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

    def _command(self, fn: Callable, name: ast.Name, args: tuple, kwargs: tuple, pos: ast.Pos
                 ) -> str | Command | None:
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
                           tuple(user_frames(e)))
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
    if not kwargs and len(args) == len(names):
        return args     # every parameter given by position: the args themselves (no copy to keep as a key)
    bound = dict(zip(names, args))
    for k, v in kwargs:
        if k in bound or k not in by_keyword:
            return None
        bound[k] = v
    try:
        return tuple(bound[n] if n in bound else defaults[n] for n in names)
    except KeyError:
        return None


def invocation_key(sig: _Signature | None, args: Sequence[Any], kwargs: Sequence[tuple[str, Any]]) -> tuple:
    """The key of a call made with run-time values (the executor's memo), bound to the def's
    signature (``_signature_of``) as the compiler binds calls, so that f(x), f(level=x) and
    f(x, <default>) run once; values keyed by content (values.memo_key: 1, 1.0 and True differ)."""
    bound = _bind(sig, tuple(args), tuple(kwargs))
    if bound is None:
        return ("written", values.memo_key([list(args), dict(kwargs)]))
    return ("bound", values.memo_key(list(bound)))


_UNBOUND = object()


def _call_key(bound: tuple | None, args: tuple, kwargs: tuple) -> Any:
    """One key per invocation however it is written: f(1), f(level=1) and f() (default 1) bind
    alike. 1, 1.0 and True hash and compare alike, so arguments of other types than int, str and
    None are told apart by their repr; a tuple of those three compares exactly (and is often the
    job's own args tuple: nothing more to keep). A call that does not bind keys as written."""
    if bound is None:
        return (_UNBOUND, repr(args), repr(kwargs))
    for v in bound:
        t = type(v)
        if t is not int and t is not str and v is not None:
            return repr(bound)
    return bound


def _bad_arguments_of(fn: Callable, args: list, kwargs: dict) -> str | None:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        return str(e)
    except ValueError:
        pass  # no signature (a builtin): the call's own error stands
    return None


_to_python = values.python


def _placeholder(arg: Any) -> Any:
    return None if isinstance(arg, Input) else _to_python(arg)


def _lit(value: Any) -> str:
    return ast.unparse_literal(value) if isinstance(value, (str, int, float, bool, tuple, type(None))) else repr(value)


# ------------------------------------------------------------------- built-ins

@dataclass(frozen=True)
class _Builtin:
    """A built-in name: a form (par, seq, sum, fold: structure) or a local function on values."""

    name: str
    fn: Callable[..., Any] | None = None

    @property
    def form(self) -> bool:
        return self.fn is None


def _mean(values_: list) -> Any:
    if not values_:
        raise ValueError("mean of an empty list")
    return sum(values_) / len(values_)


def _reduce_list(fn: Callable[[Any, Any], Any] | None) -> Callable[[list], Any]:
    """Left-to-right reduction of a list value (with + when fn is None)."""
    def reduce_list(items: Any) -> Any:
        if not isinstance(items, list) or not items:
            raise ValueError(f"expected a non-empty list, got {values.label(items)}")
        acc = items[0]
        for x in items[1:]:
            acc = acc + x if fn is None else fn(acc, x)
        return acc
    return reduce_list


BUILTINS: dict[str, _Builtin] = {
    **{n: _Builtin(n) for n in ("par", "seq", "sum", "fold")},
    "len": _Builtin("len", len), "min": _Builtin("min", min), "max": _Builtin("max", max),
    "mean": _Builtin("mean", _mean), "sorted": _Builtin("sorted", sorted),
}


def compile_flow(flow: ast.Flow, source: str, *, loader: TaskLoader | None = None,
                 is_target: Callable[[str], bool] | None = None, target_names: list[str] | None = None,
                 hosts_of: Callable[[str], Sequence[str]] | None = None) -> Plan:
    """Compile a parsed flow to a Plan, or raise FlowError listing every static error.

    ``is_target`` says whether a placement target exists; ``hosts_of`` expands a
    target to host names for ``hosts(TARGET)`` (raising KeyError for an unknown one).
    """
    c = _Compiler(flow.filename, source, loader or TaskLoader.for_flow(flow.filename), is_target,
                  target_names or [], hosts_of)
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
        raise FlowError(_fewer(c.diags))
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
    jobs = c.jobs
    if not all(b.used for b in c.bindings):
        # a binding is compiled where it is written, to report its errors there; if that
        # compilation is never referenced (x unused, or only ever x @ h), its jobs never run
        jobs = _reachable(root, jobs)
    return Plan(root, tuple(jobs), flow.filename)


def _reachable(root: PlanNode | None, jobs: list[Job]) -> list[Job]:
    """The jobs the plan's root can reach, numbered 1... again in their order."""
    keep: set[int] = set()
    seen: set[int] = set()
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        match node:
            case JobRef(job):
                keep.add(id(job))
            case PSeq() | PPar() | PSum():
                stack.extend(node.items)
            case Deferred() | Local():
                stack.extend(node.inputs)
    if len(keep) == len(jobs):
        return jobs
    kept = [j for j in jobs if id(j) in keep]
    for i, job in enumerate(kept, 1):
        job.id = i     # before anyone holds the plan: nothing has hashed a Job yet
    return kept


def _fewer(diags: list[Diagnostic], per_place: int = 3) -> list[Diagnostic]:
    """One report per mistake: the same message at the same place once (a generator
    repeats its items' errors), and at most ``per_place`` different ones per place."""
    seen: set[tuple] = set()
    count: dict[tuple, int] = {}
    out: list[Diagnostic] = []
    for d in diags:
        key = (d.line, d.column, d.message)
        if key in seen:
            continue
        seen.add(key)
        place = (d.line, d.column)
        count[place] = count.get(place, 0) + 1
        if count[place] <= per_place:
            out.append(d)
    for i, d in enumerate(out):
        more = count[(d.line, d.column)] - per_place
        if more > 0 and not any(o.line == d.line and o.column == d.column for o in out[i + 1:]):
            out[i] = Diagnostic(d.filename, d.line, d.column, d.message, d.source_line, d.width,
                                (*d.notes, f"    ... and {more} more error{'s' if more > 1 else ''} here"))
    return out


def compile_text(source: str, filename: str = "<flow>", **kw: Any) -> Plan:
    return compile_flow(parse(source, filename), source, **kw)


def compile_file(path: str, **kw: Any) -> Plan:
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not text, as Python and YAML read it
        with open(path, encoding="utf-8-sig") as f:
            source = f.read()
    except OSError as e:
        raise FlowError([Diagnostic(path, 0, 0, f"cannot read flow file: {e.strerror}")]) from None
    except UnicodeDecodeError as e:
        raise FlowError([Diagnostic(path, 1, 1, f"flow file is not UTF-8 text ({e.reason})")]) from None
    return compile_flow(parse(source, path), source, **kw)


class _TooMuchLooping(Exception):
    def __init__(self, pos: ast.Pos):
        self.pos = pos


def _static_count(clauses: tuple[ast.For, ...]) -> int | None:
    """How many items nested for clauses make, if every one loops over a literal list or a range of
    literal whole numbers (None if any depends on a loop variable or is not of those kinds)."""
    count = 1
    for clause in clauses:
        match clause.iter:
            case tuple() as values:
                count *= len(values)
            case ast.Call(ast.Name(("range",)), args, kwargs) if not kwargs and args \
                    and all(type(a) is int for a in args) and len(args) <= 3:
                try:
                    count *= len(range(*args))
                except (ValueError, OverflowError):
                    return None
            case _:
                return None
    return count
