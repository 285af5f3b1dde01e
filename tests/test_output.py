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


def test_frames_split_anywhere_reach_the_right_files(tmp_path):
    """The controller's frame reader, fed the server's frames cut at every size: each output exact,
    the status read, and what follows the end frame left for the next job."""
    import asyncio
    import random

    from cmflow.transport.output import StreamedOutput
    from cmflow.transport.slots import HDR, Frames

    async def one(trial: int) -> None:
        rnd = random.Random(trial)
        reader = asyncio.StreamReader()
        want = {b"O": b"", b"E": b""}
        data = b""
        for _ in range(rnd.randint(0, 6)):
            kind = rnd.choice((b"O", b"E"))
            payload = bytes([rnd.randint(0, 255)]) * rnd.choice((0, 1, 5, 300, 70000))
            data += HDR.pack(kind, len(payload)) + payload
            want[kind] += payload
        data += HDR.pack(b"X", 2) + b"-9" + HDR.pack(b"O", 3) + b"nxt"
        for i in range(0, len(data), step := rnd.choice((1, 3, 5, 7, 4096, 100000))):
            reader.feed_data(data[i:i + step])
        frames = Frames(reader)
        out, err = StreamedOutput(tmp_path / f"{trial}.out"), StreamedOutput(tmp_path / f"{trial}.err")
        assert await frames.job(out, err) == -9
        out.close(), err.close()
        for kind, path in ((b"O", out.path), (b"E", err.path)):
            assert (path.read_bytes() if path.exists() else b"") == want[kind], trial
        assert await frames.next() == (b"O", b"nxt")

    async def main() -> None:
        for trial in range(120):
            await one(trial)

    asyncio.run(main())
