"""FAKES, labelled as such: small local HTTP servers for services no emulator exists for here.

- TokenServer: an OAuth 2.0 token endpoint (RFC 6749 §4.1.3/§4.4 responses; accepts the JWT-bearer grant a
  Google service account sends, and refresh-token grants); hands out bearer tokens and counts requests.
- DriveFake: the subset of the Google Drive API v3 that cmflow's gdrive provider uses (files.list with `q`,
  files.create of folders, resumable uploads with Content-Range and 308, files.get alt=media, files.delete),
  with errors as Drive sends them (401 without a token it issued, 404, 429 with Retry-After).
- BoxFake: the subset of the Box API 2.0 that Box's own Python SDK calls for cmflow's box provider
  (folders, folder items, upload, upload sessions for chunked uploads, download, delete), same errors.

Each runs in a thread on a free loopback port. `fail_next(n, status, retry_after)` makes the next n requests
fail, to test retries. What they do not model: permissions, quotas, versions, search beyond `name = ... and
'ID' in parents`, and anything else the providers do not call.
"""
from __future__ import annotations

import hashlib
import base64
import json
import re
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class _Fake:
    handler_name = "fake"

    def __init__(self):
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self._fail: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _dispatch(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                u = urlparse(self.path)
                with fake.lock:
                    fake.requests.append((method, u.path))
                    fail = fake._fail.pop(0) if fake._fail else None
                if fail:
                    status, retry = fail
                    self.send(status, {"error": {"code": status, "message": "fake: injected failure"}},
                              {"Retry-After": str(retry)})
                    return
                fake.handle(self, method, u.path, parse_qs(u.query), body)

            def send(self, status: int, doc=None, headers=None, raw: bytes | None = None,
                     ctype: str = "application/json") -> None:
                data = raw if raw is not None else (b"" if doc is None else json.dumps(doc).encode())
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if data or status not in (204, 308):
                    self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._dispatch("GET")

            def do_POST(self):
                self._dispatch("POST")

            def do_PUT(self):
                self._dispatch("PUT")

            def do_DELETE(self):
                self._dispatch("DELETE")

            def do_OPTIONS(self):
                self._dispatch("OPTIONS")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, n: int, status: int = 429, retry_after: int = 1) -> None:
        with self.lock:
            self._fail += [(status, retry_after)] * n

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(16)
        self.tokens.add(token)
        return token

    def authorised(self, h) -> bool:
        auth = h.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[7:] in self.tokens

    def handle(self, h, method, path, query, body) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class TokenServer(_Fake):
    """POST /token: jwt-bearer (service accounts) and refresh_token grants -> a bearer token."""

    def __init__(self, issue_to: list[_Fake]):
        super().__init__()
        self.issue_to = issue_to

    def handle(self, h, method, path, query, body):
        form = parse_qs(body.decode())
        grant = (form.get("grant_type") or [""])[0]
        if method != "POST" or path != "/token" or grant not in (
                "urn:ietf:params:oauth:grant-type:jwt-bearer", "refresh_token", "client_credentials"):
            h.send(400, {"error": "unsupported_grant_type"})
            return
        token = secrets.token_urlsafe(16)
        for fake in self.issue_to:
            fake.tokens.add(token)
        h.send(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})


class DriveFake(_Fake):
    FOLDER = "application/vnd.google-apps.folder"

    def __init__(self):
        super().__init__()
        self.files: dict[str, dict] = {}
        self.data: dict[str, bytes] = {}
        self.sessions: dict[str, dict] = {}

    def handle(self, h, method, path, query, body):
        if not self.authorised(h):
            h.send(401, {"error": {"code": 401, "message": "Request had invalid authentication credentials."}})
            return
        q1 = {k: v[0] for k, v in query.items()}
        if path == "/drive/v3/files" and method == "GET":
            items = [f for f in self.files.values() if self._matches(f, q1.get("q", ""))]
            size = int(q1.get("pageSize", 100))
            start = int(q1.get("pageToken", 0))
            page = items[start:start + size]
            doc = {"files": page}
            if start + size < len(items):
                doc["nextPageToken"] = str(start + size)
            h.send(200, doc)
        elif path == "/drive/v3/files" and method == "POST":
            meta = json.loads(body or b"{}")
            fid = self._new(meta, b"")
            h.send(200, self.files[fid])
        elif path == "/upload/drive/v3/files" and method == "POST" and q1.get("uploadType") == "resumable":
            sid = secrets.token_hex(8)
            self.sessions[sid] = {"meta": json.loads(body or b"{}"), "data": b""}
            h.send(200, None, {"Location": f"{self.url}/upload/drive/v3/files?uploadType=resumable&upload_id={sid}"})
        elif path == "/upload/drive/v3/files" and method == "PUT" and q1.get("upload_id") in self.sessions:
            s = self.sessions[q1["upload_id"]]
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", h.headers.get("Content-Range", ""))
            m0 = re.fullmatch(r"bytes \*/(\d+)", h.headers.get("Content-Range", ""))
            if m0 and len(s["data"]) == int(m0.group(1)) == 0:
                total = 0
            elif not m or int(m.group(1)) != len(s["data"]):
                h.send(400, {"error": {"code": 400, "message": "bad Content-Range"}})
                return
            else:
                s["data"] += body
                total = m.group(3)
            if total != "*" and len(s["data"]) == int(total):
                fid = self._new(s["meta"], s["data"])
                del self.sessions[q1["upload_id"]]
                h.send(200, self.files[fid])
            else:
                h.send(308, None, {"Range": f"bytes=0-{len(s['data']) - 1}"})
        elif (m := re.fullmatch(r"/drive/v3/files/([\w-]+)", path)):
            fid = m.group(1)
            if fid not in self.files:
                h.send(404, {"error": {"code": 404, "message": f"File not found: {fid}."}})
            elif method == "DELETE":
                del self.files[fid]
                self.data.pop(fid, None)
                h.send(204)
            elif q1.get("alt") == "media":
                h.send(200, raw=self.data[fid], ctype="application/octet-stream")
            else:
                h.send(200, self.files[fid])
        else:
            h.send(404, {"error": {"code": 404, "message": f"fake: no route {method} {path}"}})

    def _new(self, meta: dict, data: bytes) -> str:
        fid = secrets.token_hex(10)
        self.files[fid] = {"id": fid, "name": meta.get("name", ""), "mimeType": meta.get("mimeType",
                           "application/octet-stream"), "parents": meta.get("parents", ["root"]),
                           "size": str(len(data)), "md5Checksum": hashlib.md5(data).hexdigest()}
        self.data[fid] = data
        return fid

    def _matches(self, f: dict, q: str) -> bool:
        for clause in filter(None, (c.strip() for c in q.split(" and "))):
            if m := re.fullmatch(r"name\s*=\s*'((?:[^'\\]|\\.)*)'", clause):
                if f["name"] != re.sub(r"\\(.)", r"\1", m.group(1)):
                    return False
            elif m := re.fullmatch(r"'([\w-]+)' in parents", clause):
                if m.group(1) not in f["parents"]:
                    return False
            elif m := re.fullmatch(r"mimeType\s*=\s*'([^']*)'", clause):
                if f["mimeType"] != m.group(1):
                    return False
            elif clause == "trashed = false":
                pass
            else:
                raise ValueError(f"fake: query clause not modelled: {clause}")
        return True


class BoxFake(_Fake):
    def __init__(self):
        super().__init__()
        self.items: dict[str, dict] = {"0": {"type": "folder", "id": "0", "name": "All Files", "parent": None}}
        self.data: dict[str, bytes] = {}
        self.sessions: dict[str, dict] = {}
        self.part_size = 8 * 1024 * 1024

    def _entry(self, item: dict) -> dict:
        e = {k: v for k, v in item.items() if k != "parent"}
        if item["parent"] is not None:
            e["parent"] = {"type": "folder", "id": item["parent"]}
        if item["type"] == "file":
            e["size"] = len(self.data[item["id"]])
            e["sha1"] = hashlib.sha1(self.data[item["id"]]).hexdigest()
        return e

    def _new(self, kind: str, name: str, parent: str) -> dict:
        iid = str(secrets.randbelow(10 ** 12) + 10 ** 11)
        self.items[iid] = {"type": kind, "id": iid, "name": name, "parent": parent, "etag": "0"}
        return self.items[iid]

    def _conflict(self, name: str, parent: str) -> dict | None:
        return next((i for i in self.items.values() if i["parent"] == parent and i["name"] == name), None)

    def handle(self, h, method, path, query, body):
        if not self.authorised(h):
            h.send(401, {"type": "error", "status": 401, "code": "unauthorized", "message": "Unauthorized"})
            return
        q1 = {k: v[0] for k, v in query.items()}
        path = path.removeprefix("/2.0").removeprefix("/api/2.0")
        if path == "/folders" and method == "POST":
            doc = json.loads(body)
            parent = doc["parent"]["id"]
            old = self._conflict(doc["name"], parent)
            if old:
                h.send(409, {"type": "error", "status": 409, "code": "item_name_in_use",
                             "message": "Item with the same name already exists",
                             "context_info": {"conflicts": [self._entry(old)]}})
                return
            h.send(201, self._entry(self._new("folder", doc["name"], parent)))
        elif (m := re.fullmatch(r"/folders/(\d+)/items", path)) and method == "GET":
            kids = [self._entry(i) for i in self.items.values() if i["parent"] == m.group(1)]
            off, lim = int(q1.get("offset", 0)), int(q1.get("limit", 100))
            h.send(200, {"total_count": len(kids), "entries": kids[off:off + lim], "offset": off, "limit": lim})
        elif (m := re.fullmatch(r"/folders/(\d+)", path)) and method == "GET":
            item = self.items.get(m.group(1))
            if item is None or item["type"] != "folder":
                h.send(404, {"type": "error", "status": 404, "code": "not_found", "message": "Not Found"})
            else:
                h.send(200, self._entry(item))
        elif path == "/files/content" and method == "POST":
            attrs, data = self._multipart(h, body)
            parent = attrs["parent"]["id"]
            if self._conflict(attrs["name"], parent):
                h.send(409, {"type": "error", "status": 409, "code": "item_name_in_use", "message": "in use"})
                return
            item = self._new("file", attrs["name"], parent)
            self.data[item["id"]] = data
            h.send(201, {"total_count": 1, "entries": [self._entry(item)]})
        elif path == "/files/upload_sessions" and method == "POST":
            doc = json.loads(body)
            sid = secrets.token_hex(8)
            self.sessions[sid] = {"name": doc["file_name"], "parent": doc["folder_id"], "size": doc["file_size"],
                                  "parts": {}}
            base = f"{self.url}/api/2.0/files/upload_sessions/{sid}"
            h.send(201, {"type": "upload_session", "id": sid, "part_size": self.part_size,
                         "total_parts": -(-doc["file_size"] // self.part_size), "num_parts_processed": 0,
                         "session_endpoints": {"upload_part": base, "commit": f"{base}/commit", "abort": base,
                                               "list_parts": f"{base}/parts", "status": base}})
        elif (m := re.fullmatch(r"/files/upload_sessions/(\w+)", path)) and method == "PUT":
            s = self.sessions[m.group(1)]
            r = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", h.headers.get("Content-Range", ""))
            digest = h.headers.get("Digest", "")
            if not r or digest != "sha=" + base64.b64encode(hashlib.sha1(body).digest()).decode():
                h.send(400, {"type": "error", "status": 400, "code": "bad_digest", "message": "bad part"})
                return
            off = int(r.group(1))
            part = {"part_id": secrets.token_hex(4).upper(), "offset": off, "size": len(body),
                    "sha1": hashlib.sha1(body).hexdigest()}
            s["parts"][off] = (part, body)
            h.send(200, {"part": part})
        elif (m := re.fullmatch(r"/files/upload_sessions/(\w+)/parts", path)) and method == "GET":
            parts = [p for _, (p, _) in sorted(self.sessions[m.group(1)]["parts"].items())]
            h.send(200, {"total_count": len(parts), "entries": parts, "offset": 0, "limit": 1000})
        elif (m := re.fullmatch(r"/files/upload_sessions/(\w+)/commit", path)) and method == "POST":
            s = self.sessions.pop(m.group(1))
            data = b"".join(b for _, (_, b) in sorted(s["parts"].items()))
            if len(data) != s["size"]:
                h.send(400, {"type": "error", "status": 400, "code": "bad_size", "message": "size"})
                return
            item = self._new("file", s["name"], s["parent"])
            self.data[item["id"]] = data
            h.send(201, {"total_count": 1, "entries": [self._entry(item)]})
        elif (m := re.fullmatch(r"/files/(\d+)(/content)?", path)):
            item = self.items.get(m.group(1))
            if item is None or item["type"] != "file":
                h.send(404, {"type": "error", "status": 404, "code": "not_found", "message": "Not Found"})
            elif method == "DELETE":
                del self.items[item["id"]]
                del self.data[item["id"]]
                h.send(204)
            elif m.group(2):
                h.send(200, raw=self.data[item["id"]], ctype="application/octet-stream")
            else:
                h.send(200, self._entry(item))
        else:
            h.send(404, {"type": "error", "status": 404, "code": "not_found", "message": f"fake: {method} {path}"})

    @staticmethod
    def _multipart(h, body: bytes) -> tuple[dict, bytes]:
        boundary = re.search(r'boundary="?([^";]+)"?', h.headers.get("Content-Type", "")).group(1).encode()
        attrs, data = {}, b""
        for part in body.split(b"--" + boundary):
            head, _, content = part.partition(b"\r\n\r\n")
            content = content.removesuffix(b"\r\n")
            if b'name="attributes"' in head:
                attrs = json.loads(content)
            elif b'name="file"' in head:
                data = content
        return attrs, data
