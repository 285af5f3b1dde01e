"""Box (`kind: box`) through Box's official Python SDK (PyPI `boxsdk` >= 10, module `box_sdk_gen`).

Objects are files in one Box folder (`folder:`, default `cmflow`, created under All Files if missing); a
key maps to a file ID through the folder's listing, cached. Files of `chunked_threshold` bytes or more
(default 20 MiB, Box's minimum for upload sessions) go up in parts through an upload session, each part
SHA-1 checked by Box; smaller ones in one request. The upload is spooled to a temporary file first
(bounded memory; Box needs the size before it starts). Credentials, from the config or the environment
it names, never printed: `token` (a developer or access token) or `client_id` + `client_secret` +
`enterprise_id` (a Client Credentials Grant app). The SDK retries 429 and 5xx, honouring Retry-After.
`endpoint:` (with `upload_endpoint:`, `oauth_endpoint:`) points it elsewhere: the tests' fake.
Box has no time-limited links here.
"""
from __future__ import annotations

import tempfile
from typing import Any, BinaryIO, Callable, Iterator

from ..config import Section, number_setting
from ..errors import DataError, NotFound, Unavailable
from . import CHUNK


class BoxStorage:
    def __init__(self, section: Section):
        self.service = f"box:{section.name}"
        self.section = section
        self.folder_name = section.get("folder", "cmflow")
        self.threshold = int(number_setting(section, "chunked_threshold", 20 * 1024 * 1024))
        self._client: Any = None
        self._folder: str | None = None
        self._ids: dict[str, str] = {}
        self._secrets = tuple(str(section.get(k) or "") for k in ("token", "client_secret"))

    def client(self) -> Any:
        if self._client is None:
            from box_sdk_gen import (BaseUrls, BoxCCGAuth, BoxClient, BoxDeveloperTokenAuth, CCGConfig,
                                     NetworkSession)

            s = self.section
            token = s.get("token")
            if token:
                auth: Any = BoxDeveloperTokenAuth(token=token)
            elif s.get("client_id") is not None:
                auth = BoxCCGAuth(config=CCGConfig(client_id=s.get("client_id", required=True),
                                                   client_secret=s.get("client_secret", required=True),
                                                   enterprise_id=s.get("enterprise_id")))
            else:
                raise DataError(f"{self.service}: no credentials: set token, or client_id + client_secret + "
                                f"enterprise_id")
            session = NetworkSession()
            endpoint = s.get("endpoint")
            if endpoint:
                base = str(endpoint).rstrip("/")
                session = session.with_custom_base_urls(BaseUrls(
                    base_url=base, upload_url=str(s.get("upload_endpoint", f"{base}/api")).rstrip("/"),
                    oauth_2_url=str(s.get("oauth_endpoint", f"{base}/oauth2")).rstrip("/")))
            self._client = BoxClient(auth=auth, network_session=session)
        return self._client

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        from box_sdk_gen import BoxAPIError, BoxSDKError

        try:
            return fn()
        except BoxAPIError as e:
            status = e.response_info.status_code
            if status == 404:
                raise NotFound(f"{what}: not found in {self.service}") from None
            msg = str(getattr(e.response_info, "message", "") or "")[:200]
            for sec in self._secrets:
                if sec:
                    msg = msg.replace(sec, "***")
            raise DataError(f"{self.service}: {what} failed: HTTP {status} {msg}") from None
        except BoxSDKError as e:
            if "token" in e.message.lower():    # a 401 the SDK could not cure by refreshing
                raise DataError(f"{self.service}: {what} refused: HTTP 401 ({e.message[:200]})") from None
            raise Unavailable(f"{self.service} did not answer ({what}): {e.message[:200]}") from None
        except DataError:
            raise
        except Exception as e:
            raise Unavailable(f"{self.service} did not answer ({what}): {type(e).__name__}") from None

    def _folder_id(self) -> str:
        if self._folder is None:
            from box_sdk_gen import BoxAPIError, CreateFolderParent

            def find_or_create() -> str:
                try:
                    return self.client().folders.create_folder(self.folder_name, CreateFolderParent(id="0")).id
                except BoxAPIError as e:
                    if e.response_info.status_code != 409:
                        raise
                    for item in self._items("0"):
                        if item.type == "folder" and item.name == self.folder_name:
                            return item.id
                    raise
            self._folder = self._guard("open folder", find_or_create)
        return self._folder

    def _items(self, folder: str) -> list[Any]:
        out, offset = [], 0
        while True:
            page = self.client().folders.get_folder_items(folder, offset=offset, limit=1000)
            out += page.entries or []
            offset += len(page.entries or [])
            if not page.entries or offset >= (page.total_count or 0):
                return out

    def _id(self, key: str) -> str:
        if key not in self._ids:
            items = self._guard("list", lambda: self._items(self._folder_id()))
            for item in items:
                if item.type == "file":
                    self._ids[item.name] = item.id
            if key not in self._ids:
                raise NotFound(f"{key}: no such file in {self.service} folder {self.folder_name}")
        return self._ids[key]

    def put(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        from box_sdk_gen import UploadFileAttributes, UploadFileAttributesParentField

        folder = self._folder_id()
        with tempfile.SpooledTemporaryFile(max_size=8 * CHUNK) as spool:
            size = 0
            for piece in chunks:
                spool.write(piece)
                size += len(piece)
            spool.seek(0)
            uploads = self.client()
            if size >= self.threshold:
                entry = self._guard(f"upload {key}", lambda: uploads.chunked_uploads.upload_big_file(
                    spool, key, size, folder))
            else:
                attrs = UploadFileAttributes(name=key, parent=UploadFileAttributesParentField(id=folder))
                entry = self._guard(f"upload {key}", lambda: uploads.uploads.upload_file(
                    attrs, spool, file_content_type=content_type).entries[0])
        self._ids[key] = entry.id

    def get(self, key: str, sink: BinaryIO) -> None:
        fid = self._id(key)

        def download() -> None:
            stream = self.client().downloads.download_file(fid)
            while True:
                data = stream.read(CHUNK)
                if not data:
                    return
                sink.write(data)

        self._guard(f"download {key}", download)

    def delete(self, key: str) -> None:
        fid = self._id(key)
        self._guard(f"delete {key}", lambda: self.client().files.delete_file_by_id(fid))
        self._ids.pop(key, None)

    def keys(self) -> list[str]:
        return sorted(i.name for i in self._guard("list", lambda: self._items(self._folder_id())) if i.type == "file")

    def url(self, key: str) -> str:
        return f"https://app.box.com/file/{self._id(key)}"

    def signed_url(self, key: str, seconds: int) -> str:
        raise DataError("Box links are not made by cmflow; record readers with `share --with USER`")

    def ping(self) -> str:
        return f"folder {self.folder_name} ({self._folder_id()})"
