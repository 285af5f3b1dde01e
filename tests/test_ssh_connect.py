"""How the ssh transport connects (issue 10.3): one ssh process per connection, its master, which
is also its first slot's session; the other slots' sessions are asked of it over its control
socket; the fanout window bounds connections being opened; closing ends the masters (over the
control socket too)."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from cmflow.hosts import parse_inventory
from cmflow.transport import JobSpec
from cmflow.transport import mux, ssh
from cmflow.transport.ssh import SshTransport

from sshhosts import have_sshd

pytestmark = pytest.mark.skipif(not have_sshd(), reason="openssh-server not installed (.ci/run installs it)")


def transports(sshd_hosts, tmp_path: Path, slots: int, names: list[str], window: asyncio.Semaphore | None = None):
    text = f"ssh_config: {sshd_hosts.ssh_config}\nhosts:\n" + "".join(f"  {n}: {{slots: {slots}}}\n" for n in names)
    inv = parse_inventory(text, str(tmp_path / "inv.yaml"))
    return [SshTransport(h, inv.ssh_config, window=window) for h in inv.hosts]


def spec(tmp_path: Path, seq: int, command: str) -> JobSpec:
    return JobSpec(seq, command, tmp_path / f"{seq}.out", tmp_path / f"{seq}.err", timeout=60)


def spawned_argvs(monkeypatch) -> list[list[str]]:
    """Every ssh command line the transport starts (the real processes still start)."""
    seen: list[list[str]] = []
    real = ssh._spawn

    async def spy(argv, **kw):
        seen.append(list(argv))
        return await real(argv, **kw)
    monkeypatch.setattr(ssh, "_spawn", spy)
    return seen


def test_slots_of_a_host_share_one_connection_whose_first_session_is_the_master(sshd_hosts, tmp_path, shared,
                                                                                 monkeypatch):
    """Three jobs at once on a 3-slot host: all see the same client port (one TCP connection);
    cmflow started one ssh process, the master that is also slot 1's session; the other two
    sessions were asked of it over its control socket."""
    argvs = spawned_argvs(monkeypatch)

    async def main():
        (t,) = transports(sshd_hosts, tmp_path, 3, ["h1"])
        try:
            # the jobs must run at once: each waits for the others' marks
            cmd = "touch {d}/m{i}; while [ $(ls {d} | wc -l) -lt 3 ]; do sleep 0.02; done; echo $SSH_CONNECTION"
            d = shared     # the remote user writes the marks
            outs = await asyncio.gather(*(t.run(spec(tmp_path, i, cmd.format(d=d, i=i))) for i in range(3)))
            assert all(o.ok for o in outs), outs
            paths = list(t._paths)
            pid = await mux.master_pid(paths[0])
            assert pid is not None
        finally:
            await t.aclose()
        return paths, pid

    paths, pid = asyncio.run(main())
    conns = {(tmp_path / f"{i}.out").read_text().split()[1] for i in range(3)}
    assert len(conns) == 1, conns                   # the same client port: one connection
    assert len(paths) == 1
    assert len(argvs) == 1
    assert "ControlMaster=yes" in argvs[0] and "-N" not in argvs[0] and "-f" not in argvs[0]
    # closed: the master is gone (asked over its socket, not by another ssh process)
    assert not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_nine_slots_use_a_second_master(sshd_hosts, tmp_path, shared):
    """MaxSessions 10: nine slots take two connections, at most 8 sessions on each."""
    async def main():
        (t,) = transports(sshd_hosts, tmp_path, 9, ["h2"])
        d = shared
        cmd = "touch {d}/m{i}; while [ $(ls {d} | wc -l) -lt 9 ]; do sleep 0.02; done; echo $SSH_CONNECTION"
        try:
            outs = await asyncio.gather(*(t.run(spec(tmp_path, i, cmd.format(d=d, i=i))) for i in range(9)))
        finally:
            await t.aclose()
        assert all(o.ok for o in outs), outs

    asyncio.run(main())
    conns = [(tmp_path / f"{i}.out").read_text().split()[1] for i in range(9)]
    assert len(set(conns)) == 2 and max(conns.count(c) for c in conns) <= 8   # sessions spread over both


def test_fanout_window_bounds_connections_being_opened(sshd_hosts, tmp_path, monkeypatch):
    """With a window of 1, a host's connection is started only once the previous one is up."""
    opening = 0
    most = 0
    real_spawn, real_opened, real_unopened = ssh._spawn, SshTransport._opened, SshTransport._unopened

    async def spawn(argv, **kw):
        nonlocal opening, most
        if "ControlMaster=yes" in argv:
            opening += 1
            most = max(most, opening)
        return await real_spawn(argv, **kw)

    def opened(self, tag):
        nonlocal opening
        if tag[2] is not None:
            opening -= 1
        real_opened(self, tag)

    def unopened(self, tag):
        nonlocal opening
        if tag[2] is not None:
            opening -= 1
        real_unopened(self, tag)

    monkeypatch.setattr(ssh, "_spawn", spawn)
    monkeypatch.setattr(SshTransport, "_opened", opened)
    monkeypatch.setattr(SshTransport, "_unopened", unopened)

    async def main():
        ts = transports(sshd_hosts, tmp_path, 1, ["h1", "h2", "h3"], window=asyncio.Semaphore(1))
        try:
            outs = await asyncio.gather(*(t.run(spec(tmp_path, i, "true")) for i, t in enumerate(ts)))
        finally:
            await asyncio.gather(*(t.aclose() for t in ts))
        assert all(o.ok for o in outs), outs

    asyncio.run(main())
    assert most == 1 and opening == 0


def test_a_gone_master_is_replaced_for_the_next_slot(sshd_hosts, tmp_path):
    """A master that went away (here: asked to exit) under an idle slot: that slot's next job is a
    lost session, and the next slot opened on the host connects anew instead of failing."""
    async def main():
        (t,) = transports(sshd_hosts, tmp_path, 2, ["h3"])
        try:
            first = await t.run(spec(tmp_path, 1, "true"))
            assert first.ok, first
            assert await mux.terminate(t._paths[0])     # the connection goes away under the idle slot
            lost = await t.run(spec(tmp_path, 2, "echo again"))
            anew = await asyncio.gather(t.run(spec(tmp_path, 3, "echo one")), t.run(spec(tmp_path, 4, "echo two")))
            return lost, anew, list(t._paths)
        finally:
            await t.aclose()

    lost, anew, paths = asyncio.run(main())
    assert lost.connection_failed and "lost" in lost.message, lost
    assert all(o.ok for o in anew), anew
    assert (tmp_path / "3.out").read_text() == "one\n" and (tmp_path / "4.out").read_text() == "two\n"
    assert len(paths) == 2


def test_a_master_with_no_session_left_is_replaced(sshd_hosts, tmp_path):
    """Every slot of a host closed: its master, the first slot's ssh, ended with the last session
    (no ControlPersist); a new slot on that host opens a connection of its own."""
    async def main():
        (t,) = transports(sshd_hosts, tmp_path, 2, ["h2"])
        try:
            assert (await t.run(spec(tmp_path, 1, "true"))).ok
            old = t._paths[0]
            for slot in list(t._all):
                await t._discard(slot)
            t._idle.clear()
            assert await mux.master_pid(old, timeout=5) is None     # gone with its sessions
            outs = await asyncio.gather(t.run(spec(tmp_path, 2, "true")), t.run(spec(tmp_path, 3, "true")))
            return outs, list(t._paths)
        finally:
            await t.aclose()

    outs, paths = asyncio.run(main())
    assert all(o.ok for o in outs), outs
    assert len(paths) == 2


def test_failed_first_connection_fails_the_slots_waiting_for_it(sshd_hosts, tmp_path):
    """A host that refuses: every slot that waited for its master says why."""
    async def main():
        text = (f"ssh_config: {sshd_hosts.ssh_config}\nhosts:\n"
                f"  gone: {{hostname: 127.0.0.1, port: {_closed_port()}, slots: 3}}\n")
        inv = parse_inventory(text, str(tmp_path / "inv.yaml"))
        t = SshTransport(inv.hosts[0], inv.ssh_config)
        try:
            return await asyncio.gather(*(t.run(spec(tmp_path, i, "true")) for i in range(3)))
        finally:
            await t.aclose()

    outs = asyncio.run(main())
    assert all(o.connection_failed for o in outs)
    assert all("refused" in o.message for o in outs), [o.message for o in outs]


def _closed_port() -> int:
    from sshhosts import free_port
    return free_port()       # bound and released: nothing listens there


def test_open_file_limit_is_raised_for_many_slots():
    """256 hosts x 2 slots need more than the usual 1024 open files: the soft limit is raised for them."""
    import resource
    from cmflow.api import open_files_for
    from cmflow.hosts import Host

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"hard limit {hard} too low to check")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        open_files_for([Host(f"h{i}", "127.0.0.1", slots=2) for i in range(512)])
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 256 + 4 * 1024
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_run_connects_to_its_placed_hosts_before_it_imports_the_executor(sshd_hosts, tmp_path):
    """Cold start: a host some job is placed on is connected to first, and the run imports the rest
    of itself (executor, run log, ...) while the handshakes go on. A fresh interpreter, so that what
    is imported when the first ssh starts says when that was; each host is connected to once."""
    (tmp_path / "tasks.py").write_text("def t(i):\n    return f'echo {i}'\n")
    (tmp_path / "f.flow").write_text("from tasks import t\nt(1) @ h1 | t(2) @ h2 | t(3) @ h1\n")
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\nfrom cmflow.transport import ssh\nimport cmflow.api as api\nseen = []\nreal = ssh._spawn\n"
        "async def spy(argv, **kw):\n    seen.append((argv[-2], 'cmflow.executor' in sys.modules))\n"
        "    return await real(argv, **kw)\n"
        "ssh._spawn = spy\n"
        f"plan, inv = api.load('f.flow', {str(sshd_hosts.inventory_file)!r})\n"
        "run = api.run_sync(plan, inv, run_dir='run', report=False)\n"
        "print(run.result.ok, run.result.value, sorted(seen))\n")
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(probe)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "[1,", "2,", "3]", "[('h1',", "False),", "('h2',", "False)]"], r.stdout


def test_a_warmed_up_connection_is_the_first_jobs_or_is_closed(sshd_hosts, tmp_path, monkeypatch):
    """A warmed-up host's first slot serves the first job (no second connection); one no job took
    is closed with the transport: no ssh process, no master left."""
    argvs = spawned_argvs(monkeypatch)

    async def main():
        used, unused = transports(sshd_hosts, tmp_path, 1, ["h1", "h2"])
        used.warm()
        unused.warm()
        try:
            out = await used.run(spec(tmp_path, 1, "echo hi"))
            await asyncio.wait_for(asyncio.shield(unused._early), 60)   # up, and never asked for
            slot = next(iter(unused._all))
            pid = await mux.master_pid(unused._paths[0])
        finally:
            await used.aclose()
            await unused.aclose()
        return out, slot.proc, pid

    out, proc, pid = asyncio.run(main())
    assert out.ok and (tmp_path / "1.out").read_text() == "hi\n", out
    assert len(argvs) == 2                       # one connection each
    assert proc.returncode is not None           # the unused slot's ssh ended ...
    assert pid is not None and (not os.path.exists(f"/proc/{pid}")
                                or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z")   # ... its master too


def test_the_first_slot_going_leaves_its_master_to_the_others(sshd_hosts, tmp_path, shared):
    """The first slot's ssh is the master of the host's other sessions (no ControlPersist, one
    process per connection): that slot discarded while another slot's job runs, the job goes on
    to its end over the same connection; the ssh process ends with the last session."""
    async def main():
        (t,) = transports(sshd_hosts, tmp_path, 2, ["h3"])
        try:
            assert (await t.run(spec(tmp_path, 1, "true"))).ok
            first = t._idle.pop()
            go = shared / "go"
            job = asyncio.ensure_future(t.run(spec(tmp_path, 2, f"while [ ! -e {go} ]; do sleep 0.02; done; echo on")))
            while not t._all - {first}:       # the second slot's session is open, its job running
                await asyncio.sleep(0.01)
            await t._discard(first)           # returns at once: the process stays the others' master
            assert first.proc.returncode is None
            go.touch()
            out = await job
            return out, first.proc
        finally:
            await t.aclose()

    out, leader = asyncio.run(main())
    assert out.ok and (tmp_path / "2.out").read_text() == "on\n", out
    assert leader.returncode is not None


def test_a_hosts_connection_is_closed_once_the_jobs_only_it_can_run_are_over(tmp_path):
    """256 hosts x 1 job must not hold 256 ssh processes to the end: a host that only its own
    placed jobs use is closed after the last of them (final attempt); a host that a group, an
    unplaced job or a job moving files may still use is not. (Transports here are fakes that
    record the close: this is the run's bookkeeping, not ssh.)"""
    import types

    from cmflow import api

    (tmp_path / "tasks.py").write_text("def t(i):\n    return 'true'\n")
    (tmp_path / "f.flow").write_text("from tasks import t\nt(1) @ h1 | t(2) @ h1 | t(3) @ h2 | t(4) @ g | t(5) @ h4\n")
    inv_file = tmp_path / "inv.yaml"
    inv_file.write_text("hosts:\n  h1: {}\n  h2: {}\n  h3: {}\n  h4: {}\n  here: {local: true}\ngroups:\n  g: [h2, h3]\n")
    plan, inv = api.load(str(tmp_path / "f.flow"), str(inv_file))
    closed: list[str] = []

    class FakeTransport:
        def __init__(self, name):
            self.name = name

        async def aclose(self):
            closed.append(self.name)

    async def main():
        retire = api._Retire(plan, inv, {h.name: FakeTransport(h.name) for h in inv.hosts})
        by_label = {j.label: j for j in plan.jobs}
        end = lambda label, final=True, ok=True: retire.job_ended(types.SimpleNamespace(job=by_label[label]), final, ok)
        end("t(1) @ h1")
        await asyncio.sleep(0)
        assert closed == []                     # h1 has a job left
        end("t(2) @ h1", final=False, ok=False)   # an attempt that will be retried
        await asyncio.sleep(0)
        assert closed == []
        end("t(2) @ h1", final=True, ok=False)
        end("t(3) @ h2")                         # h2 is also in group g: kept
        retire.job_cached(by_label["t(5) @ h4"])
        await asyncio.gather(*retire.closing)
        assert sorted(closed) == ["h1", "h4"]

    asyncio.run(main())


def test_killing_a_session_opened_over_the_masters_socket(sshd_hosts, tmp_path):
    """A slot's session asked of the master has no process of ours: procs.kill (a slot being
    opened when SIGTERM came) ends it by closing its control connection instead of killing a pid."""
    from cmflow.transport import procs

    async def main():
        (t,) = transports(sshd_hosts, tmp_path, 2, ["h2"])
        try:
            assert (await t.run(spec(tmp_path, 1, "true"))).ok
            session = await mux.open_session(t._paths[0], "exec sleep 300")
            assert session.pid is None and session.returncode is None
            await asyncio.wait_for(procs.kill(session), 10)
            return session.returncode
        finally:
            await t.aclose()

    assert asyncio.run(main()) == -9
