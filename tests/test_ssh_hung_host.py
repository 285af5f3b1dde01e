"""A hung host (its sshd stopped, not dead): noticed after the inventory's ServerAlive settings, jobs fail over."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT
from sshhosts import SshdHosts, have_sshd

pytestmark = pytest.mark.skipif(not have_sshd(), reason="openssh-server not installed (.ci/run installs it)")


def sshd_pids(port: int) -> set[int]:
    out = subprocess.run(["ss", "-Htnlp", f"sport = :{port}"], capture_output=True, text=True).stdout
    out += subprocess.run(["ss", "-Htnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {int(m) for m in re.findall(r"pid=(\d+)", out)}


@pytest.mark.slow
def test_hung_host_is_noticed_after_the_inventorys_alive_settings(tmp_path, shared):
    """Issue 8.4: with ssh_options ServerAliveInterval=1, ServerAliveCountMax=2 a stopped host is
    given up after ~2 s (45 s with the defaults, which used to win over the inventory). ~10 s."""
    hosts = SshdHosts(shared / "hosts", n=2, slots=1).start()
    stopped: set[int] = set()
    try:
        d = shared / "io"
        d.mkdir()
        os.chmod(d, 0o777)
        os.mkfifo(d / "on_h2")
        os.chmod(d / "on_h2", 0o666)
        port2 = hosts.hosts[1].port
        inv = tmp_path / "hosts.yaml"
        inv.write_text(f"ssh_config: {hosts.ssh_config}\ndefaults: {{slots: 1}}\nhosts:\n  h1: {{}}\n"
                       f"  h2: {{ssh_options: [ServerAliveInterval=1, ServerAliveCountMax=2]}}\n")
        (tmp_path / "tk.py").write_text(textwrap.dedent(f'''
            def j(i):
                return (f'if [ "${{{{SSH_CONNECTION##* }}}}" = {port2} ]; then '
                        f'mkdir {d}/told 2>/dev/null && echo {{i}} > {d}/on_h2; sleep 300; fi; echo {{i}}')
            '''))
        (tmp_path / "f.flow").write_text("from tk import j\n" + " + ".join(f"j({i})" for i in range(6)) + "\n")
        proc = subprocess.Popen([sys.executable, "-m", "cmflow", "run", "f.flow", "-q", "--hosts", str(inv),
                                 "--run-dir", "run"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with open(d / "on_h2") as f:      # blocks until a job is running on h2
            f.readline()
        stopped = sshd_pids(port2)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        try:
            out, err = proc.communicate(timeout=40)   # hangs far longer with ServerAlive 15 s x 3 winning
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail("the run did not give up the stopped host")
        assert proc.returncode == 0, err
        assert out.strip() == str(sum(range(6)))
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        hosts.stop()
