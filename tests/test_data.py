"""cmflow data: round trips on every database x storage pair, against real local servers, and bad input."""
from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from cmflow.data import DataService
from cmflow.data.config import parse_config
from cmflow.data.db.local import LocalDB
from cmflow.data.errors import DataError, Exists, NotFound, Unavailable
from cmflow.data.record import Record
from cmflow.errors import ConfigError

from conftest import cmflow
import servers


def _start(name, start, tmp_path_factory):
    try:
        return start(tmp_path_factory.mktemp(name))
    except servers.Unavailable as e:
        print(f"\nSKIP {name}: {e}")
        pytest.skip(f"{name} cannot start here: {e}")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    s = _start("azurite", servers.start_azurite, tmp_path_factory)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    s = _start("moto", servers.start_moto, tmp_path_factory)
    yield s
    s.stop()


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory):
    url, s = _start("mongo", servers.start_mongo, tmp_path_factory)
    yield url
    if s:
        s.stop()


def config_text(tmp: Path, db: str, service: str, request) -> str:
    dbs = {"local": {"kind": "local", "path": str(tmp / "db")}}
    if db == "mongo":
        url = request.getfixturevalue("mongo_url")
        # a fresh database per test keeps tests apart on a shared server
        dbs["mongo"] = {"kind": "mongo", "url": url, "database": f"t{os.getpid()}_{tmp.name[-24:]}".replace("-", "_")}
    services = {"local": {"kind": "local", "path": str(tmp / "storage")}}
    if service == "azure":
        az = request.getfixturevalue("azurite")
        os.environ["CMFLOW_TEST_AZURE_KEY"] = servers.AZURITE_KEY
        services["azure"] = {"kind": "azure", "account": servers.AZURITE_ACCOUNT,
                             "key": {"env": "CMFLOW_TEST_AZURE_KEY"}, "container": "cmflow-test",
                             "endpoint": az.endpoint}
    if service == "s3":
        m = request.getfixturevalue("moto")
        os.environ["CMFLOW_TEST_S3_SECRET"] = "testing-secret"
        services["s3"] = {"kind": "s3", "access_key": "testing", "secret_key": {"env": "CMFLOW_TEST_S3_SECRET"},
                          "bucket": "cmflow-test", "region": "us-east-1", "endpoint": m.endpoint}
    return yaml.safe_dump({"default": {"db": db, "service": service}, "db": dbs, "service": services})


@pytest.fixture
def make_service(tmp_path, request):
    def make(db: str = "local", service: str = "local") -> DataService:
        cfg = tmp_path / f"data-{db}-{service}.yaml"
        cfg.write_text(config_text(tmp_path, db, service, request))
        make.config = cfg
        return DataService(parse_config(cfg.read_text(), str(cfg)))
    return make


PAIRS = [(db, s) for db in ("local", "mongo") for s in ("local", "azure", "s3")]


@pytest.mark.parametrize("db,service", PAIRS, ids=[f"{d}-{s}" for d, s in PAIRS])
def test_round_trip(make_service, tmp_path, db, service):
    svc = make_service(db, service)
    src = tmp_path / "payload.bin"
    data = os.urandom(3 * (1 << 20) + 123)   # several chunks
    src.write_bytes(data)
    rec = svc.add(src)
    assert (rec.name, rec.size, rec.sha256, rec.service) == ("payload.bin", len(data),
                                                             hashlib.sha256(data).hexdigest(), service)
    assert [r.name for r in svc.ls()] == ["payload.bin"]
    with pytest.raises(Exists):
        svc.add(src)
    out = svc.get("payload.bin", tmp_path / "copy.bin")
    assert out.read_bytes() == data
    with pytest.raises(Exists):
        svc.get("payload.bin", tmp_path / "copy.bin")
    src.write_bytes(b"version 2")
    rec2 = svc.add(src, force=True)
    assert rec2.size == 9 and rec2.created == rec.created
    assert svc.get("payload.bin", tmp_path / "copy.bin", force=True).read_bytes() == b"version 2"
    _, store = svc.storage(service)
    assert store.keys() == [rec2.locator]          # the replaced object is gone
    svc.delete("payload.bin")
    assert svc.ls() == [] and store.keys() == []
    with pytest.raises(NotFound):
        svc.delete("payload.bin")


@pytest.mark.parametrize("service", ["local", "azure", "s3"])
def test_upload_failing_midway_leaves_nothing(make_service, service):
    svc = make_service("local", service)

    class Breaks(io.RawIOBase):
        """A source that fails after 1.5 MiB, as a dying disk or network share would (a stand-in)."""

        def __init__(self):
            self.sent = 0

        def readable(self):
            return True

        def read(self, n=-1):
            if self.sent >= 3 << 19:
                raise OSError(5, "Input/output error")
            self.sent += n
            return b"x" * n

    with pytest.raises((OSError, DataError)):
        svc.add_stream(Breaks(), "broken.bin")
    assert svc.ls() == []
    assert svc.storage(service)[1].keys() == []


def test_mongo_unique_name(make_service, tmp_path):
    svc = make_service("mongo", "local")
    f = tmp_path / "a.txt"
    f.write_text("a")
    rec = svc.add(f)
    with pytest.raises(Exists):
        svc.db.add(rec)
    assert svc.db.add(rec, force=True) == rec


@pytest.mark.parametrize("bad", ["a/b", "../up", "..", "x\0y", "", "a\\b", "ok..no"])
def test_bad_names_never_escape(make_service, tmp_path, bad):
    svc = make_service()
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(DataError) as e:
        svc.add(f, name=bad)
    assert "name" in str(e.value)
    with pytest.raises(DataError):
        svc.get(bad, tmp_path / "out")
    assert svc.ls() == [] and not (tmp_path / "up").exists()
    assert list((tmp_path).glob("storage/*")) == []


def test_bad_input_messages(make_service, tmp_path):
    svc = make_service()
    with pytest.raises(DataError, match="no such file: .*missing.txt"):
        svc.add(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="not a regular file"):
        svc.add(tmp_path)
    with pytest.raises(NotFound, match="no record named 'ghost'"):
        svc.get("ghost")
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="unknown service 'nope' \\(configured: local\\)"):
        svc.add(f, service="nope")
    assert svc.ls() == []


def test_get_never_leaves_a_half_written_file(make_service, tmp_path):
    svc = make_service()
    f = tmp_path / "f.txt"
    f.write_text("original contents")
    rec = svc.add(f)
    (tmp_path / "storage" / rec.locator).write_text("tampered")   # bytes no longer match the record
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(DataError, match="do not match the record's sha256"):
        svc.get("f.txt", dest)
    assert list(dest.iterdir()) == []
    (dest / "f.txt").write_text("mine")
    with pytest.raises(Exists):
        svc.get("f.txt", dest)
    assert (dest / "f.txt").read_text() == "mine"


def test_service_that_does_not_answer(tmp_path):
    from sshhosts import free_port

    port = free_port()   # nothing listens here
    cfg = parse_config(yaml.safe_dump({
        "default": {"db": "local", "service": "s3"},
        "db": {"local": {"kind": "local", "path": str(tmp_path / "db")}},
        "service": {"s3": {"kind": "s3", "access_key": "AKIA-SECRET-ACCESS", "secret_key": "very-secret-key",
                           "bucket": "b", "endpoint": f"http://127.0.0.1:{port}", "timeout": 2}}}), "cfg.yaml")
    svc = DataService(cfg)
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(Unavailable) as e:
        svc.add(f)
    assert "s3:s3 did not answer" in str(e.value)
    assert "very-secret-key" not in str(e.value) and "AKIA-SECRET-ACCESS" not in str(e.value)
    assert svc.ls() == []
    status = {s.name: s for s in svc.services()}
    assert not status["s3"].ok and status["local"].ok


def test_mongo_that_does_not_answer(tmp_path):
    from sshhosts import free_port

    cfg = parse_config(yaml.safe_dump({
        "db": {"m": {"kind": "mongo", "url": f"mongodb://user:hunter2@127.0.0.1:{free_port()}", "timeout": 1}},
        "service": {"local": {"kind": "local", "path": str(tmp_path / "s")}}}), "cfg.yaml")
    with pytest.raises(Unavailable) as e:
        DataService(cfg).ls()
    assert "MongoDB did not answer" in str(e.value) and "hunter2" not in str(e.value)


def test_concurrent_adds_local_db(tmp_path):
    db = LocalDB(tmp_path / "db")
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def add(i: int, same: bool) -> None:
        rec = Record("same" if same else f"n{i}", 1, "0" * 64, "local", f"k{i}", "u", "me", "t", "t", "x")
        barrier.wait()
        try:
            db.add(rec)
            outcomes.append("ok")
        except Exists:
            outcomes.append("exists")

    threads = [threading.Thread(target=add, args=(i, True)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(outcomes) == ["exists"] * 7 + ["ok"]
    barrier.reset()
    outcomes.clear()
    threads = [threading.Thread(target=add, args=(i, False)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert outcomes == ["ok"] * 8 and len(list(db.list())) == 9
    assert not [p for p in (tmp_path / "db").iterdir() if p.name.startswith(".")]


def test_records_are_plain_yaml(make_service, tmp_path):
    svc = make_service()
    f = tmp_path / "notes.md"
    f.write_text("# hi")
    svc.add(f)
    text = (tmp_path / "db" / "notes.md.yaml").read_text()
    assert "!!" not in text
    doc = yaml.safe_load(text)
    assert doc["content_type"] == "text/markdown" and doc["size"] == 4 and doc["owner"]


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="cfg.yaml: service.x.kind: expected one of azure, box, gdrive"):
        parse_config("service:\n  x: {kind: [1]}\n", "cfg.yaml")
    with pytest.raises(ConfigError, match="default.service: no service named 'y'"):
        parse_config("default: {service: y}\n", "cfg.yaml")
    cfg = parse_config("service:\n  az: {kind: azure, account: a, key: {env: NOT_SET_ANYWHERE_X}}\n", "cfg.yaml")
    with pytest.raises(ConfigError, match="service.az.key: environment variable NOT_SET_ANYWHERE_X is not set"):
        DataService(cfg).storage("az")


def test_cli_round_trip_with_no_config(tmp_path):
    env = {"CMFLOW_DATA": str(tmp_path / "home"), "HOME": str(tmp_path), "COLUMNS": "60"}
    src = tmp_path / "README.md"
    src.write_text("hello data\n")
    r = cmflow("data", "add", "README.md", cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.startswith("added README.md (11 B"), r.stderr
    r = cmflow("data", "ls", cwd=tmp_path, env=env)
    assert r.returncode == 0 and "README.md" in r.stdout
    assert all(len(line) <= 60 for line in r.stdout.splitlines()), r.stdout
    assert "…" in r.stdout   # the long file:// URL is shortened in the middle
    r = cmflow("data", "ls", "--format", "json", cwd=tmp_path, env=env)
    assert json.loads(r.stdout)[0]["sha256"] == hashlib.sha256(b"hello data\n").hexdigest()
    r = cmflow("data", "get", "README.md", str(tmp_path / "x"), cwd=tmp_path, env=env)
    assert r.returncode == 0 and (tmp_path / "x").read_text() == "hello data\n"
    r = cmflow("data", "get", "README.md", str(tmp_path / "x"), cwd=tmp_path, env=env)
    assert r.returncode == 1 and "exists (use --force" in r.stderr
    r = cmflow("data", "del", "README.md", cwd=tmp_path, env=env)
    assert r.returncode == 0
    r = cmflow("data", "get", "README.md", cwd=tmp_path, env=env)
    assert r.returncode == 1 and r.stderr.strip() == "no record named 'README.md'"
    r = cmflow("data", "add", "nope.txt", cwd=tmp_path, env=env)
    assert r.returncode == 1 and r.stderr.strip() == "no such file: nope.txt"



def test_cli_names_with_a_leading_dash_after_double_dash(tmp_path):
    """A file named -x becomes a record named -x: `--` ends the options, so it can be added, got,
    shared and deleted by that name."""
    env = {"CMFLOW_DATA": str(tmp_path / "home"), "HOME": str(tmp_path)}
    (tmp_path / "-dash ü.txt").write_text("dash\n")
    r = cmflow("data", "add", "--", "-dash ü.txt", cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.startswith("added -dash ü.txt (5 B"), r.stderr
    r = cmflow("data", "get", "--force", "--", "-dash ü.txt", "-out", cwd=tmp_path, env=env)
    assert r.returncode == 0 and (tmp_path / "-out").read_text() == "dash\n", r.stderr
    r = cmflow("data", "share", "--public", "--", "-dash ü.txt", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r = cmflow("data", "unshare", "--public", "--", "-dash ü.txt", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r = cmflow("data", "del", "--", "-dash ü.txt", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(cmflow("data", "ls", "--format", "json", cwd=tmp_path, env=env).stdout) == []

def test_cli_services_never_print_credentials(make_service, tmp_path):
    make_service("local", "azure")
    r = cmflow("data", "services", "--config", str(make_service.config), cwd=tmp_path,
               env={"CMFLOW_TEST_AZURE_KEY": servers.AZURITE_KEY})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "azure" in r.stdout and "ok" in r.stdout
    assert servers.AZURITE_KEY not in r.stdout + r.stderr
