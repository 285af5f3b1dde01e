"""Azure Blob Storage and S3 through Apache Libcloud's storage drivers.

Credentials come from the config (or the environment it names) and go to the
driver only: error messages name the service and container, never a key.
"""
from __future__ import annotations

from typing import Any, BinaryIO, Callable, Iterator
from urllib.parse import quote, urlparse

from ..config import Section, number_setting
from ..errors import DataError, NotFound, Unavailable
from . import CHUNK

DEVSTORE_ACCOUNT = "devstoreaccount1"


class LibcloudStorage:
    def __init__(self, driver: Any, container: str, service: str, base_url: str, secrets: tuple[str, ...]):
        self.driver = driver
        self.container_name = container
        self.service = service
        self.base_url = base_url.rstrip("/")
        self._secrets = tuple(s for s in secrets if s)
        self._container: Any = None

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        from libcloud.common.types import LibcloudError
        from libcloud.storage.types import ContainerDoesNotExistError, ObjectDoesNotExistError

        try:
            return fn()
        except ObjectDoesNotExistError:
            raise NotFound(f"{what}: no such object in {self.service}/{self.container_name}") from None
        except ContainerDoesNotExistError:
            raise NotFound(f"{what}: no container {self.container_name} in {self.service}") from None
        except (OSError, LibcloudError, Exception) as e:  # requests' errors derive from OSError
            if isinstance(e, DataError):
                raise
            raise Unavailable(f"{self.service} did not answer ({what}): {self._clean(e)}") from None

    def _clean(self, e: BaseException) -> str:
        text = f"{type(e).__name__}: {e}"
        for s in self._secrets:
            text = text.replace(s, "***")
        return text[:300]

    def _get_container(self) -> Any:
        if self._container is None:
            from libcloud.storage.types import ContainerDoesNotExistError

            def get_or_create() -> Any:
                try:
                    return self.driver.get_container(self.container_name)
                except ContainerDoesNotExistError:
                    return self.driver.create_container(self.container_name)

            self._container = self._guard("open container", get_or_create)
        return self._container

    def put(self, key: str, chunks: Iterator[bytes], content_type: str) -> None:
        container = self._get_container()
        self._guard(f"upload {key}", lambda: self.driver.upload_object_via_stream(
            chunks, container, key, extra={"content_type": content_type}))

    def get(self, key: str, sink: BinaryIO) -> None:
        container = self._get_container()
        obj = self._guard(f"find {key}", lambda: self.driver.get_object(container.name, key))

        def copy() -> None:
            for chunk in self.driver.download_object_as_stream(obj, chunk_size=CHUNK):
                sink.write(chunk)

        self._guard(f"download {key}", copy)

    def delete(self, key: str) -> None:
        container = self._get_container()
        obj = self._guard(f"find {key}", lambda: self.driver.get_object(container.name, key))
        self._guard(f"delete {key}", lambda: self.driver.delete_object(obj))

    def keys(self) -> list[str]:
        container = self._get_container()
        return sorted(o.name for o in self._guard("list", lambda: list(self.driver.list_container_objects(container))))

    def url(self, key: str) -> str:
        return f"{self.base_url}/{quote(self.container_name)}/{quote(key)}"

    def signed_url(self, key: str, seconds: int) -> str:
        """S3: a presigned URL (SigV4, at most 7 days); Azure: a blob SAS with read permission only."""
        container = self._get_container()
        obj = self._guard(f"find {key}", lambda: self.driver.get_object(container.name, key))
        return self._guard(f"sign {key}", lambda: self.driver.get_object_cdn_url(obj, ex_expiry=seconds / 3600))

    def ping(self) -> str:
        self._get_container()
        return f"container {self.container_name} at {self.base_url}"


def _endpoint(section: Section, default: str | None) -> tuple[str | None, int | None, bool, str]:
    endpoint = section.get("endpoint", default)
    if not endpoint:
        return None, None, True, ""
    u = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
    secure = u.scheme == "https"
    return u.hostname, u.port or (443 if secure else 80), secure, f"{u.scheme}://{u.netloc}"


def azure_storage(section: Section) -> LibcloudStorage:
    from libcloud.storage.providers import get_driver
    from libcloud.storage.types import Provider

    account = section.get("account", required=True)
    key = section.get("key", required=True)
    host, port, secure, base = _endpoint(section, None)
    timeout = number_setting(section, "timeout", 10)
    kw: dict[str, Any] = {"secure": secure, "timeout": timeout}
    if host:
        kw.update(host=host, port=port)
        base = f"{base}/{account}"   # emulators (Azurite) are path-style
    else:
        base = f"https://{account}.blob.core.windows.net"
    driver = get_driver(Provider.AZURE_BLOBS)(account, key, **kw)
    return LibcloudStorage(driver, section.get("container", "cmflow"), f"azure:{section.name}", base, (key,))


def s3_storage(section: Section) -> LibcloudStorage:
    from libcloud.storage.providers import get_driver
    from libcloud.storage.types import Provider

    access = section.get("access_key", required=True)
    secret = section.get("secret_key", required=True)
    region = section.get("region", "us-east-1")
    host, port, secure, base = _endpoint(section, None)
    timeout = number_setting(section, "timeout", 10)
    kw: dict[str, Any] = {"secure": secure, "timeout": timeout, "region": region}
    if host:
        kw.update(host=host, port=port)
    else:
        base = f"https://s3.{region}.amazonaws.com"
    driver = get_driver(Provider.S3)(access, secret, **kw)
    return LibcloudStorage(driver, section.get("bucket", "cmflow"), f"s3:{section.name}", base, (secret, access))
