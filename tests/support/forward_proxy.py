"""A small HTTP forward proxy for tests: CONNECT tunnels and absolute-form plain HTTP requests.

It runs its own event loop in a background thread, so that synchronous code (boto3) and
subprocesses (the operator) can use it as well as the test's own loop. Every request is recorded
(method, target ``host:port``, the proxy's answer) in a bounded log. It is bounded in every other
way too: concurrent connections, the size of a request head, idle time of a tunnel. By default it
only connects to loopback targets, so that no test traffic can leave the machine through it.

    with ForwardProxy() as proxy:
        env["HTTPS_PROXY"] = proxy.url
        ...
        assert "127.0.0.2:8443" in proxy.targets("CONNECT")
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

#: Request and response headers that concern one hop only; not forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    }
)
_REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def loopback_only(host: str) -> bool:
    """True for loopback IP addresses and ``localhost``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ProxyRecord:
    """One request the proxy received. ``status`` is what the proxy answered itself: 200 for a tunnel
    it opened, 0 for a plain request it forwarded, or its own error status."""

    method: str
    target: str  # host:port
    status: int
    #: The request's Proxy-Authorization header, if it had one (test credentials only).
    proxy_authorization: str | None = None


def _split_host_port(authority: str, default_port: int) -> tuple[str, int]:
    if authority.startswith("["):  # [::1]:443
        host, _, rest = authority[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
    if not host:
        raise ValueError(f"no host in {authority!r}")
    return host, int(port) if port else default_port


def _parse_request_line(line: str) -> tuple[str, str, int, str, str]:
    """(method, host, port, origin-form path, version) of ``CONNECT host:port`` or an absolute-form
    request; ValueError for anything else."""
    method, target, version = line.split(" ")
    if method == "CONNECT":
        host, port = _split_host_port(target, 443)
        return method, host, port, "", version
    url = urlsplit(target)
    if url.scheme != "http" or not url.hostname:
        raise ValueError("a forward proxy takes absolute http:// URLs")
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    return method, url.hostname, url.port or 80, path, version


def _head(first_line: str, header_lines: list[str]) -> bytes:
    """A message head with the end-to-end headers of ``header_lines`` and ``Connection: close``."""
    kept = [line for line in header_lines if line.partition(":")[0].strip().lower() not in _HOP_BY_HOP]
    return "\r\n".join([first_line, *kept, "Connection: close", "", ""]).encode("latin-1")


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ForwardProxy:
    """An HTTP/1.1 forward proxy on ``host`` (a free port unless ``port`` is given).

    - ``CONNECT host:port`` opens a TCP tunnel (how clients reach https URLs through a proxy).
    - ``GET http://host:port/path`` (absolute form) is forwarded in origin form, one request per
      connection (``Connection: close`` both ways).
    - Targets that ``allow`` refuses get 403; unreachable ones 502; beyond ``max_connections``
      concurrent connections, 503.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow: Callable[[str], bool] = loopback_only,
        max_connections: int = 64,
        max_records: int = 10_000,
        max_head_bytes: int = 64 * 1024,
        head_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        idle_timeout: float = 120.0,
    ) -> None:
        self.host = host
        self._port = port
        self._allow = allow
        self._max_connections = max_connections
        self._max_head_bytes = max_head_bytes
        self._head_timeout = head_timeout
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._records: collections.deque[ProxyRecord] = collections.deque(maxlen=max_records)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ use

    @property
    def port(self) -> int:
        if not self._ready.is_set() or self._error is not None:
            raise RuntimeError("the proxy is not running")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port``: the value for HTTPS_PROXY and HTTP_PROXY."""
        return f"http://{_target(self.host, self.port)}"

    @property
    def records(self) -> list[ProxyRecord]:
        with self._lock:
            return list(self._records)

    def targets(self, method: str | None = None) -> set[str]:
        """The ``host:port`` targets requested (with ``method`` only, e.g. ``"CONNECT"``)."""
        return {r.target for r in self.records if method is None or r.method == method}

    def hosts(self, method: str | None = None) -> set[str]:
        """The target hosts requested, without ports."""
        return {_split_host_port(target, 0)[0] for target in self.targets(method)}

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the proxy is already started")
        self._thread = threading.Thread(target=self._run, name="forward-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the proxy did not start")
        if self._error is not None:
            raise RuntimeError(f"the proxy did not start: {self._error!r}")

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just finished
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("the proxy thread did not stop")

    def __enter__(self) -> ForwardProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); the thread ends quietly
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._handle, self.host, self._port, limit=self._max_head_bytes, backlog=self._max_connections
        )
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

    # ------------------------------------------------------------------ one connection

    def _record(self, method: str, target: str, status: int, authorization: str | None = None) -> None:
        with self._lock:
            self._records.append(ProxyRecord(method, target, status, authorization))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= self._max_connections:
            self._record("?", "?", 503)
            await self._answer(writer, 503)
            await _close(writer)
            return
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._head_timeout)
        except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError):
            await self._answer(writer, 400)
            return
        request_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        try:
            method, host, port, path, version = _parse_request_line(request_line)
        except ValueError:
            self._record(request_line.partition(" ")[0][:16], "?", 400)
            await self._answer(writer, 400)
            return
        where = _target(host, port)
        authorization = next(
            (
                value.strip()
                for name, _, value in (line.partition(":") for line in header_lines)
                if name.strip().lower() == "proxy-authorization"
            ),
            None,
        )
        if not self._allow(host):
            self._record(method, where, 403)
            await self._answer(writer, 403)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, limit=self._max_head_bytes), self._connect_timeout
            )
        except (OSError, TimeoutError):
            self._record(method, where, 502)
            await self._answer(writer, 502)
            return
        try:
            if method == "CONNECT":
                self._record(method, where, 200, authorization)
                await self._answer(writer, 200)
                await self._relay(reader, writer, up_reader, up_writer)
            else:
                self._record(method, where, 0, authorization)
                up_writer.write(_head(f"{method} {path} {version}", header_lines))
                await up_writer.drain()
                await self._relay(reader, writer, up_reader, up_writer, rewrite_response=True)
        finally:
            await _close(up_writer)

    async def _answer(self, writer: asyncio.StreamWriter, status: int) -> None:
        extra = "" if status == 200 else "Content-Length: 0\r\nConnection: close\r\n"
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(f"HTTP/1.1 {status} {_REASONS[status]}\r\n{extra}\r\n".encode())
            await writer.drain()

    async def _relay(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        *,
        rewrite_response: bool = False,
    ) -> None:
        """Copy both ways until both sides are done (or idle too long)."""

        async def downstream() -> None:
            if rewrite_response:
                try:
                    head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), self._idle_timeout)
                except (TimeoutError, asyncio.LimitOverrunError, asyncio.IncompleteReadError, OSError):
                    await self._answer(client_writer, 502)
                    client_writer.close()
                    up_writer.close()
                    return
                status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
                client_writer.write(_head(status_line, lines))
            await self._copy(up_reader, client_writer)

        await asyncio.gather(self._copy(client_reader, up_writer), downstream())

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await asyncio.wait_for(reader.read(64 * 1024), self._idle_timeout):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError):
            writer.close()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 2.0)
