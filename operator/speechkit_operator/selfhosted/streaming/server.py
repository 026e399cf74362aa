"""The gRPC server of ``serve``: SpeechKit's ``StreamingRecognize`` and the standard health service.

It runs with grpc.aio on the REST server's event loop, on ``SPEECHKIT_SERVE_HOST`` and
``SPEECHKIT_SERVE_GRPC_PORT`` (8089; 0: no gRPC at all), and shares the REST API's worker pool and API
keys. Before a session starts:

* without a valid key (the metadata ``authorization: Api-Key <key>``, the REST API's rule) the call ends
  with UNAUTHENTICATED;
* while the workers start it ends with UNAVAILABLE;
* past ``SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS`` sessions at once it ends with RESOURCE_EXHAUSTED.

Then :class:`~.session.StreamingSession` runs it. ``grpc.health.v1.Health`` answers SERVING for the
server (``""``) as soon as it listens (a liveness probe), and for ``yandex.cloud.ai.stt.v2.SttService``
once the workers are ready (a readiness probe); NOT_SERVING for both while it shuts down. At shutdown
the sessions in progress get their last final result and UNAVAILABLE, within the grace period
(``SPEECHKIT_SERVE_SHUTDOWN_TIMEOUT``).

Nothing of the client's metadata is logged (the key is in it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.contracts.stt_streaming import MAX_SESSION_BYTES, SERVICE_NAME
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb
from speechkit_operator.contracts.stt_streaming import stt_service_pb2_grpc as pb_grpc
from speechkit_operator.selfhosted.auth import Authenticator
from speechkit_operator.selfhosted.protocol import ApiError
from speechkit_operator.selfhosted.streaming.recognition import PoolRecognizer
from speechkit_operator.selfhosted.streaming.session import (
    SessionError,
    SessionLimits,
    StreamingSession,
)
from speechkit_operator.selfhosted.workers import RecognitionPool

__all__ = ["MAX_MESSAGE_BYTES", "StreamingServer", "StreamingStartError", "grpc_address"]

logger = logging.getLogger(__name__)

_AUTH_REQUIRED: Final = "Authentication required: send the metadata authorization: Api-Key <key>"
#: How often the health status follows the workers' readiness.
_HEALTH_INTERVAL: Final = 0.5
#: A message may hold up to the session's whole byte budget and more: one up to 16 MiB breaks the
#: session's limit of 10 MB, which says so (INVALID_ARGUMENT); only a larger one meets gRPC's own limit
#: (RESOURCE_EXHAUSTED "Received message larger than max"), which keeps a session's memory bounded.
MAX_MESSAGE_BYTES: Final = MAX_SESSION_BYTES + 6 * 1024 * 1024
_SERVING: Final = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING: Final = health_pb2.HealthCheckResponse.NOT_SERVING


class StreamingStartError(Exception):
    """The gRPC port cannot be bound."""


def grpc_address(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def _code(code: GrpcCode) -> grpc.StatusCode:
    for status in grpc.StatusCode:
        if status.value[0] == int(code):
            return status
    return grpc.StatusCode.UNKNOWN  # pragma: no cover - every google.rpc.Code has a StatusCode


class _Servicer(pb_grpc.SttServiceServicer):
    def __init__(self, server: StreamingServer) -> None:
        self._server = server

    async def StreamingRecognize(
        self,
        request_iterator: AsyncIterator[pb.StreamingRecognitionRequest],
        context: grpc.aio.ServicerContext[pb.StreamingRecognitionRequest, pb.StreamingRecognitionResponse],
    ) -> AsyncIterator[pb.StreamingRecognitionResponse]:
        server = self._server
        refusal: ApiError | None = None
        try:
            server.admit(context.invocation_metadata())
        except ApiError as exc:
            refusal = exc
        if refusal is not None:
            await context.abort(_code(refusal.grpc_code), refusal.message)
        session = server.new_session()
        results: asyncio.Queue[pb.StreamingRecognitionResponse] = asyncio.Queue()

        async def read() -> pb.StreamingRecognitionRequest | None:
            try:
                return await anext(request_iterator)
            except StopAsyncIteration:
                return None

        running = asyncio.get_running_loop().create_task(
            session.run(read, results.put), name="streaming-session"
        )
        error: SessionError | None = None
        try:
            while True:
                getting = asyncio.ensure_future(results.get())
                await asyncio.wait({getting, running}, return_when=asyncio.FIRST_COMPLETED)
                if getting.done():
                    yield getting.result()
                    continue
                getting.cancel()
                while not results.empty():
                    yield results.get_nowait()
                break
            try:
                summary = running.result()
            except SessionError as exc:
                error = exc
            except Exception:
                logger.exception("A streaming session failed")
                error = SessionError(GrpcCode.INTERNAL, "Internal error")
            else:
                logger.info("Streaming session done: %s", summary.describe())
        finally:
            if not running.done():
                running.cancel()
                logger.info("Streaming session cancelled by the client: %s", session.summary.describe())
            server.end_session(session)
        if error is not None:
            logger.info(
                "Streaming session ended with %s: %s (%s)",
                error.code.name,
                error.message,
                session.summary.describe(),
            )
            await context.abort(_code(error.code), error.message)


class StreamingServer:
    """The gRPC server beside the REST API; :meth:`start` once, :meth:`stop` at shutdown."""

    def __init__(
        self,
        pool: RecognitionPool,
        auth: Authenticator,
        *,
        host: str,
        port: int,
        max_sessions: int,
        limits: SessionLimits | None = None,
    ) -> None:
        self._pool = pool
        self._auth = auth
        self.host = host
        self.port = port
        self.max_sessions = max_sessions
        self.limits = limits or SessionLimits()
        self._sessions: set[StreamingSession] = set()
        self._recognizer = PoolRecognizer(pool)
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="streaming-decode")
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    # --- sessions ---

    def admit(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> None:
        """:class:`ApiError` when a session may not start now (key, readiness, capacity)."""
        header = None
        for key, value in metadata or ():
            if key.lower() == "authorization":
                header = value.decode(errors="replace") if isinstance(value, bytes) else value
        self._auth.authenticate(header, required_message=_AUTH_REQUIRED)
        if self._stopping:
            raise ApiError(503, GrpcCode.UNAVAILABLE, "The service is shutting down")
        if self._pool.info is None or not self._pool.ready:
            raise ApiError(
                503, GrpcCode.UNAVAILABLE, "The recognition workers are starting; try again shortly"
            )
        if len(self._sessions) >= self.max_sessions:
            raise ApiError(
                429,
                GrpcCode.RESOURCE_EXHAUSTED,
                f"Too many streaming sessions at once (at most {self.max_sessions}, "
                "SPEECHKIT_SERVE_STREAMING_MAX_SESSIONS); try again later",
            )

    def new_session(self) -> StreamingSession:
        info = self._pool.info
        session = StreamingSession(
            self._recognizer,
            info.languages if info is not None else frozenset(),
            limits=self.limits,
            executor=self._executor,
        )
        self._sessions.add(session)
        return session

    def end_session(self, session: StreamingSession) -> None:
        self._sessions.discard(session)

    # --- lifecycle ---

    async def start(self) -> int:
        """Listen; answers the port (the one chosen when ``port`` is 0)."""
        server = grpc.aio.server(
            options=[
                # Refuse a port another process listens on, rather than sharing it with it.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ]
        )
        pb_grpc.add_SttServiceServicer_to_server(_Servicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = grpc_address(self.host, self.port)
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StreamingStartError(
                f"the gRPC port {address} cannot be bound ({exc}): choose another with "
                "SPEECHKIT_SERVE_GRPC_PORT, or 0 to turn streaming off"
            ) from None
        if not bound:
            raise StreamingStartError(
                f"the gRPC port {address} cannot be bound: choose another with SPEECHKIT_SERVE_GRPC_PORT, "
                "or 0 to turn streaming off"
            )
        await self._health.set("", _SERVING)
        await self._health.set(SERVICE_NAME, _NOT_SERVING)
        await server.start()
        self._server = server
        self.port = bound
        self._health_task = asyncio.get_running_loop().create_task(
            self._follow_readiness(), name="grpc-health"
        )
        logger.info(
            "Serving SpeechKit-compatible streaming recognition (gRPC %s/StreamingRecognize) on %s",
            SERVICE_NAME,
            grpc_address(self.host, bound),
        )
        return bound

    async def _follow_readiness(self) -> None:
        serving: bool | None = None
        while True:
            ready = self._pool.ready and not self._stopping
            if ready != serving:
                serving = ready
                await self._health.set(SERVICE_NAME, _SERVING if ready else _NOT_SERVING)
            await asyncio.sleep(_HEALTH_INTERVAL)

    async def stop(self, grace: float) -> None:
        """Stop taking sessions; the ones in progress get their last final result and UNAVAILABLE, within
        ``grace`` seconds, then are cancelled."""
        self._stopping = True
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
        await self._health.enter_graceful_shutdown()
        for session in list(self._sessions):
            session.stop()
        if self._server is not None:
            await self._server.stop(grace)
        self._executor.shutdown(wait=False, cancel_futures=True)
