"""The ssh transport against real sshd daemons on loopback (see sshhosts.py)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cmflow import api
from cmflow.executor import RunOptions
from cmflow.hosts import load_inventory, parse_inventory
from cmflow.runlog import read_joblog

from conftest import ROOT, cmflow
from sshhosts import SshdHosts, have_sshd
from test_run_local import alive, peak_per_host

pytestmark = pytest.mark.skipif(not have_sshd(), reason="openssh-server not installed (.ci/run installs it)")


def write_flow(d: Path, tasks: str, flow: str) -> Path:
    (d / "tk.py").write_text(textwrap.dedent(tasks))
    (d / "f.flow").write_text(textwrap.dedent(flow))
    return d / "f.flow"


def remote_alive(hosts: SshdHosts, host: str, pid: int) -> bool:
    """Look the pid up on the remote host; a zombie (nobody reaped it) is dead."""
    state = hosts.ssh(host, f"ps -o stat= -p {pid}").stdout.strip()
    return bool(state) and not state.startswith("Z")


def run_api(flow: Path, inventory, **opts):
    plan, inv = api.load(str(flow), inv=inventory)
    return api.run_sync(plan, inv, RunOptions(**opts), flow.parent / "run")


def test_seed_flow_over_ssh_matches_local(sshd_hosts, tmp_path):
    seed = str(ROOT / "flows" / "seed.flow")
    local = cmflow("run", seed, "-q", "--run-dir", str(tmp_path / "local"), cwd=tmp_path)
    remote = cmflow("run", seed, "-q", "--hosts", str(sshd_hosts.inventory_file), "--run-dir",
                    str(tmp_path / "ssh"), cwd=tmp_path)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == local.stdout and remote.stdout.strip().isdigit()
    rows = read_joblog(tmp_path / "ssh" / "joblog")
    assert sorted(int(r["Seq"]) for r in rows) == [1, 2, 3, 4]
    assert {r["Host"] for r in rows} <= {"h1", "h2", "h3"}


def test_slots_honoured_over_ssh(sshd_hosts, tmp_path):
    flow = write_flow(tmp_path, 'def j(i): return f"sleep 0.1; echo {i}"\n',
                      "from tk import j\n" + " + ".join(f"j({i})" for i in range(24)) + "\n")
    run = run_api(flow, load_inventory(str(sshd_hosts.inventory_file)))
    assert run.result.ok and run.result.value == sum(range(24))
    peak = peak_per_host(run.run_dir / "joblog")
    assert set(peak) == {"h1", "h2", "h3"} and max(peak.values()) <= 2


def test_env_workdir_and_framing(sshd_hosts, tmp_path):
    inv = parse_inventory(textwrap.dedent(f"""\
        ssh_config: {sshd_hosts.ssh_config}
        hosts:
          h1: {{env: {{GREETING: "hello 'there'"}}, workdir: /tmp}}
        """), str(tmp_path / "inv.yaml"))
    # output without a final newline, stderr, binary-ish bytes and a quote-heavy command
    flow = write_flow(tmp_path, '''
        def env(): return 'echo "$GREETING"; pwd'
        def raw(): return "printf 'no newline'; printf 'err\\\\n' >&2"
        def quotes(): return """echo '"a" $b `c`' "it's" """
        ''', "from tk import *\nenv | raw | quotes\n")
    run = run_api(flow, inv)
    assert run.result.ok, run.result.failures
    assert run.result.value == ["hello 'there'\n/tmp", "no newline", '"a" $b `c` it\'s']
    out = sorted((run.run_dir / "jobs").glob("2.*.out"))[0]
    assert out.read_bytes() == b"no newline"
    assert out.with_suffix(".err").read_bytes() == b"err\n"


def test_timeout_kills_the_remote_process(sshd_hosts, tmp_path, shared):
    d = shared
    flow = write_flow(tmp_path, f'''
        from cmflow import task
        @task(timeout=1)
        def t(): return "sleep 300 & echo $! > {d}/child; echo $$ > {d}/leader; sleep 300"
        ''', "from tk import *\nt @ h1\n")
    run = run_api(flow, load_inventory(str(sshd_hosts.inventory_file)))
    assert "timed out" in run.result.failures[0].reason
    for name in ("leader", "child"):
        pid = int((d / name).read_text())
        assert not remote_alive(sshd_hosts, "h1", pid), f"{name} {pid} still runs on h1"
        assert not alive(pid)


def test_halt_now_kills_remote_jobs(sshd_hosts, tmp_path, shared):
    d = shared
    os.mkfifo(d / "pid")
    os.chmod(d / "pid", 0o666)
    flow = write_flow(tmp_path, f'''
        def long(): return "echo $$ > {d}/pid; exec sleep 300"
        def bad(): return "read p < {d}/pid; echo $p > {d}/long.pid; exit 1"
        ''', "from tk import *\nlong @ h1 | bad @ h2\n")
    run = run_api(flow, load_inventory(str(sshd_hosts.inventory_file)), halt="now")
    assert run.result.halted
    pid = int((d / "long.pid").read_text())
    assert not remote_alive(sshd_hosts, "h1", pid)


def test_ctrl_c_kills_remote_jobs(sshd_hosts, tmp_path, shared):
    d = shared
    os.mkfifo(d / "pid")
    os.chmod(d / "pid", 0o666)
    write_flow(tmp_path, f'def long(): return "echo $$ > {d}/pid; exec sleep 300"\n', "from tk import *\nlong\n")
    proc = subprocess.Popen([sys.executable, "-m", "cmflow", "run", "f.flow", "--hosts",
                             str(sshd_hosts.inventory_file), "--run-dir", "run"], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pid = int((d / "pid").read_text())   # blocks until the remote job runs
    proc.send_signal(2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not remote_alive(sshd_hosts, "h1", pid) and not alive(pid)


def test_unknown_host_key_is_refused_then_trusted(sshd_hosts, tmp_path):
    # the same hosts, but a known_hosts file that knows none of them
    known = tmp_path / "known_hosts"
    known.write_text("")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(sshd_hosts.ssh_config.read_text().replace(str(sshd_hosts.known_hosts), str(known)))
    inv = tmp_path / "hosts.yaml"
    inv.write_text(f"ssh_config: {cfg}\nhosts:\n  h1: {{}}\n")
    write_flow(tmp_path, 'def a(): return "echo 1"\n', "from tk import a\na\n")
    r = cmflow("run", "f.flow", "--hosts", str(inv), "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 1
    assert "host key of h1 is not known" in r.stderr and "`cmflow hosts trust h1`" in r.stderr
    assert known.read_text() == ""   # nothing accepted silently
    r = cmflow("hosts", "check", "--hosts", str(inv), cwd=tmp_path)
    assert r.returncode == 1 and "host key unknown" in r.stdout
    r = cmflow("hosts", "trust", "h1", "--hosts", str(inv), cwd=tmp_path, input="y\n")
    assert r.returncode == 1 and "re-run with --yes" in r.stderr   # no terminal to ask: nothing trusted
    assert known.read_text() == ""
    r = cmflow("hosts", "trust", "h1", "--yes", "--hosts", str(inv), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "SHA256:" in r.stdout and f"added as [127.0.0.1]:{sshd_hosts.hosts[0].port} in {known}" in r.stdout
    assert known.read_text().startswith(f"[127.0.0.1]:{sshd_hosts.hosts[0].port} ssh-ed25519 ")
    r = cmflow("run", "f.flow", "--hosts", str(inv), "--run-dir", "run2", "-q", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "1"


def test_hosts_check_reports_each_host(sshd_hosts, tmp_path):
    inv = tmp_path / "hosts.yaml"
    inv.write_text(f"ssh_config: {sshd_hosts.ssh_config}\nhosts:\n  h[1-3]: {{}}\n"
                   f"  dead: {{hostname: 127.0.0.1, port: 1}}\n")
    r = cmflow("hosts", "check", "--hosts", str(inv), cwd=tmp_path)
    assert r.returncode == 1
    lines = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    ncpu = str(os.cpu_count())
    for h in ("h1", "h2", "h3"):
        assert lines[h].split()[1:3] == ["reachable", ncpu]
    assert "refused" in lines["dead"]


def test_exec_merges_identical_output(sshd_hosts, tmp_path):
    inv = str(sshd_hosts.inventory_file)
    r = cmflow("exec", "echo same", "--hosts", inv, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "h[1-3]: same\n"
    port2 = sshd_hosts.hosts[1].port
    r = cmflow("exec", f'[ "${{SSH_CONNECTION##* }}" = {port2} ] && {{ echo odd; exit 3; }}; echo same',
               "--hosts", inv, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stdout == "h[1,3]: same\nh2: odd\n"        # by exit status, as clush -b orders them
    assert r.stderr == "cmflow: h2: exited with exit code 3\n"
    r = cmflow("exec", "echo x", "--on", "h2", "--hosts", inv, cwd=tmp_path)
    assert r.stdout == "h2: x\n"


def test_32_slots_on_one_stock_sshd(sshd_hosts, tmp_path, shared):
    d = shared
    inv = parse_inventory(f"ssh_config: {sshd_hosts.ssh_config}\nhosts:\n  h1: {{slots: 32}}\n",
                          str(tmp_path / "i.yaml"))
    # all 32 jobs must be running at once to get past the barrier
    flow = write_flow(tmp_path, f'''
        def j(i): return f"touch {d}/m{{i}}; while [ $(ls {d} | wc -l) -lt 32 ]; do sleep 0.05; done; echo {{i}}"
        ''', "from tk import j\n" + " + ".join(f"j({i})" for i in range(40)) + "\n")
    run = run_api(flow, inv, timeout=120)
    assert run.result.ok, run.result.failures
    assert run.result.value == sum(range(40))
    rows = read_joblog(run.run_dir / "joblog")
    assert len(rows) == 40 and all(r["Exitval"] == "0" for r in rows)


def test_failover_when_a_host_dies_mid_run(tmp_path, shared):
    hosts = SshdHosts(shared / "hosts", n=3, slots=2).start()
    try:
        d = shared / "io"
        d.mkdir()
        os.chmod(d, 0o777)
        os.mkfifo(d / "on_h2")
        os.chmod(d / "on_h2", 0o666)
        port2 = hosts.hosts[1].port
        # a job that lands on h2 hangs there; the first one (mkdir is atomic) tells the test
        write_flow(tmp_path, f'''
            def j(i):
                return (f'if [ "${{{{SSH_CONNECTION##* }}}}" = {port2} ]; then '
                        f'mkdir {d}/told 2>/dev/null && echo {{i}} > {d}/on_h2; sleep 300; fi; echo {{i}}')
            ''', "from tk import j\n" + " + ".join(f"j({i})" for i in range(30)) + "\n")
        proc = subprocess.Popen([sys.executable, "-m", "cmflow", "run", "f.flow", "--hosts",
                                 str(hosts.inventory_file), "--run-dir", "run"], cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        with open(d / "on_h2") as f:      # blocks until a job is running on h2
            f.readline()
        hosts.kill("h2")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == str(sum(range(30)))
        records = [json.loads(line) for line in (tmp_path / "run" / "jobs.jsonl").read_text().splitlines()]
        lost = [r for r in records if r["host"] == "h2" and r["connection_failed"]]
        assert lost, "no job was lost on h2"
        rows = read_joblog(tmp_path / "run" / "joblog")   # one line per job: its final, good attempt
        done = {r["Seq"]: r["Host"] for r in rows if r["Exitval"] == "0"}
        assert len(done) == 30 == len(rows)
        assert all(done[str(r["seq"])] in ("h1", "h3") for r in lost)
        # the progress lines count a failed-over job's attempts without claiming "attempt 2/1"
        assert "retry j(" in err and not re.search(r"attempt \d+/1\b", err), err
    finally:
        hosts.stop()
