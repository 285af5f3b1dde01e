"""Google Cloud Storage (`kind: google`), two ways in:

- HMAC keys (`access_key`/`secret_key`; the original cmdata.yaml's GOOGLE_STORAGE_KEY/_SECRET): the XML API,
  which is S3-compatible, through Libcloud's S3 driver with V4 signatures at storage.googleapis.com
  (region `auto` unless the config names one). Signed links: V4 presigned URLs.
- a service account (`service_account: FILE` of its JSON key, or `{env: NAME}` holding the JSON): the JSON
  API through Google's own client library (google-cloud-storage): resumable uploads in chunks, V4 signed
  URLs made with the account's key. `endpoint:` points it at an emulator (fake-gcs-server in the tests);
  `anonymous: true` skips credentials, for emulators only.

Credentials go to the library only; error messages name the bucket, never a key.
"""
from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any, BinaryIO, Callable, Iterator

from ..config import Section, number_setting
from ..errors import DataError, NotFound, Unavailable
from . import CHUNK
from .cloud import LibcloudStorage, _endpoint

GCS_HOST = "https://storage.googleapis.com"


def google_storage(section: Section) -> Any:
    if section.get("service_account") is not None or section.get("anonymous"):
        return GcsJsonStorage(section)
    return _hmac_storage(section)


def _hmac_storage(section: Section) -> LibcloudStorage:
    from libcloud.storage.providers import get_driver
    from libcloud.storage.types import Provider

    access = section.get("access_key", required=True)
    secret = section.get("secret_key", required=True)
    host, port, secure, base = _endpoint(section, GCS_HOST)
    timeout = number_setting(section, "timeout", 10)
    driver = get_driver(Provider.S3)(access, secret, secure=secure, timeout=timeout, host=host, port=port,
                                     region="us-east-1")
    driver.region_name = section.get("region", "auto")   # the V4 signer reads it; GCS wants `auto`
    return LibcloudStorage(driver, section.get("bucket", "cmflow"), f"google:{section.name}", base,
                           (secret, access))


class GcsJsonStorage:
    def __init__(self, section: Section):
        self.section = section
        self.bucket_name = section.get("bucket", "cmflow")
        self.service = f"google:{section.name}"
        self.timeout = number_setting(section, "timeout", 10)
        self._bucket: Any = None
        self._credentials: Any = None

    def _client(self) -> Any:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        raw = self.section.get("service_account")
        endpoint = self.section.get("endpoint")
        if raw is not None:
            info = self._account_info(raw)
            from google.oauth2 import service_account

            scopes = ["https://www.googleapis.com/auth/devstorage.read_write"]
            self._credentials = service_account.Credentials.from_service_account_info(info, scopes=scopes)
            project = info.get("project_id")
        else:
            if not endpoint:
                raise DataError(f"{self.service}: anonymous access is for emulators: set endpoint: too")
            self._credentials, project = AnonymousCredentials(), "cmflow"
        options = ClientOptions(api_endpoint=endpoint) if endpoint else None
        return storage.Client(project=project, credentials=self._credentials, client_options=options)

    def _account_info(self, raw: Any) -> dict:
        try:
            if isinstance(raw, dict):
                return raw
            text = raw.strip()
            if not text.startswith("{"):
                with open(os.path.expanduser(text)) as f:
                    text = f.read()
            info = json.loads(text)
        except (OSError, ValueError) as e:
            raise DataError(f"{self.service}: service_account is not a readable JSON key "
                            f"({type(e).__name__})") from None
        if not isinstance(info, dict) or info.get("type") != "service_account" or "private_key" not in info:
            raise DataError(f"{self.service}: service_account is not a service-account JSON key")
        return info

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        from google.api_core import exceptions as gexc

        try:
            return fn()
        except gexc.NotFound:
            raise NotFound(f"{what}: not found in {self.service}/{self.bucket_name}") from None
        except DataError:
            raise
        except Exception as e:   # transport errors, auth errors, 5xx after the library's retries
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise Unavailable(f"{self.service} did not answer ({what}): {type(e).__name__}: {first}") from None

    def _get_bucket(self) -> Any:
        if self._bucket is None:
            from google.api_core import exceptions as gexc

            client = self._guard("connect", self._client)

            def get_or_create() -> Any:
                try:
                    return client.get_bucket(self.bucket_name, timeout=self.timeout)
                except gexc.NotFound:
                    return client.create_bucket(self.bucket_name, timeout=self.timeout)

            self._bucket = self._guard("open bucket", get_or_create)
        return self._bucket

    def put(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        bucket = self._get_bucket()
        blob = bucket.blob(key, chunk_size=8 * CHUNK)     # resumable upload, 8 MiB per request

        def upload() -> None:
            with blob.open("wb", content_type=content_type) as f:
                for chunk in chunks:
                    f.write(chunk)

        self._guard(f"upload {key}", upload)

    def get(self, key: str, sink: BinaryIO) -> None:
        blob = self._get_bucket().blob(key, chunk_size=8 * CHUNK)

        def download() -> None:
            with blob.open("rb") as f:
                while True:
                    data = f.read(CHUNK)
                    if not data:
                        return
                    sink.write(data)

        self._guard(f"download {key}", download)

    def delete(self, key: str) -> None:
        bucket = self._get_bucket()
        self._guard(f"delete {key}", lambda: bucket.delete_blob(key, timeout=self.timeout))

    def keys(self) -> list[str]:
        bucket = self._get_bucket()
        return sorted(b.name for b in self._guard("list", lambda: list(bucket.list_blobs(timeout=self.timeout))))

    def url(self, key: str) -> str:
        from urllib.parse import quote

        base = (self.section.get("endpoint") or GCS_HOST).rstrip("/")
        return f"{base}/{quote(self.bucket_name)}/{quote(key)}"

    def signed_url(self, key: str, seconds: int) -> str:
        bucket = self._get_bucket()
        if self.section.get("service_account") is None:
            raise DataError(f"{self.service}: signed links need a service account's key (or HMAC keys)")
        blob = bucket.blob(key)
        endpoint = self.section.get("endpoint")
        return self._guard(f"sign {key}", lambda: blob.generate_signed_url(
            version="v4", expiration=timedelta(seconds=seconds), method="GET", credentials=self._credentials,
            **({"api_access_endpoint": endpoint} if endpoint else {})))

    def ping(self) -> str:
        self._get_bucket()
        return f"bucket {self.bucket_name} (JSON API{' at ' + self.section.get('endpoint') if self.section.get('endpoint') else ''})"
