"""--fanout N: at most N ssh connections being opened at once; the run still reaches every host."""
from __future__ import annotations

import pytest

from conftest import ROOT, cmflow
from sshhosts import have_sshd


@pytest.mark.skipif(not have_sshd(), reason="openssh-server not installed (.ci/run installs it)")
def test_fanout_of_one_still_reaches_every_host(sshd_hosts, tmp_path):
    seed = str(ROOT / "flows" / "seed.flow")
    r = cmflow("run", seed, "-q", "--fanout", "1", "--hosts", str(sshd_hosts.inventory_file), "--run-dir", "run",
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().isdigit()


def test_fanout_must_be_positive(tmp_path):
    r = cmflow("run", str(ROOT / "flows" / "seed.flow"), "--fanout", "0", cwd=tmp_path)
    assert r.returncode == 2
    assert "--fanout must be at least 1" in r.stderr and "Traceback" not in r.stderr
