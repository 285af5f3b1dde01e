"""Output of any size streams to its files; a large stdout is stored once (value = a reference to it)."""
from __future__ import annotations

import asyncio
import json
import os
import struct
import textwrap
from pathlib import Path

import pytest
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



def test_a_resumed_large_stdout_stays_a_reference(tmp_path):
    """--resume reads a reused job's value as the run that ran it did: a big stdout is not read in,
    printed, or copied into jobs.jsonl and summary.json."""
    (tmp_path / "tk.py").write_text(textwrap.dedent('''
        def big(): return "head -c 3000000 /dev/zero | tr '\\\\0' x"
        def small(): return "echo 5"
        '''))
    (tmp_path / "f.flow").write_text("from tk import *\nbig | small\n")
    first = cmflow("run", "f.flow", "-q", "--run-dir", "r1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = cmflow("run", "f.flow", "-q", "--run-dir", "r2", "--resume", "r1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    value = json.loads(again.stdout)
    assert value[1] == 5
    assert value[0]["bytes"] == 3000000
    assert (tmp_path / value[0]["stdout_file"]).read_bytes() == b"x" * 3000000
    assert (tmp_path / value[0]["stdout_file"]).parent.parent.name == "r2"   # the adopted file, this run's own
    assert (tmp_path / "r2" / "jobs.jsonl").stat().st_size < 10000
    assert (tmp_path / "r2" / "summary.json").stat().st_size < 10000

GEN = '''
import os, random, sys, time
r = random.Random(7)
for i in range(400):
    n = r.choice((1, 100, 4096, 8191, 65536, 70001, 200000))
    fd = 1 if r.random() < 0.7 else 2
    os.write(fd, bytes([i % 251]) * n)   # a piece of its own, so order and size show
    if i % 97 == 0:
        time.sleep(0.01)                  # trickles between bursts
'''


def _expected() -> tuple[bytes, bytes]:
    import random
    r = random.Random(7)
    out, err = bytearray(), bytearray()
    for i in range(400):
        n = r.choice((1, 100, 4096, 8191, 65536, 70001, 200000))
        (out if r.random() < 0.7 else err).extend(bytes([i % 251]) * n)
    return bytes(out), bytes(err)


def test_stdout_and_stderr_in_pieces_of_every_size_arrive_exact(inventory, tmp_path):  # noqa: F811
    """Writes of 1 B to 200 kB on both streams, bursts and pauses: each file holds exactly its stream."""
    # the program in the command itself: the ssh host's user cannot read our temp folder
    (tmp_path / "tk.py").write_text(f"import shlex\ndef gen(): return 'python3 -c ' + shlex.quote({GEN!r})\n")
    (tmp_path / "f.flow").write_text("from tk import *\ngen\n")
    r = cmflow("run", "f.flow", "-q", "--hosts", str(inventory(1)), "--run-dir", "run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out, err = _expected()
    assert (tmp_path / "run" / "jobs" / "1.1.out").read_bytes() == out
    assert (tmp_path / "run" / "jobs" / "1.1.err").read_bytes() == err


def _pieces(data: bytes, rnd, bounds: list[int]) -> list[bytes]:
    """`data` cut at a random step; for long data at random places plus every place near a frame boundary."""
    step = rnd.choice((1, 3, 5, 7, 4096, 100000))
    if len(data) // step <= 3000:
        cuts = set(range(0, len(data), step))
    else:
        cuts = {rnd.randrange(len(data)) for _ in range(300)}
        cuts |= {b + d for b in bounds for d in range(-6, 7) if 0 <= b + d < len(data)}
    cuts = sorted(cuts | {0})
    return [data[a:b] for a, b in zip(cuts, cuts[1:] + [len(data)])]


async def _feed(fd: int, pieces: list[bytes], close: bool = False, sizes: set[int] | None = None) -> None:
    """Write each piece into the pipe only once the reader has taken everything before it, so the
    reader sees the pieces one by one (no timing involved: the writer waits for an empty pipe).
    `sizes` collects the pipe's sizes seen meanwhile."""
    import fcntl
    import termios

    for piece in pieces:
        while struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]:
            if sizes is not None:
                sizes.add(fcntl.fcntl(fd, 1032))    # F_GETPIPE_SZ
            await asyncio.sleep(0)
        view = memoryview(piece)
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                await asyncio.sleep(0)
    if close:
        os.close(fd)


def _frames_fuzz(tmp_path, trials: int) -> None:
    import random

    from cmflow.transport.output import StreamedOutput
    from cmflow.transport.slots import HDR, Frames

    async def one(trial: int) -> None:
        rnd = random.Random(trial)
        want = {b"O": b"", b"E": b""}
        data, bounds = b"", []
        for _ in range(rnd.randint(0, 6)):
            kind = rnd.choice((b"O", b"E"))
            payload = bytes([rnd.randint(0, 255)]) * rnd.choice((0, 1, 5, 300, 70000, 300000))
            data += HDR.pack(kind, len(payload)) + payload
            bounds.append(len(data))
            want[kind] += payload
        data += HDR.pack(b"X", 2) + b"-9" + HDR.pack(b"O", 3) + b"nxt"
        r, w = os.pipe()
        os.set_blocking(w, False)
        frames = Frames(r)
        out, err = StreamedOutput(tmp_path / f"{trial}.out"), StreamedOutput(tmp_path / f"{trial}.err")
        try:
            feeder = asyncio.ensure_future(_feed(w, _pieces(data, rnd, bounds)))
            assert await frames.job(out, err) == -9
            out.close(), err.close()
            for kind, path in ((b"O", out.path), (b"E", err.path)):
                assert (path.read_bytes() if path.exists() else b"") == want[kind], trial
            assert await frames.next() == (b"O", b"nxt")
            await feeder
        finally:
            frames.close()
            os.close(w)

    async def main() -> None:
        for trial in range(trials):
            await one(trial)

    asyncio.run(main())


def test_frames_split_anywhere_reach_the_right_files(tmp_path):
    """The controller's frame reader, fed the server's frames through a pipe cut at every size:
    each output exact (copied from what was read, spliced from the pipe for the rest), the status
    read, and what follows the end frame left for the next job."""
    _frames_fuzz(tmp_path, 120)


def test_frames_split_anywhere_without_splice(tmp_path, monkeypatch):
    """The same where splice cannot be used (no os.splice, or a file system without it): read and write."""
    from cmflow.transport import output

    monkeypatch.setattr(output, "_splice", False)
    _frames_fuzz(tmp_path, 60)


def test_a_frame_larger_than_any_pipe_arrives_whole(tmp_path):
    """One 40 MiB output frame (many pipe-fulls, splice moving what each holds) and a stderr frame
    after it. The pipe is enlarged while the big output flows, and given back at the job's end."""
    import fcntl

    from cmflow.transport import slots
    from cmflow.transport.output import StreamedOutput
    from cmflow.transport.slots import HDR, Frames

    big = bytes(range(256)) * (40 * 4096)
    sizes: set[int] = set()

    async def main() -> None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        frames = Frames(r)
        out, err = StreamedOutput(tmp_path / "o"), StreamedOutput(tmp_path / "e")
        try:
            data = HDR.pack(b"O", len(big)) + big + HDR.pack(b"E", 4) + b"warn" + HDR.pack(b"X", 1) + b"0"
            feeder = asyncio.ensure_future(_feed(w, [data[i:i + 777_777] for i in range(0, len(data), 777_777)],
                                                 sizes=sizes))
            assert await frames.job(out, err) == 0
            await feeder
            assert fcntl.fcntl(r, 1032) == slots.PIPE_SIZE and slots._grown == 0    # F_GETPIPE_SZ
        finally:
            frames.close()
            os.close(w)
        assert out.close() == len(big) and err.close() == 4
        if int(Path("/proc/sys/fs/pipe-max-size").read_text()) >= slots.GROWN_PIPE_SIZE:
            assert slots.GROWN_PIPE_SIZE in sizes

    asyncio.run(main())
    assert (tmp_path / "o").read_bytes() == big
    assert (tmp_path / "e").read_bytes() == b"warn"


@pytest.mark.parametrize("cut", ["header", "payload", "read payload", "end frame"])
def test_eof_inside_a_frame_is_a_lost_connection(tmp_path, cut):
    """The server's stdout closing before a job's end frame is complete (its session died) is an
    IncompleteReadError, which the slot turns into a lost connection: never a short, silent success."""
    from cmflow.transport.output import StreamedOutput
    from cmflow.transport.slots import HDR, Frames

    data = {"header": HDR.pack(b"O", 10)[:3],
            "payload": HDR.pack(b"O", 200_000) + b"x" * 1000,
            "read payload": HDR.pack(b"E", 10) + b"abc",
            "end frame": HDR.pack(b"O", 2) + b"hi" + HDR.pack(b"X", 3) + b"1"}[cut]

    async def main() -> None:
        r, w = os.pipe()
        os.set_blocking(w, False)
        frames = Frames(r)
        out, err = StreamedOutput(tmp_path / "o"), StreamedOutput(tmp_path / "e")
        try:
            feeder = asyncio.ensure_future(_feed(w, [data], close=True))
            with pytest.raises(asyncio.IncompleteReadError):
                await frames.job(out, err)
            await feeder
        finally:
            frames.close()
            out.close(), err.close()

    asyncio.run(main())


def test_a_slot_server_dying_in_a_big_output_fails_the_attempt_as_a_lost_connection(tmp_path):
    """A real local slot server killed while it relays a big output: the job's attempt is a lost
    connection (retried elsewhere by the executor), not a job that ended well with half its output."""
    from cmflow.hosts import Host
    from cmflow.transport import JobSpec
    from cmflow.transport.local import LocalTransport

    async def main():
        t = LocalTransport(Host("here", "localhost", slots=1, local=True))
        try:
            # the job's parent is its slot server: the job kills it once its output is under way
            spec = JobSpec(seq=1, command="head -c 3000000 /dev/zero; exec kill -9 $PPID",
                           stdout=tmp_path / "o", stderr=tmp_path / "e")
            return await t.run(spec)
        finally:
            await t.aclose()

    outcome = asyncio.run(main())
    assert outcome.connection_failed, outcome
    assert outcome.exit_status is None


def test_a_cancelled_job_s_record_points_at_the_output_it_wrote(inventory, tmp_path):  # noqa: F811
    """--halt now cancels `slow`, which had written to both outputs: jobs.jsonl, the journal and the joblog say
    where that output is and how much (they said "" and 0 bytes, beside a file full of it)."""
    marker = "$HOME/.cmflow-qa-" + tmp_path.name if inventory.kind == "ssh" else str(tmp_path / "marker")
    (tmp_path / "tk.py").write_text(textwrap.dedent(f'''
        def slow(): return "echo hello; echo oops >&2; touch {marker}; sleep 100"
        def bad(): return "while [ ! -e {marker} ]; do sleep 0.05; done; rm -f {marker}; exit 3"
        '''))
    (tmp_path / "f.flow").write_text("from tk import *\nslow | bad\n")
    r = cmflow("run", "f.flow", "-q", "--halt", "now", "--hosts", str(inventory(2)), "--run-dir", "run",
               cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    rec = next(json.loads(line) for line in (tmp_path / "run" / "jobs.jsonl").read_text().splitlines()
               if json.loads(line)["task"] == "slow")
    assert rec["error"] == "cancelled" and rec["killed"]
    assert (tmp_path / rec["stdout"]).read_bytes() == b"hello\n" and rec["stdout_bytes"] == 6
    assert (tmp_path / rec["stderr"]).read_bytes() == b"oops\n"
    end = next(ev for ev in map(json.loads, (tmp_path / "run" / "journal.jsonl").read_text().splitlines())
               if ev["ev"] == "end" and ev["task"] == "slow")
    assert (end["stdout"], end["stdout_bytes"], end["stderr"], end["stderr_bytes"]) == \
        ("jobs/1.1.out", 6, "jobs/1.1.err", 5)
    line = next(x for x in (tmp_path / "run" / "joblog").read_text().splitlines() if "echo hello" in x)
    assert line.split("\t")[5] == "6"     # Receive: the bytes of stdout, as GNU parallel counts them
