"""Slurm hosts against a real 4-node cluster that the suite starts (tests/slurmcluster.py).

The cluster (munged, MariaDB + slurmdbd, slurmctld, 4 slurmd; all on 127.0.0.1,
free ports, one temp folder) is started once per session, ~3-10 s, and
stopped after. Two suite runs side by side each start their own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from cmflow.errors import ConfigError
from cmflow.hosts import parse_inventory
from cmflow.runlog import read_joblog

from conftest import ROOT, cmflow
from slurmcluster import SlurmCluster, have_slurm

SEED = str(ROOT / "flows" / "seed.flow")


@pytest.fixture(scope="session")
def slurm():
    missing = have_slurm()
    if missing:
        pytest.skip(f"Slurm cannot run here ({missing}); .ci/run installs it")
    d = Path(tempfile.mkdtemp(prefix="cmflow-slurm-", dir="/tmp"))
    d.chmod(0o755)   # munged wants o+x on every folder above its socket
    # a crashed node is noticed after SlurmdTimeout: 10 s, not Slurm's 300, for the failover test
    cluster = SlurmCluster(d / "cluster", slurmd_timeout=10).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def shared():
    """A folder the jobs and the test both see (every 'node' is this machine)."""
    d = Path(tempfile.mkdtemp(prefix="cmflow-slurm-io-", dir="/tmp"))
    yield d
    subprocess.run(["rm", "-rf", str(d)])


def inventory(d: Path, text: str) -> Path:
    p = d / "hosts.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def write_flow(d: Path, tasks: str, flow: str) -> Path:
    (d / "tk.py").write_text(textwrap.dedent(tasks))
    (d / "f.flow").write_text(textwrap.dedent(flow))
    return d / "f.flow"


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "jobs.jsonl").read_text().splitlines()]


def run_cli(cluster: SlurmCluster, *args: str, cwd: Path, env: dict | None = None, timeout: float = 180):
    return cmflow(*args, cwd=cwd, env={"SLURM_CONF": str(cluster.conf), **(env or {})}, timeout=timeout)


# ------------------------------------------------------------------ inventory
def test_slurm_host_in_the_inventory():
    inv = parse_inventory(textwrap.dedent("""
        hosts:
          cluster: {slurm: {partition: debug, nodes: 4, time: "2:00:00", account: proj, options: [--qos=short]},
                    labels: [hpc]}
          batch: {slurm: {submit: jobs, max_array: 100}, slots: 50}
          here: {local: true}
        groups:
          big: [cluster, here]
        """))
    c = inv.host("cluster")
    assert c.slurm and c.slurm.nodes == 4 and c.slurm.time == "2:00:00" and c.slurm.submit == "allocation"
    assert c.slurm.request_args() == ["--partition=debug", "--account=proj", "--qos=short"]
    assert inv.host("batch").slurm.submit == "jobs" and inv.host("batch").slots == 50
    assert [h.name for h in inv.resolve("big")] == ["cluster", "here"]
    assert [h.name for h in inv.resolve("hpc")] == ["cluster"]


@pytest.mark.parametrize("settings, path, words", [
    ("{nodes: 0}", "hosts.c.slurm.nodes", "positive integer"),
    ("{submit: often}", "hosts.c.slurm.submit", "'allocation' or 'jobs'"),
    ("{time: soon}", "hosts.c.slurm.time", "time limit"),
    ("{options: ['x; rm -rf /']}", "hosts.c.slurm.options[0]", "starting with '-'"),
    ("{partion: debug}", "hosts.c.slurm.partion", "unknown key"),
    ("{partition: 'a b'}", "hosts.c.slurm.partition", "Slurm name"),
    ("[4]", "hosts.c.slurm", "mapping"),
])
def test_bad_slurm_settings_are_positioned_errors(settings, path, words):
    with pytest.raises(ConfigError) as e:
        parse_inventory(f"hosts:\n  c: {{slurm: {settings}}}\n", "inv.yaml")
    assert path in str(e.value) and words in str(e.value)


def test_bad_slurm_settings_from_the_cli_exit_2(tmp_path):
    inv = inventory(tmp_path, "hosts:\n  c: {slurm: {nodes: -1}}\n")
    r = cmflow("run", SEED, "--hosts", str(inv), cwd=tmp_path)
    assert r.returncode == 2 and "hosts.c.slurm.nodes" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------ allocation mode
def test_seed_flow_in_one_allocation_gives_the_local_value(slurm, tmp_path):
    local = cmflow("run", SEED, "-q", "--run-dir", str(tmp_path / "local"), cwd=tmp_path)
    inv = inventory(tmp_path, "hosts:\n  cluster: {slurm: {nodes: 4}}\n")
    r = run_cli(slurm, "run", SEED, "-q", "--hosts", str(inv), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == local.stdout and r.stdout.strip().isdigit()
    recs = records(tmp_path / "run")
    jobs = {rec["ref"].split(".")[0] for rec in recs}
    assert len(jobs) == 1, "every job is a step of one allocation"
    assert all(rec["host"].startswith("cluster/n") for rec in recs)
    assert {r["Host"] for r in read_joblog(tmp_path / "run" / "joblog")} <= {f"cluster/n{i}" for i in range(1, 5)}
    # the allocation was released when the run ended
    state = slurm.run("sacct", "-X", "-n", "-P", "-j", jobs.pop(), "--format=State").split()
    assert state and state[0] in ("CANCELLED", "COMPLETED") or state[0].startswith("CANCELLED"), state
    assert slurm.wait_queue_empty() == []


def test_slots_are_the_allocations_cpus_per_node(slurm, tmp_path, shared):
    # 16 jobs that each hold their slot until all that can run at once have started
    flow = write_flow(tmp_path, f'''
        def j(i): return f"echo $SLURMD_NODENAME > {shared}/{{i}}; sleep 0.5; echo {{i}}"
        ''', "from tk import j\n" + " + ".join(f"j({i})" for i in range(16)) + "\n")
    inv = inventory(tmp_path, "hosts:\n  cluster: {slurm: {nodes: 4}}\n")
    r = run_cli(slurm, "run", str(flow), "-q", "--hosts", str(inv), "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(sum(range(16)))
    recs = records(tmp_path / "run")
    per_host: dict[str, int] = {}
    events = sorted([(x["start"], 1, x["host"]) for x in recs] + [(x["end"], -1, x["host"]) for x in recs])
    busy: dict[str, int] = {}
    for _, d, h in events:
        busy[h] = busy.get(h, 0) + d
        per_host[h] = max(per_host.get(h, 0), busy[h])
    assert set(per_host) == {f"cluster/n{i}" for i in range(1, 5)} and max(per_host.values()) <= 2
    # each job ran on the node its host names
    assert all((shared / str(i)).read_text().strip() == rec["host"].split("/")[1]
               for rec in recs for i in [int(rec["args"][0])])


def test_slurm_host_beside_local_and_ssh_hosts(slurm, sshd_hosts, tmp_path):
    inv = inventory(tmp_path, f"""
        ssh_config: {sshd_hosts.ssh_config}
        hosts:
          cluster: {{slurm: {{nodes: 2, cpus_per_node: 1}}}}
          h1: {{}}
          here: {{local: true}}
        groups:
          far: [cluster, h1]
        """)
    flow = write_flow(tmp_path, '''
        def where(): return "echo ${SLURM_JOB_ID:-none}"
        def n(i): return f"echo {i}"
        ''', """
        from tk import *
        where @ cluster | where @ h1 | where @ here | n(1) @ far | n(2) @ far | n(3) @ far
        """)
    r = run_cli(slurm, "run", str(flow), "-q", "--format", "json", "--hosts", str(inv), "--run-dir", "run",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    value = json.loads(r.stdout)
    assert value[0] != "none" and str(value[0]).isdigit()
    assert value[1:] == ["none", "none", 1, 2, 3]
    hosts = {(rec["task"], tuple(rec["args"])): rec["host"] for rec in records(tmp_path / "run")}
    assert hosts[("where", ())] in ("cluster/n1", "cluster/n2") or hosts
    assert all(hosts[("n", (i,))] in ("cluster/n1", "cluster/n2", "h1") for i in (1, 2, 3)), hosts


def test_timeout_ends_the_step(slurm, tmp_path, shared):
    flow = write_flow(tmp_path, f'''
        from cmflow import task
        @task(timeout=1)
        def slow(): return "echo $$ > {shared}/pid; exec sleep 300"
        ''', "from tk import slow\nslow\n")
    inv = inventory(tmp_path, "hosts:\n  cluster: {slurm: {nodes: 1}}\n")
    r = run_cli(slurm, "run", str(flow), "-q", "--hosts", str(inv), "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 1 and "timed out" in r.stderr, r.stderr
    rec = records(tmp_path / "run")[0]
    assert rec["timed_out"] and "." in rec["ref"]
    pid = int((shared / "pid").read_text())
    assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]
    assert slurm.wait_queue_empty() == []


def test_ctrl_c_leaves_no_job_or_step(slurm, tmp_path, shared):
    os.mkfifo(shared / "started")
    write_flow(tmp_path, f'''
        def long(i): return f"echo {{i}} > {shared}/started; exec sleep 300"
        ''', "from tk import long\nlong(1) | long(2) | long(3)\n")
    inv = inventory(tmp_path, "hosts:\n  cluster: {slurm: {nodes: 2}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "cmflow", "run", "f.flow", "--hosts", str(inv), "--run-dir", "run"],
                            cwd=tmp_path, env={**slurm.env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with open(shared / "started") as f:   # blocks until a job runs in its step
        f.readline()
    assert any("step" in q for q in slurm.queue())
    proc.send_signal(2)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert slurm.queue() == [] or slurm.wait_queue_empty() == []


@pytest.mark.slow
def test_killed_slurmd_fails_over_to_other_nodes(slurm, tmp_path, shared):
    """~30 s: Slurm takes SlurmdTimeout (10 s here) and a ping round or two to see the node die."""
    os.mkfifo(shared / "on_n2")
    # a job that lands on n2 hangs there; the first one (mkdir is atomic) tells the test
    write_flow(tmp_path, f'''
        def j(i):
            return (f'if [ "$SLURMD_NODENAME" = n2 ]; then '
                    f'mkdir {shared}/told 2>/dev/null && echo {{i}} > {shared}/on_n2; sleep 300; fi; echo {{i}}')
        ''', "from tk import j\n" + " + ".join(f"j({i})" for i in range(24)) + "\n")
    inv = inventory(tmp_path, "hosts:\n  cluster: {slurm: {nodes: 4}}\n")
    proc = subprocess.Popen([sys.executable, "-m", "cmflow", "run", "f.flow", "-q", "--hosts", str(inv),
                             "--run-dir", "run"], cwd=tmp_path, env={**slurm.env, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with open(shared / "on_n2") as f:
            f.readline()
        slurm.kill_node("n2")
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert out.strip() == str(sum(range(24)))
        recs = records(tmp_path / "run")
        lost = [x for x in recs if x["host"] == "cluster/n2" and x["connection_failed"]]
        assert lost, "no job was lost on n2"
        done = {x["seq"]: x["host"] for x in recs if x["exit_status"] == 0}
        assert len(done) == 24 and all(done[x["seq"]] != "cluster/n2" for x in lost)
    finally:
        if proc.poll() is None:
            proc.kill()
        slurm.restart_node("n2")
    assert slurm.wait_queue_empty() == []


def test_cmflow_run_inside_an_sbatch_script_uses_that_allocation(slurm, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(f"""#!/bin/sh
cd {tmp_path}
PYTHONPATH={ROOT} exec {sys.executable} -m cmflow run {SEED} -q --run-dir {tmp_path}/run
""")
    job = slurm.run("sbatch", "--parsable", "-N2", "--exclusive", "-o", str(tmp_path / "out"),
                    "-e", str(tmp_path / "err"), str(script)).strip().split(";")[0]
    deadline = time.monotonic() + 120
    while slurm.run("squeue", "-h", "-j", job, "-o", "%T", check=False).strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    local = cmflow("run", SEED, "-q", "--run-dir", str(tmp_path / "local"), cwd=tmp_path)
    assert (tmp_path / "out").read_text() == local.stdout, (tmp_path / "err").read_text()
    recs = records(tmp_path / "run")
    assert {x["ref"].split(".")[0] for x in recs} == {job}
    assert {x["host"] for x in recs} <= {"slurm/n1", "slurm/n2", "slurm/n3", "slurm/n4"}
    assert slurm.wait_queue_empty() == []
