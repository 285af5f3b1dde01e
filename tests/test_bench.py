"""The benchmark scripts that need no hosts still run against today's executor (bench/ is not imported by
cmflow, so nothing else notices when an internal it drives changes): at a tiny size, each must end well."""
from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.parametrize("log", ["none", "file"])
def test_scheduling_bench_runs(log):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "scheduling.py"), "--jobs", "300", "--hosts", "10",
                        "--reps", "1", "--log", log], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cmflow Executor + Scheduler" in r.stdout
