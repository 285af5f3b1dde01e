"""Google Drive (`kind: gdrive`) through the Drive API v3, directly over HTTPS.

Objects are files in one Drive folder (`folder:`, default `cmflow`, created in My Drive if missing); an
object key maps to a file ID by a name query in that folder, cached. Uploads are resumable, in chunks of
`chunk_size` (a multiple of 256 KiB, default 8 MiB), so a file of any size streams. Credentials, from the
config or the environment it names (never printed): `token` (an OAuth access token), or `refresh_token` +
`client_id` + `client_secret` (renewed at `token_uri`), or `service_account` (a JSON key; its `token_uri`).
429 and 5xx are retried with back-off, honouring Retry-After. Drive has no time-limited links.
"""
from __future__ import annotations

import json
from typing import Any, BinaryIO, Iterator
from urllib.parse import quote

from ..config import Section, number_setting
from ..errors import DataError, NotFound
from . import CHUNK
from .http import RestClient, TokenSource

API = "https://www.googleapis.com"
FOLDER_MIME = "application/vnd.google-apps.folder"
GRAIN = 256 * 1024


def _q(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tokens(section: Section, service: str) -> tuple[TokenSource, tuple[str, ...]]:
    import requests

    token = section.get("token")
    refresh = section.get("refresh_token")
    account = section.get("service_account")
    if token:
        return TokenSource(service, token), (token,)
    if refresh:
        client_id = section.get("client_id", required=True)
        secret = section.get("client_secret", required=True)
        uri = section.get("token_uri", "https://oauth2.googleapis.com/token")

        def renew() -> str:
            r = requests.post(uri, data={"grant_type": "refresh_token", "refresh_token": refresh,
                                         "client_id": client_id, "client_secret": secret}, timeout=30)
            if r.status_code != 200:
                raise DataError(f"{service}: the token endpoint refused the refresh token (HTTP {r.status_code})")
            return r.json()["access_token"]
        return TokenSource(service, None, renew), (refresh, secret)
    if account:
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account

        info = account if isinstance(account, dict) else json.loads(
            account if account.strip().startswith("{") else open(account).read())
        creds = service_account.Credentials.from_service_account_info(
            info, scopes=["https://www.googleapis.com/auth/drive.file"])

        def renew_sa() -> str:
            creds.refresh(Request())
            return creds.token
        return TokenSource(service, None, renew_sa), (info.get("private_key", ""),)
    raise DataError(f"{service}: no credentials: set token, refresh_token (+ client_id, client_secret) "
                    f"or service_account")


class DriveStorage:
    def __init__(self, section: Section):
        self.service = f"gdrive:{section.name}"
        self.api = str(section.get("endpoint", API)).rstrip("/")
        self.folder_name = section.get("folder", "cmflow")
        self.chunk = int(number_setting(section, "chunk_size", 32 * GRAIN))
        if self.chunk <= 0 or self.chunk % GRAIN:
            raise DataError(f"{self.service}: chunk_size must be a positive multiple of 256 KiB")
        tokens, secrets = _tokens(section, self.service)
        self.http = RestClient(self.service, tokens, number_setting(section, "timeout", 30), secrets=secrets)
        self._folder: str | None = None
        self._ids: dict[str, str] = {}

    def _list(self, q: str, fields: str = "nextPageToken, files(id, name, size)") -> list[dict]:
        out, token = [], None
        while True:
            params = {"q": q, "fields": fields, "pageSize": 1000, "spaces": "drive"}
            if token:
                params["pageToken"] = token
            doc = self.http.request("GET", f"{self.api}/drive/v3/files", "list", params=params).json()
            out += doc.get("files", [])
            token = doc.get("nextPageToken")
            if not token:
                return out

    def _folder_id(self) -> str:
        if self._folder is None:
            found = self._list(f"name = {_q(self.folder_name)} and mimeType = {_q(FOLDER_MIME)} and "
                               f"'root' in parents and trashed = false")
            if found:
                self._folder = found[0]["id"]
            else:
                r = self.http.request("POST", f"{self.api}/drive/v3/files", "create folder",
                                      json={"name": self.folder_name, "mimeType": FOLDER_MIME, "parents": ["root"]})
                self._folder = r.json()["id"]
        return self._folder

    def _id(self, key: str) -> str:
        if key not in self._ids:
            found = self._list(f"name = {_q(key)} and '{self._folder_id()}' in parents and trashed = false")
            if not found:
                raise NotFound(f"{key}: no such file in {self.service} folder {self.folder_name}")
            self._ids[key] = found[0]["id"]
        return self._ids[key]

    def put(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        meta = {"name": key, "parents": [self._folder_id()], "mimeType": content_type}
        r = self.http.request("POST", f"{self.api}/upload/drive/v3/files?uploadType=resumable", "start upload",
                              json=meta, headers={"X-Upload-Content-Type": content_type})
        session = r.headers["Location"]
        sent, buf = 0, bytearray()
        doc = None
        for piece in chunks:
            buf += piece
            while len(buf) >= self.chunk + 1:    # keep at least a byte back: the last request carries the total
                self._put_range(session, key, bytes(buf[:self.chunk]), sent, None)
                sent += self.chunk
                del buf[:self.chunk]
        doc = self._put_range(session, key, bytes(buf), sent, sent + len(buf))
        if doc is None:
            raise DataError(f"{self.service}: upload of {key} did not complete")
        self._ids[key] = doc["id"]

    def _put_range(self, session: str, key: str, data: bytes, start: int, total: int | None) -> dict | None:
        if not data:
            rng = f"bytes */{total}"
        else:
            rng = f"bytes {start}-{start + len(data) - 1}/{'*' if total is None else total}"
        r = self.http.request("PUT", session, f"upload {key}", ok=(200, 201, 308), data=data,
                              headers={"Content-Range": rng})
        return r.json() if r.status_code in (200, 201) else None

    def get(self, key: str, sink: BinaryIO) -> None:
        r = self.http.request("GET", f"{self.api}/drive/v3/files/{self._id(key)}?alt=media", f"download {key}",
                              stream=True)
        for data in r.iter_content(CHUNK):
            sink.write(data)

    def delete(self, key: str) -> None:
        self.http.request("DELETE", f"{self.api}/drive/v3/files/{self._id(key)}", f"delete {key}")
        self._ids.pop(key, None)

    def keys(self) -> list[str]:
        return sorted(f["name"] for f in self._list(f"'{self._folder_id()}' in parents and trashed = false"))

    def url(self, key: str) -> str:
        return f"https://drive.google.com/file/d/{quote(self._id(key))}/view"

    def signed_url(self, key: str, seconds: int) -> str:
        raise DataError("Google Drive has no time-limited links; record readers with `share --with USER`")

    def ping(self) -> str:
        return f"folder {self.folder_name} ({self._folder_id()}) at {self.api}"
