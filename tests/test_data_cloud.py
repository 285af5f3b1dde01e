"""cmflow data on Google Cloud Storage (fake-gcs-server for the JSON API; moto's S3 server for the
S3-compatible XML API with HMAC keys), Google Drive and Box (labelled FAKES from tests/fakes.py: no
emulator of either exists here).

What each covers: the HMAC path is checked against an S3-compatible server, not Google (the request
shapes are S3's; Google's own XML quirks are not exercised); fake-gcs-server checks no credentials or
signatures, so the service-account path is checked for token exchange (against a fake token endpoint),
JSON-API calls and the shape of its V4 signed link; the Drive and Box fakes implement the documented
endpoints the providers call, with their error shapes, and inject 429s with Retry-After.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from cmflow.data import DataService
from cmflow.data.config import parse_config
from cmflow.data.errors import DataError, NotFound

from conftest import cmflow
import servers
from fakes import BoxFake, DriveFake, TokenServer
from test_data import _start, moto  # noqa: F401


@pytest.fixture(scope="module")
def fake_gcs(tmp_path_factory):
    s = _start("fake-gcs", servers.start_fake_gcs, tmp_path_factory)
    yield s
    s.stop()


@pytest.fixture
def drive():
    d = DriveFake().start()
    t = TokenServer([d]).start()
    yield d, t
    d.stop()
    t.stop()


@pytest.fixture
def box():
    b = BoxFake().start()
    yield b
    b.stop()


def service_for(tmp_path: Path, settings: dict) -> tuple[DataService, Path]:
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"default": {"db": "local", "service": "cloud"},
                                   "db": {"local": {"kind": "local", "path": str(tmp_path / "db")}},
                                   "service": {"cloud": settings}}))
    return DataService(parse_config(cfg.read_text(), str(cfg))), cfg


def round_trip(svc: DataService, tmp_path: Path, size: int, name: str = "blob.bin") -> None:
    src = tmp_path / name
    src.write_bytes(os.urandom(size))
    rec = svc.add(src)
    assert rec.size == size and rec.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert [r.name for r in svc.ls()] == [name]
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    got = svc.get(name, out)
    assert got.read_bytes() == src.read_bytes()
    svc.delete(name)
    assert svc.ls() == []
    with pytest.raises(NotFound):
        svc.storage(None)[1].get(rec.locator, open(os.devnull, "wb"))


def service_account(tmp_path: Path, token_uri: str) -> dict:
    key = tmp_path / "sa.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    return {"type": "service_account", "project_id": "cmflow-test", "private_key_id": "k1",
            "private_key": key.read_text(), "client_email": "cmflow@cmflow-test.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": token_uri}


# ------------------------------------------------------------------ Google Cloud Storage
def test_google_with_hmac_keys_over_the_s3_compatible_api(tmp_path, moto):  # noqa: F811
    os.environ["CMFLOW_TEST_GOOGLE_SECRET"] = "google-secret-x"
    svc, cfg = service_for(tmp_path, {"kind": "google", "bucket": "gcs-hmac", "endpoint": moto.endpoint,
                                      "region": "us-east-1",      # moto's location rules; Google's is `auto`
                                      "credentials": {"GOOGLE_STORAGE_KEY": "GOOGTESTKEY",
                                                      "GOOGLE_STORAGE_SECRET": "google-secret-x"}})
    round_trip(svc, tmp_path, 3 * 1024 * 1024 + 5)
    src = tmp_path / "link.txt"
    src.write_bytes(b"signed")
    svc.add(src)
    r = cmflow("data", "share", "link.txt", "--expires", "1h", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    q = parse_qs(urlparse(r.stdout.strip()).query)
    assert q["X-Amz-Expires"] == ["3600"] and "/us-east-1/s3/" in q["X-Amz-Credential"][0]
    services = cmflow("data", "services", "--config", str(cfg))
    assert "google" in services.stdout and "google-secret-x" not in services.stdout + services.stderr


def test_google_with_a_service_account_over_the_json_api(tmp_path, fake_gcs, drive):
    _, tokens = drive          # a fake OAuth token endpoint (the service account's token_uri)
    info = service_account(tmp_path, f"{tokens.url}/token")
    svc, cfg = service_for(tmp_path, {"kind": "google", "bucket": "gcs-sa", "endpoint": fake_gcs.endpoint,
                                      "service_account": json.dumps(info)})
    round_trip(svc, tmp_path, 9 * 1024 * 1024 + 3)             # more than one 8 MiB resumable chunk
    assert any(path == "/token" for _, path in tokens.requests)  # the JWT grant went to the token endpoint
    src = tmp_path / "s.txt"
    src.write_bytes(b"sa")
    svc.add(src)
    rec, link = svc.share("s.txt", expires=600)
    q = parse_qs(urlparse(link).query)
    assert q["X-Goog-Algorithm"] == ["GOOG4-RSA-SHA256"] and q["X-Goog-Expires"] == ["600"]
    assert "X-Goog-Signature" in q and "PRIVATE KEY" not in link
    bad = dict(info, private_key="not a key")
    svc2, _ = service_for(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path,
                          {"kind": "google", "bucket": "b", "endpoint": fake_gcs.endpoint,
                           "service_account": json.dumps(bad)})
    statuses = {s.name: s for s in svc2.services()}
    assert not statuses["cloud"].ok and "not a key" not in statuses["cloud"].detail


# ------------------------------------------------------------------ Google Drive (FAKE)
def test_gdrive_round_trip_with_resumable_chunks_and_a_refresh_token(tmp_path, drive):
    fake, tokens = drive
    svc, _ = service_for(tmp_path, {"kind": "gdrive", "endpoint": fake.url, "refresh_token": "r-1",
                                    "client_id": "c", "client_secret": "s", "token_uri": f"{tokens.url}/token",
                                    "chunk_size": 262144})
    round_trip(svc, tmp_path, 262144 * 3 + 17)
    puts = [p for m, p in fake.requests if m == "PUT"]
    assert len(puts) >= 4                                   # 3 full chunks and the rest, each its own request
    folders = [f for f in fake.files.values() if f["mimeType"] == DriveFake.FOLDER]
    assert [f["name"] for f in folders] == ["cmflow"]


def test_gdrive_retries_429_with_retry_after_and_refuses_a_bad_token(tmp_path, drive):
    fake, _ = drive
    token = fake.issue_token()
    svc, _ = service_for(tmp_path, {"kind": "gdrive", "endpoint": fake.url, "token": token})
    fake.fail_next(2, 429, retry_after=1)
    round_trip(svc, tmp_path, 1000)
    assert len(fake.requests) > 2
    svc, _ = service_for(tmp_path, {"kind": "gdrive", "endpoint": fake.url, "token": "wrong-token"})
    with pytest.raises(DataError, match="HTTP 401") as e:
        svc.ls() or svc.storage(None)[1].keys()
    assert "wrong-token" not in str(e.value)


# ------------------------------------------------------------------ Box (FAKE)
def test_box_round_trip_small_and_chunked(tmp_path, box):
    box.part_size = 262144
    token = box.issue_token()
    svc, cfg = service_for(tmp_path, {"kind": "box", "endpoint": box.url, "token": token,
                                      "chunked_threshold": 1048576})
    round_trip(svc, tmp_path, 2000, "small.bin")
    round_trip(svc, tmp_path, 1048576 + 262144 + 11, "big.bin")       # an upload session of 6 parts
    assert sum(1 for m, p in box.requests if m == "PUT" and "upload_sessions" in p) == 6
    r = cmflow("data", "services", "--config", str(cfg))
    assert r.returncode == 0 and "box" in r.stdout and token not in r.stdout


def test_box_retries_429_and_names_a_bad_token(tmp_path, box):
    token = box.issue_token()
    svc, _ = service_for(tmp_path, {"kind": "box", "endpoint": box.url, "token": token})
    box.fail_next(1, 429, retry_after=1)
    round_trip(svc, tmp_path, 500)
    svc, _ = service_for(tmp_path, {"kind": "box", "endpoint": box.url, "token": "nope-token"})
    statuses = {s.name: s for s in svc.services()}
    assert not statuses["cloud"].ok and "401" in statuses["cloud"].detail
    assert "nope-token" not in statuses["cloud"].detail


@pytest.mark.parametrize("kind", ["gdrive", "box"])
def test_a_service_that_does_not_answer_is_a_clear_error(tmp_path, kind):
    from sshhosts import free_port

    svc, cfg = service_for(tmp_path, {"kind": kind, "endpoint": f"http://127.0.0.1:{free_port()}",
                                      "token": "t-secret", "timeout": 2})
    r = cmflow("data", "services", "--config", str(cfg), timeout=120)
    assert r.returncode == 1 and "did not answer" in r.stdout and "t-secret" not in r.stdout
    assert "Traceback" not in r.stdout + r.stderr
