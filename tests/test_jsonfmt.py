"""The per-job lines formatted directly (cmflow/jsonfmt.py) are byte for byte what json.dumps of the
same dict writes: jobs.jsonl, the journal's start and end, events.jsonl, plan.json's jobs, the key."""
from __future__ import annotations

import hashlib
import json
import random
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from cmflow import jsonfmt
from cmflow.journal import KEY_VERSION, Journal, KeyParts, Keys, _canonical
from cmflow.plan import job_json
from cmflow.runlog import _FIELDS, _VALUES, JobRecord, _job_line, record_line
from cmflow.status import StatusLog

CIRCULAR: list = []
CIRCULAR.append(CIRCULAR)
# what a value may be: strings JSON escapes (non-ASCII, a lone surrogate from a byte-decoded name, quotes,
# control characters), big ints, floats JSON writes its own way, an IntEnum, containers, an object
SCALARS = [None, "", "x\u00e9\n\"\t\\", "\udcff", "\u2028", 0, -3, 2**70, 1.5, 1e300, float("nan"),
           float("inf"), True, False, signal.Signals.SIGTERM]
VALUES = SCALARS + [[1, "a", None], (1, 2), [1, [2]], {"a": 1, "b": [1.5]}, {1: 2}, object]
COMPACT = json.JSONEncoder(separators=(",", ":"), default=repr).encode
DEFAULT = json.JSONEncoder(default=repr).encode


def _job(rnd: random.Random, **over):
    return SimpleNamespace(**{
        "id": rnd.choice([1, 10**6]), "task": rnd.choice(["t", "m.t", "é"]), "label": "t(…)",
        "args": tuple(rnd.choice(VALUES) for _ in range(rnd.choice([0, 1, 2, 3]))),
        "kwargs": tuple((rnd.choice(["k", "é"]), rnd.choice(VALUES)) for _ in range(rnd.choice([0, 0, 1]))),
        "where": rnd.choice(["f.flow:1:2", "ü"]), "command": rnd.choice(["true", "a\tb\nc", "é"]),
        "target": rnd.choice([None, "h1", "ü"]), "files": None, **over})


def test_value_is_what_json_writes():
    for v in VALUES:
        assert jsonfmt.value(v, DEFAULT, ", ") == DEFAULT(v)
        assert jsonfmt.value(v, COMPACT, ",") == COMPACT(v)
        assert jsonfmt.boolean(v, COMPACT) == COMPACT(v)


def test_jobs_jsonl_lines():
    rnd = random.Random(1)
    for _ in range(3000):
        rec = JobRecord(_job(rnd), rnd.choice(["here", "h\u00e9"]), rnd.choice([1, 2]), rnd.choice([1.7e9, 0.0, 0]),
                        rnd.choice([1.7e9, 1e20]), rnd.choice([0, None, 3, signal.Signals.SIGTERM]),
                        rnd.choice([0, 9, signal.Signals.SIGKILL]), rnd.choice([False, True, 0]),
                        rnd.choice([False, True]), rnd.choice(["", "/r/jobs/1.1.out"]), "", rnd.choice([0, 5]),
                        rnd.choice(VALUES + [CIRCULAR]), rnd.choice(["", "exit status 1"]), rnd.choice([False, True]),
                        rnd.choice(["", "12.3"]), 0, rnd.choice([0, 7]), rnd.choice([0, 1, 3]))
        doc = dict(zip(_FIELDS, _VALUES(rec)))
        doc["runtime"] = round(rec.runtime, 6)
        if rec.value is CIRCULAR:
            doc["value"] = repr(CIRCULAR)
        assert record_line(rec) == DEFAULT(doc)


def test_plan_job_lines_and_keys():
    rnd = random.Random(2)
    for _ in range(3000):
        job = _job(rnd)
        assert _job_line(job) == json.dumps(job_json(job), default=repr)
        parts = Keys().parts(job, [])
        assert parts.args == _canonical([list(job.args), [list(kv) for kv in job.kwargs]])
        inputs = tuple((rnd.choice(["a", "é\n"]), rnd.choice(["1:2", "missing"])) for _ in range(rnd.choice([0, 2])))
        parts = KeyParts(parts.task, parts.args, parts.command, parts.placement, parts.env, inputs)
        doc = [KEY_VERSION, parts.task, parts.args, parts.command, parts.placement, parts.env, list(parts.inputs)]
        assert parts.key() == hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()
        assert parts.text() == COMPACT(parts.to_json())


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_journal_start_and_end_lines(tmp_path):
    rnd = random.Random(3)
    journal = Journal(tmp_path)
    want = []
    for _ in range(2000):
        job = _job(rnd, args=(1,), kwargs=())
        parts = Keys().parts(job, [])
        key, host, attempt = parts.key(), rnd.choice(["here", "hé"]), rnd.choice([1, 2])
        ready, start, end = rnd.choice([1.7e9 + 0.1234567, 0.0]), 1.7e9 + 1 / 3, rnd.choice([1.7e9 + 2, 1e20])
        journal.started(job.id, key, host, attempt, ready, start)
        want.append(COMPACT({"ev": "start", "seq": job.id, "key": key, "host": host, "attempt": attempt,
                             "ready": round(ready, 6), "start": round(start, 6)}))
        fields = (rnd.choice([True, False]), rnd.choice([True, False]), rnd.choice([0, None, signal.Signals.SIGTERM]),
                  rnd.choice([0, signal.Signals.SIGKILL]), rnd.choice([False, True]), rnd.choice([False, True]),
                  rnd.choice(["", "exit status 1 é"]), rnd.choice(["", "jobs/1.1.out"]), "", rnd.choice([0, 5]), 0)
        more = rnd.choice([{}, {"bytes_sent": 3, "bytes_fetched": 4},
                           {"bytes_sent": 3, "bytes_fetched": 4, "phases": {"staging": [1.5, 2.25]}}])
        journal.ended_attempt(job, key, parts, job.label, host, attempt, (ready, start, end), *fields, more)
        ok, final, exit_, sig, timed_out, conn, error, stdout, stderr, out_b, err_b = fields
        want.append(COMPACT({
            "ev": "end", "seq": job.id, "key": key, "parts": parts.to_json(), "task": job.task, "label": job.label,
            "where": job.where, "host": host, "attempt": attempt, "ready": round(ready, 6),
            "start": round(start, 6), "end": round(end, 6), "ok": ok, "final": final, "exit": exit_, "signal": sig,
            "timed_out": timed_out, "connection_failed": conn, "error": error, "stdout": stdout, "stderr": stderr,
            "stdout_bytes": out_b, "stderr_bytes": err_b, **more}))
    journal.close()
    assert _lines(tmp_path / "journal.jsonl") == want


def test_status_lines(tmp_path, monkeypatch):
    rnd = random.Random(4)
    monkeypatch.setattr("cmflow.status.time.time", lambda: 1.7e9 + 1 / 3)
    log = StatusLog(tmp_path, 1, {"here": 1})
    want = []
    for _ in range(1000):
        job = _job(rnd, files=rnd.choice([None, ("x",)]))
        host, attempt = rnd.choice(["here", "hé"]), rnd.choice([1, 2])
        log.job_started(job, host, attempt)
        want.append(json.dumps({"e": "start", "job": job.id, "host": host, "attempt": attempt,
                                "files": bool(job.files), "t": round(1.7e9 + 1 / 3, 3)}))
        rec = SimpleNamespace(seq=job.id, host=host, attempt=attempt, label=job.label,
                              error=rnd.choice(["", "boom é"]), bytes_sent=rnd.choice([0, 9]), bytes_fetched=0)
        ok, final = rnd.choice([True, False]), rnd.choice([True, False])
        log.job_ended(rec, final, ok)
        want.append(json.dumps({"e": "end", "job": rec.seq, "host": host, "attempt": attempt, "ok": ok,
                                "final": final, "label": rec.label, "error": rec.error, "sent": rec.bytes_sent,
                                "fetched": rec.bytes_fetched, "t": round(1.7e9 + 1 / 3, 3)}))
    log.close()
    assert _lines(tmp_path / "events.jsonl")[1:] == want   # after the run's own line


@pytest.mark.parametrize("bad", [CIRCULAR])
def test_what_json_refuses_is_refused_alike(bad):
    with pytest.raises(ValueError):
        jsonfmt.value(bad, COMPACT, ",")
