"""HTTP for the providers that speak a REST API directly: bearer tokens, retries with back-off on 429/5xx
(honouring Retry-After), a refresh on 401, and errors that never carry a credential."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import DataError, NotFound, Unavailable

RETRY_STATUS = {429, 500, 502, 503, 504}


class TokenSource:
    """An access token, given or obtained (OAuth refresh-token grant, or a Google service account)."""

    def __init__(self, service: str, token: str | None = None, refresh: Callable[[], str] | None = None):
        self.service, self._token, self._refresh = service, token, refresh

    def get(self) -> str:
        if self._token is None:
            self.renew()
        assert self._token is not None
        return self._token

    def renew(self) -> bool:
        if self._refresh is None:
            return False
        self._token = self._refresh()
        return True


class RestClient:
    def __init__(self, service: str, tokens: TokenSource, timeout: float, attempts: int = 6,
                 secrets: tuple[str, ...] = ()):
        import requests

        self.service, self.tokens, self.timeout, self.attempts = service, tokens, timeout, attempts
        self.session = requests.Session()
        self._secrets = tuple(s for s in secrets if s)

    def request(self, method: str, url: str, what: str, ok: tuple[int, ...] = (200, 201, 204), **kw: Any) -> Any:
        import requests

        renewed = False
        for attempt in range(self.attempts):
            headers = {**kw.pop("headers", {}), "Authorization": f"Bearer {self.tokens.get()}"}
            try:
                r = self.session.request(method, url, headers=headers, timeout=self.timeout, **kw)
            except requests.RequestException as e:
                if attempt < 2:    # a service that does not answer: two more tries, then a clear error
                    time.sleep(min(30, 0.5 * 2 ** attempt))
                    kw["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
                    continue
                raise Unavailable(f"{self.service} did not answer ({what}): {type(e).__name__}") from None
            kw["headers"] = {k: v for k, v in headers.items() if k != "Authorization"}
            if r.status_code in ok or r.status_code == 308 and 308 in ok:
                return r
            if r.status_code == 401 and not renewed and self.tokens.renew():
                renewed = True
                continue
            if r.status_code in RETRY_STATUS and attempt + 1 < self.attempts:
                time.sleep(self._wait(r, attempt))
                continue
            if r.status_code == 404:
                raise NotFound(f"{what}: not found in {self.service}")
            raise DataError(f"{self.service}: {what} failed: HTTP {r.status_code} {self._message(r)}")
        raise Unavailable(f"{self.service}: {what}: gave up after {self.attempts} attempts")

    @staticmethod
    def _wait(r: Any, attempt: int) -> float:
        try:
            return min(60.0, max(0.0, float(r.headers.get("Retry-After", ""))))
        except ValueError:
            return min(30.0, 0.5 * 2 ** attempt)

    def _message(self, r: Any) -> str:
        try:
            doc = r.json()
            err = doc.get("error", doc)
            text = err.get("message", "") if isinstance(err, dict) else str(err)
        except ValueError:
            text = r.text[:200]
        for s in self._secrets:
            text = text.replace(s, "***")
        return text[:300]
