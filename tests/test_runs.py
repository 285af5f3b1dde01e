"""Run directories from outside: runs/latest, `cmflow runs ls`, `cmflow runs clean`."""
from __future__ import annotations

import json
import os
import time

from conftest import cmflow


def _runs(tmp_path) -> list:
    """Run directories in the order they started (ids of one second sort by their random part)."""
    dirs = [p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]
    return sorted(dirs, key=lambda p: json.loads((p / "run.json").read_text())["started"])


def _flow(tmp_path, body: str = "a") -> None:
    (tmp_path / "tk.py").write_text('def a(): return "echo 5"\ndef bad(): return "exit 3"\n')
    (tmp_path / "f.flow").write_text(f"from tk import *\n{body}\n")


def test_latest_points_at_the_newest_run_and_ls_lists_them(tmp_path):
    _flow(tmp_path)
    for _ in range(2):
        assert cmflow("run", "f.flow", "-q", cwd=tmp_path).returncode == 0
    (tmp_path / "f.flow").write_text("from tk import *\na + bad\n")
    assert cmflow("run", "f.flow", "-q", cwd=tmp_path).returncode == 1
    runs = _runs(tmp_path)
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == runs[-1].resolve()
    out = cmflow("runs", "ls", "--format", "json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["id"] for r in rows] == [p.name for p in runs]
    assert [r["state"] for r in rows] == ["ok", "ok", "failed"]
    assert [(r["jobs"], r["ok"], r["failed"]) for r in rows] == [(1, 1, 0), (1, 1, 0), (2, 1, 1)]
    assert all(r["flow"] == str(tmp_path / "f.flow") for r in rows)
    text = cmflow("runs", cwd=tmp_path)
    assert text.returncode == 0 and text.stdout.splitlines()[0].split()[:3] == ["ID", "FLOW", "STARTED"]
    assert len(text.stdout.splitlines()) == 4


def test_clean_keeps_the_newest_and_honours_age(tmp_path):
    _flow(tmp_path)
    for _ in range(4):
        assert cmflow("run", "f.flow", "-q", cwd=tmp_path).returncode == 0
    runs = _runs(tmp_path)
    old = time.time() - 10 * 86400
    meta = json.loads((runs[0] / "run.json").read_text())
    (runs[0] / "run.json").write_text(json.dumps({**meta, "started": old}))
    aged = cmflow("runs", "clean", "--older-than", "5", cwd=tmp_path)
    assert aged.returncode == 0, aged.stderr
    assert not runs[0].exists() and all(p.exists() for p in runs[1:])
    kept = cmflow("runs", "clean", "--keep", "1", cwd=tmp_path)
    assert kept.returncode == 0 and "2 runs removed, 1 kept" in kept.stdout
    assert [p.name for p in (tmp_path / "runs").iterdir() if not p.is_symlink()] == [runs[-1].name]
    assert os.path.realpath(tmp_path / "runs" / "latest") == str(runs[-1].resolve())


def test_clean_needs_a_rule(tmp_path):
    bad = cmflow("runs", "clean", cwd=tmp_path)
    assert bad.returncode == 2 and "--keep" in bad.stderr
    neg = cmflow("runs", "clean", "--keep", "x", cwd=tmp_path)
    assert neg.returncode == 2 and "whole number" in neg.stderr


def test_a_repl_session_shares_one_run_directory(tmp_path):
    (tmp_path / "tk.py").write_text('def a(): return "echo 5"\ndef b(): return "echo 6"\n')
    out = cmflow("repl", "--tasks", "tk.py", cwd=tmp_path, input="a\nb\na + b\n")
    assert out.returncode == 0 and out.stdout.split() == ["5", "6", "11"], out.stderr
    entries = [p for p in (tmp_path / "runs").iterdir() if not p.is_symlink()]
    assert len(entries) == 1 and entries[0].name.startswith("repl-")
    session = entries[0]
    assert sorted(p.name for p in session.iterdir() if p.is_dir()) == ["0001", "0002", "0003"]
    assert os.readlink(tmp_path / "runs" / "latest") == f"{session.name}/0003"
    rows = json.loads(cmflow("runs", "ls", "--format", "json", cwd=tmp_path).stdout)
    assert [r["id"] for r in rows] == [f"{session.name}/000{i}" for i in (1, 2, 3)]
    assert all(r["state"] == "ok" for r in rows)
    cleaned = cmflow("runs", "clean", "--keep", "1", cwd=tmp_path)
    assert cleaned.returncode == 0 and "2 runs removed, 1 kept" in cleaned.stdout
    assert sorted(p.name for p in session.iterdir() if p.is_dir()) == ["0003"]
