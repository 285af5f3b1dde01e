"""Resuming a run: which jobs of an earlier run can be reused, and why the others run.

A ``ResumeIndex`` reads an earlier run's journal (never its executor state) and
answers, for an invocation and its key, ``cached`` or ``runs`` with a reason a
person can act on: no earlier result, failed earlier, was running when the run
stopped, command changed, input X changed, its output is missing.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .journal import JOURNAL, KeyParts, read_journal
from .plan import Job
from .rundir import read_json


@dataclass(frozen=True)
class Entry:
    """The last word of an earlier run's journal on one key."""

    run_dir: Path
    doc: dict[str, Any]
    state: str                 # ok | failed | running
    files: tuple[dict[str, Any], ...] = ()

    @property
    def parts(self) -> KeyParts | None:
        p = self.doc.get("parts")
        return KeyParts.from_json(p) if p else None


@dataclass(frozen=True)
class Decision:
    cached: bool
    reason: str = ""           # why it runs; empty when cached
    entry: Entry | None = None


@dataclass
class ResumeIndex:
    run_dir: Path
    by_key: dict[str, Entry] = field(default_factory=dict)
    by_identity: dict[tuple[str, str], Entry] = field(default_factory=dict)   # (task, args) -> latest
    by_where: dict[tuple[str, str], Entry] = field(default_factory=dict)      # (task, where) -> latest

    @classmethod
    def load(cls, run_dir: Path) -> "ResumeIndex":
        """The results of run_dir and of the runs it resumed, newest last: a resume killed before it
        adopted every earlier result must not lose those results for the next resume."""
        index = cls(run_dir)
        chain: list[Path] = []
        d: Path | None = run_dir
        while d is not None and d.resolve() not in {c.resolve() for c in chain}:
            chain.append(d)
            meta = read_json(d / "run.json") or {}
            prev = meta.get("resumed_from")
            d = Path(meta.get("cwd") or ".", prev) if prev else None   # an absolute prev ignores cwd
        for d in reversed(chain):
            index._read(d)
        return index

    def _read(self, run_dir: Path) -> None:
        index = self
        files: dict[str, tuple[dict[str, Any], ...]] = {}
        for ev in read_journal(run_dir / JOURNAL):
            key = ev.get("key")
            if not key:
                continue
            match ev["ev"]:
                case "start":
                    # a start after an OK end of the same key does not undo the result
                    if key not in index.by_key or index.by_key[key].state != "ok":
                        index._put(Entry(run_dir, ev, "running"))
                case "end":
                    if ev.get("ok"):
                        index._put(Entry(run_dir, ev, "ok"))
                    elif ev.get("final", True) and getattr(index.by_key.get(key), "state", "") != "ok":
                        index._put(Entry(run_dir, ev, "failed"))
                case "cached":
                    index._put(Entry(run_dir, ev, "ok"))
                case "fetched":
                    files[key] = tuple(ev.get("files", ()))
        for key, fs in files.items():
            if key in index.by_key:
                e = index.by_key[key]
                index.by_key[key] = Entry(e.run_dir, e.doc, e.state, fs)

    def _put(self, entry: Entry) -> None:
        doc = entry.doc
        self.by_key[doc["key"]] = entry
        parts = doc.get("parts")
        if parts:
            self.by_identity[(parts["task"], parts["args"])] = entry
            if doc.get("where"):
                self.by_where[(parts["task"], doc["where"])] = entry

    # ------------------------------------------------------------ decisions
    def decide(self, job: Job, parts: KeyParts, key: str, has_outputs: bool = False) -> Decision:
        entry = self.by_key.get(key)
        if entry is None:
            return Decision(False, self._why_new(job, parts))
        match entry.state:
            case "running":
                return Decision(False, "was running when the run stopped", entry)
            case "failed":
                return Decision(False, f"failed earlier ({entry.doc.get('error') or 'failed'})", entry)
        missing = self._missing(entry, has_outputs)
        if missing:
            return Decision(False, missing, entry)
        return Decision(True, "", entry)

    def _why_new(self, job: Job, parts: KeyParts) -> str:
        old = self.by_identity.get((parts.task, parts.args))
        if old is None:
            old = self.by_where.get((parts.task, job.where))
            if old is not None:
                return f"arguments changed (was {old.doc.get('label', '?')})"
            return "no earlier result"
        was = old.parts
        if was is None:
            return "no earlier result"
        if was.command != parts.command:
            return "command changed"
        if was.placement != parts.placement:
            return f"placement changed (was {'@ ' + was.placement if was.placement else 'anywhere'})"
        if was.env != parts.env:
            return "environment of its hosts changed"
        before = dict(was.inputs)
        for path, fp in parts.inputs:
            if path not in before:
                return f"input {path} is new"
            if before[path] != fp:
                if before[path].startswith("sha256:") != fp.startswith("sha256:"):
                    now = "by content (--deep)" if fp.startswith("sha256:") else "by size and mtime"
                    return f"input {path} compared {now} now, not as before"
                return f"input {path} changed"
        for path in before:
            if path not in dict(parts.inputs):
                return f"input {path} no longer used"
        return "key changed"

    @staticmethod
    def _missing(entry: Entry, has_outputs: bool) -> str:
        """Why an OK result cannot be reused (its files are gone or changed), or ''."""
        for name, size in (("stdout", "stdout_bytes"), ("stderr", "stderr_bytes")):
            rel = entry.doc.get(name)
            if rel:
                try:
                    if (entry.run_dir / rel).stat().st_size != entry.doc.get(size, -1):
                        return f"its {name} {rel} changed size"
                except FileNotFoundError:
                    return f"its {name} {rel} is missing"
        if has_outputs and not entry.files:
            return "its outputs were never fetched"
        for f in entry.files:
            try:
                if (entry.run_dir / f["path"]).stat().st_size != f.get("size"):
                    return f"its output {f['path']} changed size"
            except FileNotFoundError:
                return f"its output {f['path']} is missing"
        return ""


def adopt(entry: Entry, new_dir: Path, stdout: Path, stderr: Path) -> tuple[Path | None, Path | None]:
    """Bring a reused job's output files into the new run directory (hard links, else copies)."""
    got: list[Path | None] = []
    for name, dest in (("stdout", stdout), ("stderr", stderr)):
        rel = entry.doc.get(name)
        if rel:
            _link(entry.run_dir / rel, dest)
            got.append(dest)
        else:
            got.append(None)
    for f in entry.files:
        _link(entry.run_dir / f["path"], new_dir / f["path"])
    return got[0], got[1]


def _link(src: Path, dest: Path) -> None:
    if src.resolve() == dest.resolve():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.adopt")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)


# ------------------------------------------------------------ plan --resume

def explain(plan: Any, inventory: Any, index: ResumeIndex, deep: bool = False) -> list[tuple[Job, Decision]]:
    """What ``run --resume`` would do with each job of a plan, without running anything."""
    from .journal import Keys, job_inputs

    keys = Keys(deep)
    out = []
    for job in plan.jobs:
        try:
            hosts = inventory.resolve(job.target)
        except KeyError as e:
            out.append((job, Decision(False, f"unknown host {e}")))
            continue
        parts = keys.parts(job, hosts, job_inputs(job))
        out.append((job, index.decide(job, parts, parts.key(), bool(job.files and job.files.outputs))))
    return out


def render_explained(plan: Any, decisions: list[tuple[Job, Decision]], source: Path, fmt: str) -> str:
    import json

    cached = sum(d.cached for _, d in decisions)
    if fmt == "json":
        return json.dumps({"flow": plan.filename, "resume": str(source), "cached": cached,
                           "runs": len(decisions) - cached,
                           "jobs": [{"id": j.id, "label": j.label, "where": j.where,
                                     "state": "cached" if d.cached else "runs", "reason": d.reason}
                                    for j, d in decisions]}, indent=2) + "\n"
    lines = [f"{plan.filename}: {len(decisions)} jobs against {source}: {cached} cached, "
             f"{len(decisions) - cached} run"]
    width = max((len(f"#{j.id} {j.label}") for j, _ in decisions), default=0)
    for j, d in decisions:
        name = f"#{j.id} {j.label}"
        lines.append(f"  {name:<{width}}  " + ("cached" if d.cached else f"runs: {d.reason}"))
    return "\n".join(lines) + "\n"
