"""A streaming recognition session: SpeechKit's v2 gRPC ``SttService/StreamingRecognize``.

:class:`StreamingClient` opens one gRPC channel (plaintext, or TLS with the system's or a given set of
CA certificates) to SpeechKit (``stt.api.cloud.yandex.net:443``) or to the self-hosted service
(``speechkit-operator serve``, plaintext on :data:`DEFAULT_PORT`), and :meth:`StreamingClient.recognize`
runs one session: the config message first, then each piece of audio the caller's iterable yields as
one ``audio_content`` message; when the iterable ends, the client half-closes the stream and the
service answers the rest. Responses come back as
:class:`~speechkit_operator.models.stream_results.StreamResponse` s.

The ``authorization`` metadata (``Api-Key <key>`` or ``Bearer <IAM token>``, as the REST API takes) is
sent with the call and never logged nor put in a message: a failed call is a :class:`StreamingError`
with the gRPC status code's name and the service's message, scrubbed of the credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal

import grpc

from speechkit_operator.clients.speech.errors import scrub
from speechkit_operator.contracts.stt_streaming import DEFAULT_GRPC_PORT, SPEECHKIT_ENDPOINT
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb
from speechkit_operator.contracts.stt_streaming import stt_service_pb2_grpc as pb_grpc
from speechkit_operator.models.stream_results import (
    StreamAlternative,
    StreamChunk,
    StreamResponse,
    StreamWord,
)

logger = logging.getLogger(__name__)

#: SpeechKit's streaming endpoint (TLS).
CLOUD_ENDPOINT: Final = SPEECHKIT_ENDPOINT
CLOUD_HOST: Final = SPEECHKIT_ENDPOINT.rpartition(":")[0]
#: The self-hosted service's gRPC port (``SPEECHKIT_SERVE_GRPC_PORT``), plaintext.
DEFAULT_PORT: Final = DEFAULT_GRPC_PORT
DEFAULT_ENDPOINT: Final = f"localhost:{DEFAULT_PORT}"
TLS_PORT: Final = 443

AudioEncoding = Literal["LINEAR16_PCM", "OGG_OPUS"]
_ENCODINGS: Final = {
    "LINEAR16_PCM": pb.RecognitionSpec.LINEAR16_PCM,
    "OGG_OPUS": pb.RecognitionSpec.OGG_OPUS,
}


class EndpointError(ValueError):
    """``--endpoint`` is not ``host[:port]``."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls: bool

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def loopback(self) -> bool:
        return self.host in ("localhost", "::1") or self.host.startswith("127.")


def resolve_endpoint(text: str | None, *, tls: bool | None = None) -> Endpoint:
    """``host[:port]`` (IPv6 in brackets) and whether to use TLS.

    Without ``tls`` (neither ``--tls`` nor ``--insecure``), TLS is used for port 443 and for SpeechKit's
    host, plaintext otherwise. Without a port: 443 with TLS, :data:`DEFAULT_PORT` without.
    """
    text = (text or DEFAULT_ENDPOINT).strip()
    if "://" in text:
        raise EndpointError(f"--endpoint {text}: give host:port, without a scheme (e.g. {CLOUD_ENDPOINT})")
    port: int | None = None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise EndpointError(f"--endpoint {text}: not host:port")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise EndpointError(f"--endpoint {text}: put an IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}")
    else:
        host, port_text = text, None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise EndpointError(f"--endpoint {text}: {port_text!r} is not a port")
        port = int(port_text)
    if not host or any(char.isspace() or char in "/@?#" for char in host):
        raise EndpointError(f"--endpoint {text}: not host:port")
    if tls is None:
        tls = port == TLS_PORT or host.lower().rstrip(".") == CLOUD_HOST
    if port is None:
        port = TLS_PORT if tls else DEFAULT_PORT
    return Endpoint(host=host, port=port, tls=tls)


@dataclass(frozen=True)
class StreamingConfig:
    """``config.specification`` (and ``folder_id``) of a session."""

    audio_encoding: AudioEncoding
    sample_rate_hertz: int | None = None  # LINEAR16_PCM only
    language_code: str = "ru-RU"
    model: str = "general"
    profanity_filter: bool = False
    partial_results: bool = True
    folder_id: str | None = None

    def describe(self) -> str:
        """The settings, for a debug line (no secrets here)."""
        rate = f" {self.sample_rate_hertz} Hz" if self.sample_rate_hertz else ""
        return (
            f"{self.audio_encoding}{rate}, {self.language_code}, model {self.model}, "
            f"profanity filter {'on' if self.profanity_filter else 'off'}, "
            f"partial results {'on' if self.partial_results else 'off'}"
            + (f", folder {self.folder_id}" if self.folder_id else "")
        )


def config_request(config: StreamingConfig) -> pb.StreamingRecognitionRequest:
    """The first message of a session."""
    specification = pb.RecognitionSpec(
        audio_encoding=_ENCODINGS[config.audio_encoding],
        language_code=config.language_code,
        model=config.model,
        profanity_filter=config.profanity_filter,
        partial_results=config.partial_results,
    )
    if config.sample_rate_hertz is not None:
        specification.sample_rate_hertz = config.sample_rate_hertz
    return pb.StreamingRecognitionRequest(
        config=pb.RecognitionConfig(specification=specification, folder_id=config.folder_id or "")
    )


def _seconds(message: pb.WordInfo, field: Literal["start_time", "end_time"]) -> float | None:
    if not message.HasField(field):
        return None
    duration = message.start_time if field == "start_time" else message.end_time
    return duration.seconds + duration.nanos / 1e9


def response_from_message(message: pb.StreamingRecognitionResponse) -> StreamResponse:
    """The typed form of a response."""
    return StreamResponse(
        chunks=tuple(
            StreamChunk(
                alternatives=tuple(
                    StreamAlternative(
                        text=alternative.text,
                        confidence=alternative.confidence,
                        words=tuple(
                            StreamWord(
                                word=word.word,
                                start=_seconds(word, "start_time"),
                                end=_seconds(word, "end_time"),
                                confidence=word.confidence,
                            )
                            for word in alternative.words
                        ),
                    )
                    for alternative in chunk.alternatives
                ),
                final=chunk.final,
                end_of_utterance=chunk.end_of_utterance,
            )
            for chunk in message.chunks
        )
    )


class StreamingError(Exception):
    """The call failed: ``code`` is the gRPC status code's name (``UNAUTHENTICATED``), ``details`` the
    service's message (scrubbed of credentials)."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}" if details else code)
        self.code = code
        self.details = details


class StreamingClient:
    """A channel to a ``SttService`` (see the module's text); use it as an async context manager.

    The call runs on grpcio's synchronous API, bridged to asyncio by a thread that reads the responses:
    when the service ends a call while audio is still being written (a refused key, a bad config, a
    limit), grpc.aio may report ``INTERNAL: Internal error from Core`` instead of the service's status
    (grpc/grpc#36066), while the synchronous API reports the service's own.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        authorization: str | None = None,
        root_certificates: bytes | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        if authorization is not None and any(char in authorization for char in "\r\n\0"):
            raise ValueError("the authorization value contains line breaks")
        self.endpoint = endpoint
        self._authorization = authorization
        self._root_certificates = root_certificates
        self._secrets = tuple(secrets) + ((authorization.partition(" ")[2],) if authorization else ())
        self._channel: grpc.Channel | None = None

    async def __aenter__(self) -> StreamingClient:
        target = self.endpoint.target
        if self.endpoint.tls:
            credentials = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        logger.debug("gRPC channel to %s (%s)", target, "TLS" if self.endpoint.tls else "plaintext")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", self._authorization),) if self._authorization else ()

    def _error(self, error: grpc.RpcError) -> StreamingError:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else None
        return StreamingError(
            code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN", scrub(details or "", self._secrets)
        )

    async def recognize(
        self, config: StreamingConfig, audio: AsyncIterable[bytes]
    ) -> AsyncIterator[StreamResponse]:
        """One session: the responses, until the service ends the stream (after ``audio`` has ended,
        or at an error: :class:`StreamingError`). Closing the iterator early cancels the call.

        ``audio`` is read by a task of this loop; each piece is sent as soon as it comes."""
        if self._channel is None:
            raise RuntimeError("StreamingClient is used outside `async with`")
        loop = asyncio.get_running_loop()
        outgoing: queue.SimpleQueue[pb.StreamingRecognitionRequest | None] = queue.SimpleQueue()
        incoming: asyncio.Queue[pb.StreamingRecognitionResponse | grpc.RpcError | None] = asyncio.Queue()
        stub = pb_grpc.SttServiceStub(self._channel)
        logger.debug("session config: %s", config.describe())
        outgoing.put(config_request(config))
        call = stub.StreamingRecognize(_requests(outgoing), metadata=self._metadata())

        def deliver(item: pb.StreamingRecognitionResponse | grpc.RpcError | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(incoming.put_nowait, item)

        def read() -> None:
            try:
                for message in call:
                    deliver(message)
            except grpc.RpcError as error:
                deliver(error)
            else:
                deliver(None)

        async def write() -> None:
            try:
                async for data in audio:
                    if data:
                        outgoing.put(pb.StreamingRecognitionRequest(audio_content=data))
            finally:
                outgoing.put(None)  # half-close (and let grpc's sending thread end)

        threading.Thread(target=read, name="stt-responses", daemon=True).start()
        writer = asyncio.ensure_future(write())
        try:
            while (item := await incoming.get()) is not None:
                if isinstance(item, grpc.RpcError):
                    raise self._error(item) from None
                yield response_from_message(item)
            if writer.done() and not writer.cancelled():
                writer.result()  # the audio's own error, if it failed
        finally:
            call.cancel()  # nothing when the call has ended
            outgoing.put(None)
            if not writer.done():  # the service ended the stream before the audio ended
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
            if not writer.cancelled():
                writer.exception()  # retrieved, so that a failure is not reported as lost


def _requests(
    outgoing: queue.SimpleQueue[pb.StreamingRecognitionRequest | None],
) -> Iterator[pb.StreamingRecognitionRequest]:
    """The messages to send, as grpc's sending thread takes them; None ends them."""
    while (request := outgoing.get()) is not None:
        yield request
