"""Read the Secrets that jobs reference, with a short cache.

It uses the ``kubernetes`` client (configured by kopf's login, or explicitly in tests) in a worker
thread, and needs only ``get`` on Secrets.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable, Mapping

import kubernetes


class SecretNotFoundError(Exception):
    pass


class SecretUnreadableError(Exception):
    pass


class SecretReader:
    def __init__(
        self,
        *,
        cache_seconds: float = 30.0,
        api_client_factory: Callable[[], kubernetes.client.ApiClient] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache_seconds = cache_seconds
        self._factory = api_client_factory or kubernetes.client.ApiClient
        self._clock = clock
        self._api: kubernetes.client.CoreV1Api | None = None
        self._cache: dict[tuple[str, str], tuple[float, Mapping[str, bytes]]] = {}

    def _core(self) -> kubernetes.client.CoreV1Api:
        if self._api is None:
            self._api = kubernetes.client.CoreV1Api(self._factory())
        return self._api

    async def read(self, namespace: str, name: str) -> Mapping[str, bytes]:
        key = (namespace, name)
        cached = self._cache.get(key)
        now = self._clock()
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        data = await asyncio.to_thread(self._read_blocking, namespace, name)
        self._cache[key] = (now, data)
        return data

    def forget(self, namespace: str, name: str) -> None:
        self._cache.pop((namespace, name), None)

    def _read_blocking(self, namespace: str, name: str) -> Mapping[str, bytes]:
        try:
            secret = self._core().read_namespaced_secret(name=name, namespace=namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                raise SecretNotFoundError(f"Secret {namespace}/{name} does not exist") from None
            raise SecretUnreadableError(
                f"Secret {namespace}/{name} could not be read (HTTP {exc.status} {exc.reason})"
            ) from None
        except Exception as exc:  # connection errors of urllib3 and the like
            raise SecretUnreadableError(
                f"Secret {namespace}/{name} could not be read ({type(exc).__name__})"
            ) from None
        data: dict[str, bytes] = {}
        for field, value in (secret.data or {}).items():
            data[field] = base64.b64decode(value)
        for field, value in (secret.string_data or {}).items():
            data[field] = value.encode()
        return data
