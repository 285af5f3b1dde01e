"""The slot server's frames on the wire (cmflow/transport/server.py)."""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from cmflow.transport.slots import HDR, SERVER_CODE, SERVER_INPUT, boot_argv, message


def _one_job(server: subprocess.Popen, env: dict, command: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """Boot a slot server (a Popen of boot_argv, three pipes), run one job: its pid, the job's frames."""
    assert server.stdin and server.stdout and server.stderr

    def frame() -> tuple[bytes, bytes]:
        head = server.stdout.read(HDR.size)
        assert len(head) == HDR.size, server.stderr.read().decode()
        kind, n = HDR.unpack(head)
        return kind, server.stdout.read(n)

    try:
        server.stdin.write(SERVER_INPUT + message(b"C", {"env": env, "grace": 1}))
        server.stdin.flush()
        kind, pid = frame()
        assert kind == b"R"
        server.stdin.write(message(b"J", {"s": 1, "c": command}))
        server.stdin.flush()
        frames = [frame()]
        while frames[-1][0] != b"X":
            frames.append(frame())
    finally:
        server.stdin.close()
        server.wait(30)
    return pid, frames


@pytest.mark.skipif(not shutil.which("strace"), reason="strace not installed (.ci/run installs it)")
def test_a_short_jobs_output_and_end_leave_in_one_write(tmp_path):
    """Two small writes in a row on a TCP stream without TCP_NODELAY (srun's I/O connection to a
    step, ssh) make the second wait for the first one's delayed ACK: ~40 ms a job. So a job that
    prints a line and ends sends its output and its end frame in one write."""
    trace = tmp_path / "trace"
    server = subprocess.Popen(["strace", "-f", "-e", "trace=write,writev,splice", "-o", str(trace),
                               *boot_argv(sys.executable)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    pid, frames = _one_job(server, {}, "echo hi")
    assert frames == [(b"O", b"hi\n"), (b"X", b"0")]
    # what the server itself (not the job) wrote to its stdout: the ready frame, then ONE write
    to_stdout = [ln for ln in trace.read_text().splitlines()
                 if ln.startswith(pid.decode() + " ") and re.search(r"\b(write|writev)\(1,|splice\(\d+, NULL, 1,", ln)]
    assert len(to_stdout) == 2, to_stdout


def test_the_server_starts_without_json_or_the_signal_module():
    """Every slot (128 of them for 16 hosts x 8) pays the server's start-up: json (with re) and
    signal (with enum) were more than half of it. Its top level must not import them."""
    probe = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         "import sys\nexec(compile(sys.stdin.buffer.read(), 'srv', 'exec'), {'__name__': 'srv'})\n"
         "print(' '.join(m for m in ('json', 're', 'signal', 'enum') if m in sys.modules))"],
        input=SERVER_CODE, capture_output=True, timeout=30)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.decode().split() == []


def _pythons() -> list[str]:
    """Python 3 interpreters on this machine other than ours (PATH, pyenv): a host's python3 may be any."""
    found = {os.path.realpath(p) for p in (shutil.which(f"python3.{m}") for m in range(6, 15))
             if p and "/shims/" not in p}    # (a pyenv shim runs only the version pyenv has selected)
    found |= {os.path.realpath(p) for p in glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))}
    found.discard(os.path.realpath(sys.executable))
    return sorted(found)


@pytest.mark.skipif(not _pythons(), reason="no Python 3 here but the one running the tests")
@pytest.mark.parametrize("python", _pythons() or ["none"])
def test_a_host_s_python3_of_any_version_from_3_6_runs_the_server(python):
    """docs/processes.md: a host needs Python >= 3.6 (RHEL 8's platform python is 3.6). A host whose python3
    is not ours compiles the server's source and must read the controller's messages: 3.6's bytes.fromhex()
    refused the config line's newline, so no slot came up there."""
    server = subprocess.Popen(boot_argv(python), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    _, frames = _one_job(server, {"X": "y"}, "echo $X; echo e >&2; exit 4")
    assert sorted(frames[:-1]) == [(b"E", b"e\n"), (b"O", b"y\n")] and frames[-1] == (b"X", b"4")


def test_a_slow_controller_gets_all_of_an_ended_jobs_output(tmp_path):
    """A job that ended with output still in its pipes: the server sends all of it, however slowly the
    controller (ssh over a slow link) takes it. The server stopped draining 2 s after the job's end (a
    bound meant for a detached job's leftovers, where writers may live on); with every writer dead it
    now stops only at EOF (or after 2 s with nothing new). Here the controller reads ~96 KiB/s."""
    size = 200 * 1000    # on each of stdout and stderr, written at once
    server = subprocess.Popen(boot_argv(sys.executable), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    assert server.stdin and server.stdout
    out = server.stdout.fileno()
    try:
        server.stdin.write(SERVER_INPUT + message(b"C", {"grace": 1}))
        server.stdin.write(message(b"J", {"s": 1, "c": f"head -c {size} /dev/zero & head -c {size} /dev/zero >&2; wait"}))
        server.stdin.flush()
        buf, got, status = b"", {b"O": 0, b"E": 0}, None
        while status is None:
            data = os.read(out, 48 * 1024)     # a slow reader: the pacing is the scenario, not a wait
            assert data, "the server ended before the job's end frame"
            buf += data
            while len(buf) >= HDR.size:
                kind, n = HDR.unpack(buf[:HDR.size])
                if len(buf) < HDR.size + n:
                    break
                if kind in got:
                    got[kind] += n
                elif kind == b"X":
                    status = buf[HDR.size:HDR.size + n]
                buf = buf[HDR.size + n:]
            time.sleep(0.5)
    finally:
        server.stdin.close()
        server.wait(30)
    assert (status, got) == (b"0", {b"O": size, b"E": size})
