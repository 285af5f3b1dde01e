"""Output of any size streams to its files; a large stdout is stored once (value = a reference to it)."""
from __future__ import annotations

import json
import textwrap

from conftest import cmflow
from test_processes import inventory  # noqa: F401  (the local/ssh fixture)


def test_large_stdout_is_a_reference_to_its_file(inventory, tmp_path):  # noqa: F811
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        def big(): return "head -c 3000000 /dev/zero | tr '\\\\0' x; echo done >&2"
        def small(): return "echo 5"
        '''))
    (tmp_path / "f.flow").write_text("from tk import *\nbig | small\n")
    r = cmflow("run", "f.flow", "-q", "--hosts", str(inventory(2)), "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run" / "jobs" / "1.1.out"
    assert out.read_bytes() == b"x" * 3000000
    assert (tmp_path / "run" / "jobs" / "1.1.err").read_bytes() == b"done\n"
    value = json.loads(r.stdout)
    assert value[1] == 5
    assert value[0]["bytes"] == 3000000
    assert (tmp_path / value[0]["stdout_file"]).samefile(out)   # relative to the run's folder, or absolute
    assert (tmp_path / "run" / "jobs.jsonl").stat().st_size < 10000
    assert (tmp_path / "run" / "summary.json").stat().st_size < 10000
