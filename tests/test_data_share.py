"""cmflow data: access policies and time-limited links (moto's S3 server, Azurite), and the original
project's cmdata.yaml as written."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from cmflow.data import DataService
from cmflow.data.config import parse_config
from cmflow.data.errors import DataError

from conftest import cmflow
from test_data import azurite, make_service, moto  # noqa: F401  (fixtures)

# the original `cm` project's data/cmdata.yaml (cloudmesh-community/cm, "Add multi-cloud data service")
ORIGINAL_CMDATA = """\
cmdata:
  default:
    db: local
    service: local
  db:
    local:
      kind: local
      CMDATA_DB_FOLDER: './test/db'
    mongo: 
      kind: mongo
      MONGO_CONNECTION_STRING: ''
  service:
    local:
      kind: local
      CMDATA_STORAGE_FOLDER: './test/storage'
    azure:
      kind: azure
      container: 'cmdata'
      credentials:
        AZURE_STORAGE_ACCOUNT: ''
        AZURE_STORAGE_KEY: ''
    google:
      kind: google
      credentials:
        GOOGLE_STORAGE_KEY: ''
        GOOGLE_STORAGE_SECRET: ''
"""

# a record as the original's LocalDBProvider wrote it: yaml.dump of a CloudFile object
LEGACY_RECORD = """\
!!python/object:CloudFile.CloudFile
date_created: 2018-10-01 12:00:00.000000
name: hello.txt
owner: someone
policies: []
service: local
size: 12
url: /tmp/hello.txt
"""


def curl(url: str) -> tuple[int, bytes]:
    r = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", url], capture_output=True, timeout=60)
    body, _, code = r.stdout.rpartition(b"\n")
    return int(code or 0), body


def test_the_original_cmdata_yaml_round_trips_a_file_with_local_folders(tmp_path):
    (tmp_path / "cmdata.yaml").write_text(ORIGINAL_CMDATA)
    (tmp_path / "test" / "db").mkdir(parents=True)
    (tmp_path / "test" / "db" / "hello.txt.yaml").write_text(LEGACY_RECORD)
    src = tmp_path / "results.csv"
    src.write_bytes(b"a,b\n1,2\n")
    env = {"HOME": str(tmp_path), "AZURE_STORAGE_ACCOUNT": "", "COLUMNS": "200"}
    cfg = str(tmp_path / "cmdata.yaml")
    assert cmflow("data", "add", str(src), "--config", cfg, cwd=tmp_path, env=env).returncode == 0
    assert (tmp_path / "test" / "storage").is_dir()          # './test/storage' relative to the config file
    r = cmflow("data", "ls", "--config", cfg, cwd=tmp_path, env=env)
    assert r.returncode == 0 and "results.csv" in r.stdout
    # the original's own record is named, with a warning, and never stops the listing
    assert "hello.txt.yaml" in r.stderr and "legacy record" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "back"
    out.mkdir()
    assert cmflow("data", "get", "results.csv", str(out), "--config", cfg, cwd=tmp_path, env=env).returncode == 0
    assert (out / "results.csv").read_bytes() == src.read_bytes()
    # the google service (a kind cmflow has) with its empty credentials: the environment variables of
    # those names are read; unset, `services` says which one, and the local services stay fine
    r = cmflow("data", "services", "--config", cfg, cwd=tmp_path, env=env)
    assert "GOOGLE_STORAGE_KEY" in r.stdout and "local" in r.stdout
    assert r.stdout.count(" ok ") >= 2
    assert cmflow("data", "del", "results.csv", "--config", cfg, cwd=tmp_path, env=env).returncode == 0


def test_empty_values_mean_the_environment_variable_of_that_name(tmp_path):
    cfg = parse_config(ORIGINAL_CMDATA, str(tmp_path / "cmdata.yaml"))
    az = cfg.services["azure"]
    assert az.settings["account"] == {"env": "AZURE_STORAGE_ACCOUNT"} and az.get("container") == "cmdata"
    assert cfg.dbs["mongo"].settings["url"] == {"env": "MONGO_CONNECTION_STRING"}
    assert cfg.services["google"].settings["secret_key"] == {"env": "GOOGLE_STORAGE_SECRET"}
    assert cfg.dbs["local"].settings["path"] == str(tmp_path / "test" / "db")


def test_an_unsupported_kind_is_named_and_the_rest_keep_working(tmp_path):
    text = ORIGINAL_CMDATA.replace("kind: google", "kind: dropbox")
    (tmp_path / "cmdata.yaml").write_text(text)
    svc = DataService(parse_config(text, str(tmp_path / "cmdata.yaml")))
    with pytest.raises(DataError, match="service 'google': kind 'dropbox' is not supported"):
        svc.storage("google")
    statuses = {s.name: s for s in svc.services()}
    assert statuses["local"].ok and not statuses["google"].ok
    assert "not supported" in statuses["google"].detail


def test_names_starting_with_a_dot_are_listed(make_service, tmp_path):  # noqa: F811
    svc = make_service()
    src = tmp_path / "x"
    src.write_bytes(b"1")
    svc.add(src, name=".hidden.csv")
    assert [r.name for r in svc.ls()] == [".hidden.csv"]


def test_share_and_unshare_change_the_policy_ls_shows(make_service, tmp_path):  # noqa: F811
    svc = make_service()
    src = tmp_path / "r.csv"
    src.write_bytes(b"1,2\n")
    svc.add(src)
    record, link = svc.share("r.csv", ("alice", "bob"))
    assert link is None and record.policy == "shared: alice, bob"
    assert svc.db.get("r.csv").readers == ("alice", "bob")
    assert svc.share("r.csv", public=True)[0].policy == "public"
    assert svc.unshare("r.csv", public=True).policy == "shared: alice, bob"
    assert svc.unshare("r.csv", ("alice",)).policy == "shared: bob"
    assert svc.unshare("r.csv").policy == "private"
    with pytest.raises(DataError, match="cannot make time-limited links"):
        svc.share("r.csv", expires=60)
    cfg = str(make_service.config)
    r = cmflow("data", "share", "r.csv", "--with", "carol", "--config", cfg, env={"COLUMNS": "200"})
    assert r.returncode == 0 and "shared: carol" in r.stderr
    r = cmflow("data", "ls", "--config", cfg, env={"COLUMNS": "200"})
    assert "POLICY" in r.stdout and "shared: carol" in r.stdout
    for bad in ("0", "8d", "soon", "-1h"):
        r = cmflow("data", "share", "r.csv", "--expires", bad, "--config", cfg)
        assert r.returncode == 2 and "--expires" in r.stderr


def test_s3_share_expires_gives_a_presigned_link_that_works(make_service, tmp_path):  # noqa: F811
    svc = make_service(service="s3")
    src = tmp_path / "s3.bin"
    src.write_bytes(b"payload-s3")
    svc.add(src)
    r = cmflow("data", "share", "s3.bin", "--expires", "10m", "--config", str(make_service.config))
    assert r.returncode == 0, r.stderr
    link = r.stdout.strip()
    query = parse_qs(urlparse(link).query)
    assert query["X-Amz-Expires"] == ["600"] and "X-Amz-Signature" in query
    assert "testing-secret" not in link and "testing-secret" not in r.stderr
    # moto's server does not enforce a presigned URL's expiry, so only "works" is checked here;
    # expiry itself is checked on Azurite below
    assert curl(link) == (200, b"payload-s3")


def test_azure_share_expires_gives_a_sas_link_that_stops_working(make_service, tmp_path):  # noqa: F811
    svc = make_service(service="azure")
    src = tmp_path / "az.bin"
    src.write_bytes(b"payload-azure")
    svc.add(src)
    r = cmflow("data", "share", "az.bin", "--expires", "3s", "--config", str(make_service.config))
    assert r.returncode == 0, r.stderr
    link = r.stdout.strip()
    query = parse_qs(urlparse(link).query)
    assert query["sp"] == ["r"] and "sig" in query and "se" in query
    expiry = time.mktime(time.strptime(query["se"][0], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert curl(link) == (200, b"payload-azure")
    # the link's own expiry time is the event: wait until it has passed, then Azurite must refuse
    while time.time() <= expiry + 1:
        time.sleep(0.2)
    code, _ = curl(link)
    assert code == 403
    assert curl(svc.share("az.bin", expires=600)[1])[0] == 200     # a fresh link works again
