"""Files over real sshd hosts: staging, the per-host cache, verified fetch, cleanup, status."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import textwrap
from pathlib import Path

import pytest

from cmflow import Files, api
from cmflow.executor import RunOptions
from cmflow.hosts import parse_inventory

from conftest import cmflow, world_dir
from sshhosts import SshdHosts, have_sshd

pytestmark = pytest.mark.skipif(not have_sshd(), reason="openssh-server not installed (.ci/run installs it)")


@pytest.fixture
def hosts_with_workdirs(sshd_hosts: SshdHosts):
    """The session's three sshd hosts, each with a workdir of its own for this test (they share one home)."""
    root = sshd_hosts.base / "home" / f"files-{secrets.token_hex(4)}"
    dirs = {}
    for h in sshd_hosts.hosts:
        d = root / h.name
        d.mkdir(parents=True)
        shutil.chown(d, sshd_hosts.user)
        dirs[h.name] = d
    shutil.chown(root, sshd_hosts.user)
    text = f"ssh_config: {sshd_hosts.ssh_config}\ndefaults: {{slots: 2}}\nhosts:\n" + "".join(
        f"  {name}: {{workdir: {d}}}\n" for name, d in dirs.items())
    inv_file = root.parent / f"{root.name}.yaml"
    inv_file.write_text(text)
    yield inv_file, dirs
    shutil.rmtree(root, ignore_errors=True)
    inv_file.unlink()


def leftovers(dirs: dict[str, Path]) -> list[str]:
    """Everything under the hosts' .cmflow folders except the content cache."""
    out = []
    for d in dirs.values():
        for p in (d / ".cmflow").rglob("*"):
            if "cache" not in p.relative_to(d / ".cmflow").parts:
                out.append(str(p))
    return out


def test_sixteen_jobs_staged_fetched_and_merged_like_local(hosts_with_workdirs, tmp_path):
    inv_file, dirs = hosts_with_workdirs
    (tmp_path / "data").mkdir()
    for i in range(16):
        (tmp_path / "data" / f"part{i}.txt").write_text("".join(f"{i * 100 + k}\n" for k in range(50)))
    big = tmp_path / "table.bin"
    big.write_bytes(os.urandom(300_000))          # larger than the inline limit: goes through the cache
    key = tmp_path / "key.bin"
    key.write_bytes(b"\0\xff'\n" + os.urandom(2000))   # small and binary: inline as base64
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        from cmflow import task, command

        @task(inputs=["table.bin"])
        def analyse(i):
            return command(f"sort -n data/part{i}.txt | awk '{{s += $1}} END {{print {i}, s}}' > out.txt; "
                           f"sha256sum table.bin key.bin | cut -c1-16 >> out.txt; head -c 1500000 table.bin > big.out",
                           inputs=[f"data/part{i}.txt", "key.bin"], outputs=["out.txt", "big.out"])
        '''))
    (tmp_path / "f.flow").write_text("from tk import analyse\n" + " + ".join(f"analyse({i})" for i in range(16))
                                     + "\n")
    r = cmflow("run", "f.flow", "--hosts", str(inv_file), "--run-dir", "run", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = json.loads(r.stdout)
    assert len(files) == 32
    run = tmp_path / "run"
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    merged = "".join(Path(p).read_text() for p in files[::2])
    kd = hashlib.sha256(key.read_bytes()).hexdigest()
    local = "".join(f"{i} {sum(i * 100 + k for k in range(50))}\n{digest[:16]}\n{kd[:16]}\n" for i in range(16))
    assert merged == local
    for p in files[1::2]:
        assert Path(p).stat().st_size == 300_000 and not Path(p).is_symlink()
    # every output verified into results/, no work dir left anywhere, the big input sent once per host used
    assert sorted(p.name for p in (run / "results").iterdir()) == sorted(f"{i + 1}-analyse" for i in range(16))
    assert leftovers(dirs) == []
    used = [h for h, d in dirs.items() if (d / ".cmflow" / "cache" / digest).exists()]
    assert used and all((dirs[h] / ".cmflow" / "cache" / digest).read_bytes() == big.read_bytes() for h in used)
    st = json.loads(cmflow("status", str(run), "--format", "json").stdout)
    assert st["finished"] and st["done"] == 16 and st["failed"] == 0
    assert sum(h["done"] for h in st["hosts"].values()) == 16
    assert sum(h["bytes_fetched"] for h in st["hosts"].values()) == sum(Path(p).stat().st_size for p in files)
    for name in used:
        h = st["hosts"][name]
        # the cached input crossed once to this host; the small ones inline, as base64
        assert 300_000 < h["bytes_sent"] < 300_000 + h["done"] * 5000
    text = cmflow("status", str(run)).stdout
    assert "finished ok, 16/16 done" in text and all(name in text for name in used)


def test_second_run_reuses_the_cache_and_a_corrupt_entry_is_replaced(hosts_with_workdirs, tmp_path):
    inv_file, dirs = hosts_with_workdirs
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(200_000))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        from cmflow import command
        def use(): return command("sha256sum big.bin | cut -c1-64", inputs=["big.bin"])
        '''))
    (tmp_path / "f.flow").write_text("from tk import use\nuse @ h1\n")
    inv = parse_inventory(inv_file.read_text(), str(inv_file))

    def once(name: str):
        plan, _ = api.load(str(tmp_path / "f.flow"), inv=inv)
        run = api.run_sync(plan, inv, RunOptions(), tmp_path / name)
        assert run.result.ok, run.result.failures
        assert run.result.value == digest
        return json.loads((tmp_path / name / "jobs.jsonl").read_text())["bytes_sent"]

    assert once("a") == 200_000
    assert once("b") == 0                       # already on h1, checked by hash
    cached = dirs["h1"] / ".cmflow" / "cache" / digest
    os.chmod(cached, 0o644)
    cached.write_bytes(b"garbage")              # a damaged cache entry is found out and replaced
    assert once("c") == 200_000
    assert cached.read_bytes() == big.read_bytes()


def test_failed_job_keeps_its_remote_work_dir_and_shows_it(hosts_with_workdirs, tmp_path):
    inv_file, dirs = hosts_with_workdirs
    (tmp_path / "in.txt").write_text("input\n")
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        from cmflow import command
        def bad(): return command("cp in.txt copy.txt; exit 5", inputs=["in.txt"], outputs=["copy.txt"])
        def lazy(): return command("true", outputs=["result.txt"])
        '''))
    (tmp_path / "f.flow").write_text("from tk import *\nbad @ h2 | lazy @ h3\n")
    r = cmflow("run", "f.flow", "--hosts", str(inv_file), "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 1
    assert "exit status 5 (work dir kept: h2:" in r.stderr
    assert "declared output 'result.txt' is missing (work dir kept: h3:" in r.stderr
    kept = r.stderr.split("work dir kept: h2:")[1].split(")")[0]
    assert Path(kept).is_dir() and (Path(kept) / "copy.txt").read_text() == "input\n"
    assert not (tmp_path / "run" / "results").exists() or not any((tmp_path / "run" / "results").iterdir())


def test_output_symlink_out_of_the_work_dir_is_refused(hosts_with_workdirs, tmp_path):
    inv_file, _ = hosts_with_workdirs
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        from cmflow import command
        def sneaky(): return command("ln -s /etc/passwd out.txt", outputs=["out.txt"])
        def deep(): return command("mkdir real; ln -s /etc sub; echo x > real/a", outputs=["sub/passwd", "real/a"])
        def fine(): return command("mkdir -p a/b; echo x > a/b/c", outputs=["a/b/c", "a"])
        '''))
    (tmp_path / "f.flow").write_text("from tk import *\nsneaky @ h1 | deep @ h1 | fine @ h1\n")
    inv = parse_inventory(inv_file.read_text(), str(inv_file))
    plan, _ = api.load(str(tmp_path / "f.flow"), inv=inv)
    run = api.run_sync(plan, inv, RunOptions(), tmp_path / "run")
    reasons = sorted(f.reason for f in run.result.failures)
    assert len(reasons) == 2 and all("is a symlink or leaves the work directory" in r for r in reasons)
    assert "'sub/passwd'" in reasons[0] + reasons[1] and "real/a" not in reasons[0] + reasons[1]


def test_full_remote_disk_is_a_clear_job_failure(sshd_hosts, tmp_path):
    """A 1 MB tmpfs as the host's workdir: a real full disk."""
    mnt = sshd_hosts.base / "home" / f"full-{secrets.token_hex(4)}"
    mnt.mkdir(parents=True)
    r = os.system(f"mount -t tmpfs -o size=1m,mode=0777 cmflow-test {mnt} 2>/dev/null")
    if r != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        inv_file = tmp_path / "inv.yaml"
        inv_file.write_text(f"ssh_config: {sshd_hosts.ssh_config}\nhosts:\n  h1: {{workdir: {mnt}}}\n")
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(2_000_000))
        small = tmp_path / "small.bin"
        small.write_bytes(os.urandom(60_000))
        (tmp_path / "tk.py").write_text(textwrap.dedent('''
            from cmflow import command
            def big(): return command("true", inputs=["big.bin"])
            def fill(): return command("head -c 2000000 /dev/zero > out", outputs=["out"])
            '''))
        (tmp_path / "f.flow").write_text("from tk import *\nbig | fill\n")
        inv = parse_inventory(inv_file.read_text(), str(inv_file))
        plan, _ = api.load(str(tmp_path / "f.flow"), inv=inv)
        run = api.run_sync(plan, inv, RunOptions(), tmp_path / "run")
        reasons = {f.job.task: f.reason for f in run.result.failures}
        assert "cannot place input" in reasons["big"] and "No space left on device" in reasons["big"]
        assert reasons["fill"].startswith("exit status 1")
        assert "No space left on device" in run.result.failures[0].stderr_tail + run.result.failures[1].stderr_tail
    finally:
        os.system(f"umount {mnt}")
        mnt.rmdir()


def test_files_value_is_a_files(hosts_with_workdirs, tmp_path):
    inv_file, _ = hosts_with_workdirs
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        from cmflow import command
        def make(i): return command(f"echo {i} > o{i}.txt; echo printed", outputs=[f"o{i}.txt"])
        '''))
    (tmp_path / "f.flow").write_text("from tk import make\nmake(1) + make(2)\n")
    inv = parse_inventory(inv_file.read_text(), str(inv_file))
    plan, _ = api.load(str(tmp_path / "f.flow"), inv=inv)
    run = api.run_sync(plan, inv, RunOptions(), tmp_path / "run")
    assert isinstance(run.result.value, Files)
    assert [Path(p).read_text() for p in run.result.value] == ["1\n", "2\n"]
    assert (tmp_path / "run" / "jobs" / "1.1.out").read_text() == "printed\n"


class _KillOn:
    """An observer that kills the sshd of the host a job is on when it reaches a state (a host lost then)."""

    def __init__(self, hosts: SshdHosts, state: str):
        self.hosts, self.state, self.killed = hosts, state, None

    def job_started(self, job, host, attempt): pass
    def job_ended(self, rec, final, ok): pass
    def host_down(self, host, reason): pass
    def job_cached(self, job): pass

    def job_files(self, job, host, attempt, state, sent, fetched):
        if state == self.state and self.killed is None:
            self.killed = host
            self.hosts.kill(host)


@pytest.mark.parametrize("state", ["staging", "fetching"])
def test_host_lost_while_moving_files_fails_over(tmp_path, state):
    """Two sshd hosts of our own; the first host a job stages to (or fetches from) dies right then."""
    base = world_dir("cmflow-files-lost-")
    hosts = SshdHosts(base, n=2, slots=1).start()
    try:
        dirs = {}
        for h in hosts.hosts:
            d = base / "home" / h.name
            d.mkdir(parents=True)
            shutil.chown(d, hosts.user)
            dirs[h.name] = d
        inv_text = f"ssh_config: {hosts.ssh_config}\nhosts:\n" + "".join(
            f"  {n}: {{workdir: {d}}}\n" for n, d in dirs.items())
        inv = parse_inventory(inv_text, str(tmp_path / "inv.yaml"))
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(200_000))        # through the cache: a helper session that the loss breaks
        (tmp_path / "tk.py").write_text(textwrap.dedent('''
            from cmflow import command
            def one(): return command("head -c 1500000 /dev/zero > big.out; sha256sum big.bin | cut -c1-8 > o",
                                      inputs=["big.bin"], outputs=["o", "big.out"])
            '''))
        (tmp_path / "f.flow").write_text("from tk import one\none\n")
        plan, _ = api.load(str(tmp_path / "f.flow"), inv=inv)
        killer = _KillOn(hosts, state)
        result = asyncio.run(api.arun(plan, inv, RunOptions(), tmp_path / "run", observers=[killer]))
        assert killer.killed is not None
        assert result.result.ok, result.result.failures
        recs = [json.loads(line) for line in (tmp_path / "run" / "jobs.jsonl").read_text().splitlines()]
        assert [r["host"] for r in recs][0] == killer.killed and recs[0]["connection_failed"]
        assert recs[-1]["host"] != killer.killed and recs[-1]["error"] == ""
        o, bigout = (Path(p) for p in result.result.value)
        assert o.read_text().strip() == hashlib.sha256(big.read_bytes()).hexdigest()[:8]
        assert bigout.stat().st_size == 1_500_000
        results = tmp_path / "run" / "results"
        assert sorted(p.name for p in results.iterdir()) == ["1-one"]   # nothing half-fetched anywhere
    finally:
        hosts.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_done_when_sixteen_staged_jobs_reduced_by_merge_over_three_hosts(hosts_with_workdirs, tmp_path):
    """The issue's done-when: 16 jobs read a staged input and write an output; `merge` receives the 16
    fetched files (staged to wherever it runs) and writes the merged file, equal to computing it here."""
    inv_file, dirs = hosts_with_workdirs
    (tmp_path / "data").mkdir()
    for i in range(16):
        (tmp_path / "data" / f"part{i}.txt").write_text("".join(f"{(i * 37 + k * 11) % 101}\n" for k in range(30)))
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        from cmflow import command

        def analyse(i):
            return command(f"sort -n data/part{i}.txt | awk '{{s += $1}} END {{print {i}, NR, s}}' > out.txt",
                           inputs=[f"data/part{i}.txt"], outputs=["out.txt"])

        def merge(parts):
            return command("cat " + " ".join(parts) + " | sort -n > merged.txt", outputs=["merged.txt"])
        '''))
    (tmp_path / "f.flow").write_text("from tk import analyse, merge\nmerge(par(analyse(i) for i in range(16)))\n")
    r = cmflow("run", "f.flow", "--hosts", str(inv_file), "--run-dir", "run", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (merged,) = json.loads(r.stdout)
    local = "".join(f"{i} 30 {sum((i * 37 + k * 11) % 101 for k in range(30))}\n" for i in range(16))
    assert Path(merged).read_text() == local
    # every output in results/, verified (the journal's record of each fetch matches the bytes)
    run = tmp_path / "run"
    fetched = [json.loads(line) for line in (run / "journal.jsonl").read_text().splitlines()
               if '"fetched"' in line]
    assert len(fetched) == 17
    for ev in fetched:
        for f in ev["files"]:
            data = (run / f["path"]).read_bytes()
            assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"]
    assert leftovers(dirs) == []
    st = json.loads(cmflow("status", str(run), "--format", "json").stdout)
    assert st["finished"] and st["done"] == 17
    busy = {n: h for n, h in st["hosts"].items() if h["done"]}
    assert len(busy) >= 2 and all(h["bytes_sent"] > 0 and h["bytes_fetched"] > 0 for h in busy.values())


def test_odd_file_names_are_staged_and_fetched(hosts_with_workdirs, tmp_path):
    """Names with spaces, non-ASCII letters and a leading dash, as inputs (inline and through the cache)
    and as outputs (files, a folder, a glob): none is read as an option by the host's tools."""
    inv_file, dirs = hosts_with_workdirs
    (tmp_path / "dir with space").mkdir()
    (tmp_path / "dir with space" / "a b.txt").write_text("spaced\n")
    (tmp_path / "-small ü.txt").write_text("small\n")
    big = tmp_path / "-big file ü.bin"
    big.write_bytes(os.urandom(200_000))          # over the inline limit: placed from the host's cache
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        from cmflow import command

        def odd():
            return command("cat 'dir with space/a b.txt' ./-small*.txt > './-out ü.txt'; cp ./-big* ./-copy.bin; "
                           "mkdir -p ./-odir/-x 'g d'; echo q > ./-odir/-x/-q; echo g > 'g d/-g'",
                           inputs=["dir with space", "-small ü.txt", "-big file ü.bin"],
                           outputs=["-out ü.txt", "-copy.bin", "-odir", "g d/*"])
        '''))
    (tmp_path / "f.flow").write_text("from tk import odd\nodd @ h1\n")
    r = cmflow("run", "f.flow", "--hosts", str(inv_file), "--run-dir", "run", "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = tmp_path / "run" / "results" / "1-odd"
    assert [Path(p).relative_to(res).as_posix() for p in json.loads(r.stdout)] == [
        "-out ü.txt", "-copy.bin", "-odir/-x/-q", "g d/-g"]
    assert (res / "-out ü.txt").read_text() == "spaced\nsmall\n"
    assert (res / "-copy.bin").read_bytes() == big.read_bytes()
    assert (res / "-odir" / "-x" / "-q").read_text() == "q\n" and (res / "g d" / "-g").read_text() == "g\n"
    assert leftovers(dirs) == []
