"""``speechkit-operator stream FILE|-``: recognise speech as it is streamed, with partial results.

The input is read (:func:`open_input`), checked against the session limits before anything is sent,
cut into 400 ms chunks (:mod:`speechkit_operator.logic.stream_audio`), paced at real time
(:func:`pace`; ``--fast``: no pacing) and sent to ``StreamingRecognize``
(:mod:`speechkit_operator.clients.speech.streaming`); responses are written as they come
(:mod:`speechkit_operator.logic.stream_rendering`). See docs/stream.md.

Exit status: 0 the stream was recognised to its end; 1 the call failed (the gRPC status code's name
and the service's message are printed), or the stream was stopped at a session limit; 2 a usage error,
input that cannot be streamed, or bad configuration; 130 interrupted (Ctrl-C: the audio stops, the
results of what was sent are still printed).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import shutil
import signal
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final, Literal, TextIO, cast

import aiohttp

from speechkit_operator.clients.env_secrets import (
    API_KEY_VARIABLES,
    AUTHORIZED_KEY_FILE_VARIABLE,
    FOLDER_ID_VARIABLE,
    IAM_TOKEN_VARIABLE,
    EnvSecrets,
)
from speechkit_operator.clients.secrets import SecretNotFoundError, SecretUnreadableError
from speechkit_operator.clients.speech.auth import SpeechAuthenticator, load_ca_bundle
from speechkit_operator.clients.speech.errors import SpeechApiError
from speechkit_operator.clients.speech.streaming import (
    CLOUD_HOST,
    Endpoint,
    EndpointError,
    StreamingClient,
    StreamingConfig,
    StreamingError,
    resolve_endpoint,
)
from speechkit_operator.config import Settings
from speechkit_operator.contracts.stt_v2 import SUPPORTED_PCM_RATES
from speechkit_operator.envconfig import ConfigurationError, load_settings
from speechkit_operator.logic.credentials import SecretProblem, parse_speech_credentials
from speechkit_operator.logic.stream_audio import (
    LINEAR16_PCM,
    MAGIC_BYTES,
    MAX_MESSAGE_GAP_SECONDS,
    MAX_SESSION_BYTES,
    SUPPORTED_FORMATS_TEXT,
    AudioChunk,
    OggFramer,
    PcmFramer,
    SessionLimits,
    StreamAudioError,
    StreamFormat,
    WavFramer,
    converted_size,
    detect_format,
    fitting_rate,
    known_size_problem,
    ogg_duration,
    parse_wav_header,
    send_time,
)
from speechkit_operator.logic.stream_rendering import StreamRenderer, Style
from speechkit_operator.models.credentials import (
    AnonymousCredentials,
    ApiKeyCredentials,
    Credentials,
    ServiceAccountKeyCredentials,
)

logger = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

#: Bytes read from the input at a time.
READ_BYTES: Final = 64 * 1024
#: Blocks read from stdin ahead of the sending.
_PUMP_BLOCKS: Final = 16
#: The input may pause this long (a pipe that sends nothing) before the session is ended: SpeechKit
#: ends a session after 5 s without a message, so the stream stops first, with a message saying why.
INPUT_GAP_SECONDS: Final = MAX_MESSAGE_GAP_SECONDS - 1.0
#: After the audio has ended, the service has this long to answer the rest and close the stream.
FINISH_SECONDS: Final = 60.0
#: After Ctrl-C, the results of the audio sent so far are awaited this long (a second Ctrl-C: not at all).
INTERRUPT_GRACE_SECONDS: Final = 3.0

Encoding = Literal["lpcm", "oggopus"]


class UsageError(Exception):
    """The command cannot run as given; the message says why (exit status 2)."""


@dataclass(frozen=True)
class StreamOptions:
    source: str
    encoding: Encoding | None = None
    sample_rate: int | None = None
    endpoint: str | None = None
    tls: bool | None = None
    api_key_env: str | None = None
    folder_id: str | None = None
    language: str = "ru-RU"
    model: str = "general"
    profanity_filter: bool = False
    partial_results: bool = True
    fast: bool = False
    partials: bool = False
    json: bool = False
    verbose: bool = False


# --- Input ------------------------------------------------------------------------------------------


@dataclass
class AudioInput:
    """An opened input: its name for messages, the stream, the bytes already read from it, its size
    when known (a regular file), and how it is cut into chunks."""

    name: str
    stream: BinaryIO
    head: bytes
    size: int | None
    format: StreamFormat
    framer: WavFramer | OggFramer | PcmFramer
    #: Whole samples of the format, for cutting at a limit.
    align: int
    #: The rest of a file already read whole (Ogg: checked up front).
    whole: bool = False
    closes: bool = True


def _read_some(stream: BinaryIO, size: int) -> bytes:
    read1 = getattr(stream, "read1", None)
    data = read1(size) if callable(read1) else stream.read(size)
    return data if isinstance(data, bytes) else bytes(data)


def _read_head(stream: BinaryIO, want: int, head: bytes = b"") -> bytes:
    """At least ``want`` bytes from the start (fewer at the end of the input)."""
    while len(head) < want:
        data = _read_some(stream, max(want - len(head), 1))
        if not data:
            break
        head += data
    return head


def _unbuffered(stdin: BinaryIO) -> BinaryIO:
    """Standard input read straight from its file descriptor: the reading thread may be blocked in
    a read when the command ends, and a blocked BufferedReader makes the interpreter's exit abort
    (SIGABRT, "could not acquire lock for <_io.BufferedReader name='<stdin>'>"). A stream without a
    descriptor (a test's BytesIO) is read as it is."""
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):
        return stdin
    return cast(BinaryIO, io.FileIO(fd, "rb", closefd=False))


def open_input(options: StreamOptions, stdin: BinaryIO) -> AudioInput:
    """Open and check the input; UsageError or StreamAudioError (exit 2) when it cannot be streamed."""
    if options.source == "-":
        name, stream, size, closes = "stdin", _unbuffered(stdin), None, False
    else:
        path = Path(options.source)
        try:
            stream = path.open("rb")
        except FileNotFoundError:
            raise UsageError(f"{options.source}: no such file") from None
        except IsADirectoryError:
            raise UsageError(f"{options.source}: is a folder, not an audio file") from None
        except OSError as exc:
            raise UsageError(
                f"{options.source}: cannot be read ({exc.strerror or type(exc).__name__})"
            ) from None
        name, closes = options.source, True
        info = os.fstat(stream.fileno())
        size = info.st_size if stat.S_ISREG(info.st_mode) else None
    try:
        audio = _inspect(name, stream, size, options)
    except BaseException:
        if closes:
            stream.close()
        raise
    audio.closes = closes
    return audio


def _inspect(name: str, stream: BinaryIO, size: int | None, options: StreamOptions) -> AudioInput:
    head = _read_head(stream, MAGIC_BYTES)
    if not head:
        raise StreamAudioError(f"{name} is empty")
    try:
        container = detect_format(head, headerless=options.encoding == "lpcm")
    except StreamAudioError as exc:
        raise StreamAudioError(f"{name}: {exc}") from None
    if (
        container is not None
        and options.encoding is not None
        and (container, options.encoding) != ("ogg", "oggopus")
    ):
        raise UsageError(
            f"{name} is {'a WAV' if container == 'wav' else 'an Ogg'} file: its header says what it holds, "
            "so --encoding and --sample-rate are for headerless PCM only"
        )
    try:
        if container == "wav":
            return _wav(name, stream, head, size)
        if container == "ogg":
            return _ogg(name, stream, head, size)
        return _raw(name, stream, head, size, options)
    except StreamAudioError as exc:
        if str(exc).startswith(name):
            raise
        raise StreamAudioError(f"{name}: {exc}") from None


def _wav(name: str, stream: BinaryIO, head: bytes, size: int | None) -> AudioInput:
    while (header := parse_wav_header(head)) is None:
        more = _read_some(stream, READ_BYTES)
        if not more:
            header = parse_wav_header(head, complete=True)
            break
        head += more
    assert header is not None
    rate: int | None = None
    if size is not None:
        data_size = size - header.data_offset
        if header.data_size is not None:
            data_size = min(data_size, header.data_size)
        if data_size < header.frame_bytes:
            raise StreamAudioError("the WAV file holds no samples")
        rate = fitting_rate(header, data_size)
        problem = known_size_problem(header.duration(data_size), converted_size(header, data_size, rate))
        if problem:
            raise StreamAudioError(problem)
    framer = WavFramer(header, rate=rate)
    if framer.format.sample_rate != header.sample_rate or header.channels != 1:
        logger.info(
            "%s: %d channel(s) at %d Hz, sent as mono at %d Hz",
            name,
            header.channels,
            header.sample_rate,
            framer.format.sample_rate,
        )
    return AudioInput(name, stream, head, size, framer.format, framer, align=2)


def _ogg(name: str, stream: BinaryIO, head: bytes, size: int | None) -> AudioInput:
    whole = False
    if size is not None:
        if size > MAX_SESSION_BYTES:
            raise StreamAudioError(known_size_problem(0.0, size) or "too large")
        head += stream.read()
        problem = known_size_problem(ogg_duration(head), len(head))
        if problem:
            raise StreamAudioError(problem)
        whole = True
    framer = OggFramer()
    return AudioInput(name, stream, head, size, framer.format, framer, align=1, whole=whole)


def _raw(name: str, stream: BinaryIO, head: bytes, size: int | None, options: StreamOptions) -> AudioInput:
    if options.encoding is None:
        raise StreamAudioError(
            f"not a WAV or Ogg Opus file; the formats streamed are {SUPPORTED_FORMATS_TEXT}"
        )
    if options.encoding == "oggopus":
        raise StreamAudioError("not an Ogg file (it does not start with an Ogg page)")
    rate = options.sample_rate
    assert rate is not None  # checked with the options
    if size is not None:
        problem = known_size_problem(size / (2 * rate), size)
        if problem:
            raise StreamAudioError(problem)
    return AudioInput(name, stream, head, size, StreamFormat(LINEAR16_PCM, rate), PcmFramer(rate), align=2)


def check_options(options: StreamOptions) -> StreamOptions:
    """The options with what one implies filled in; UsageError when they contradict each other."""
    encoding = options.encoding
    if options.sample_rate is not None:
        if encoding == "oggopus":
            raise UsageError("--sample-rate is for --encoding lpcm: Ogg Opus carries its own")
        encoding = "lpcm"
        if options.sample_rate not in SUPPORTED_PCM_RATES:
            rates = ", ".join(str(rate) for rate in SUPPORTED_PCM_RATES)
            raise UsageError(
                f"--sample-rate {options.sample_rate}: SpeechKit takes headerless PCM at {rates} Hz "
                "(a WAV file at another rate is resampled)"
            )
    elif encoding == "lpcm":
        raise UsageError(
            "--encoding lpcm needs --sample-rate 8000, 16000 or 48000: headerless PCM says neither"
        )
    if options.api_key_env is not None and not options.api_key_env.strip():
        raise UsageError("--api-key-env needs the name of an environment variable")
    return dataclasses.replace(options, encoding=encoding)


# --- Credentials --------------------------------------------------------------------------------------


def speech_credentials(options: StreamOptions, environ: Mapping[str, str], settings: Settings) -> Credentials:
    """``--api-key-env NAME``'s key, else the variables ``transcribe`` reads (API_SECRET,
    SPEECHKIT_API_KEY, SPEECHKIT_IAM_TOKEN, SPEECHKIT_AUTHORIZED_KEY_FILE; SPEECHKIT_FOLDER_ID), else none.
    ``--folder-id`` wins over SPEECHKIT_FOLDER_ID."""
    folder = options.folder_id or environ.get(FOLDER_ID_VARIABLE, "").strip() or None
    if options.api_key_env is not None:
        key = environ.get(options.api_key_env, "").strip()
        if not key:
            raise UsageError(f"--api-key-env {options.api_key_env}: that variable is not set or is empty")
        return ApiKeyCredentials(api_key=key, folder_id=folder)
    secrets = EnvSecrets(settings, environ)
    try:
        data = secrets.speech_data()
    except SecretNotFoundError:
        return AnonymousCredentials(folder_id=folder)
    except SecretUnreadableError as exc:
        raise UsageError(str(exc)) from None
    try:
        credentials = parse_speech_credentials("(from the environment)", data)
    except SecretProblem as exc:
        raise UsageError(f"{', '.join(secrets.speech_sources())}: {exc.message}") from None
    return _with_folder(credentials, folder)


def _with_folder(credentials: Credentials, folder: str | None) -> Credentials:
    if folder is None or credentials.folder_id == folder:
        return credentials
    return dataclasses.replace(credentials, folder_id=folder)


def credential_names(options: StreamOptions) -> str:
    if options.api_key_env:
        return options.api_key_env
    keys = " or ".join(API_KEY_VARIABLES)
    return f"{keys} (an API key), {IAM_TOKEN_VARIABLE} or {AUTHORIZED_KEY_FILE_VARIABLE}"


# --- Pacing -----------------------------------------------------------------------------------------


async def pace(
    chunks: AsyncIterator[AudioChunk],
    *,
    realtime: bool,
    clock: Callable[[], float],
    wait: Callable[[float], Awaitable[bool]],
) -> AsyncIterator[AudioChunk]:
    """``chunks``, each when it is due (:func:`send_time`): the first at once, then 400 ms of audio
    every 400 ms (input that comes later than that goes as soon as it comes). ``wait(seconds)`` sleeps
    and answers True when the stream is to stop (Ctrl-C): then nothing more is yielded."""
    started: float | None = None
    async for chunk in chunks:
        now = clock()
        if started is None:
            started = now - chunk.start
        delay = send_time(started, chunk, realtime=realtime) - now
        if delay > 0 and await wait(delay):
            return
        yield chunk


# --- The session ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What happened to the audio: sent chunks and bytes, and why it stopped early (None: it did not)."""

    chunks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    stopped: str | None = None
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)


class _StdinPump:
    """Reads a pipe or terminal in a daemon thread (a read that blocks must not block the event loop,
    nor the exit), handing blocks to the loop, at most :data:`_PUMP_BLOCKS` ahead of the reader of
    :attr:`queue` (who calls :meth:`taken` for each); ``b""`` is the end."""

    def __init__(self, stream: BinaryIO, loop: asyncio.AbstractEventLoop) -> None:
        self.queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        self._stream = stream
        self._loop = loop
        self._slots = threading.Semaphore(_PUMP_BLOCKS)
        threading.Thread(target=self._run, name="stream-stdin", daemon=True).start()

    def taken(self) -> None:
        self._slots.release()

    def _run(self) -> None:
        while True:
            self._slots.acquire()
            try:
                item: bytes | BaseException = _read_some(self._stream, READ_BYTES)
            except (OSError, ValueError) as exc:
                item = exc
            try:
                self._loop.call_soon_threadsafe(self.queue.put_nowait, item)
            except RuntimeError:
                return  # the loop is gone
            if not isinstance(item, bytes) or not item:
                return


class Session:
    """One run of the command against one service: see the module's text."""

    def __init__(
        self,
        options: StreamOptions,
        audio: AudioInput,
        endpoint: Endpoint,
        config: StreamingConfig,
        *,
        authorize: Callable[[], Awaitable[str | None]],
        root_certificates: bytes | None,
        stdout: TextIO,
        renderer: StreamRenderer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.audio = audio
        self.endpoint = endpoint
        self.config = config
        self.authorize = authorize
        self.root_certificates = root_certificates
        self.stdout = stdout
        self.renderer = renderer
        self.clock = clock
        self.outcome = Outcome()
        self.limits = SessionLimits(align=audio.align)
        self._stop = asyncio.Event()
        self._deadline: asyncio.Timeout | None = None
        self._last_sent = clock()  # when the last message went (the config: when the call started)

    # -- stopping ----------------------------------------------------------------------------------

    def interrupt(self) -> bool:
        """Ctrl-C: stop the audio, and give the service a moment for the results of what was sent.
        False when already interrupted (a second Ctrl-C: the caller cancels at once)."""
        if self.outcome.interrupted:
            return False
        self.outcome.interrupted = True
        self._stop.set()
        self._finish_within(INTERRUPT_GRACE_SECONDS)
        return True

    def _finish_within(self, seconds: float) -> None:
        if self._deadline is not None and not self._deadline.expired():
            loop = asyncio.get_running_loop()
            current = self._deadline.when()
            when = loop.time() + seconds
            self._deadline.reschedule(when if current is None else min(current, when))

    async def _wait(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    # -- audio -------------------------------------------------------------------------------------

    async def _blocks(self) -> AsyncIterator[bytes]:
        """The input's bytes, from the start."""
        audio = self.audio
        yield audio.head
        if audio.whole:
            return
        if audio.size is not None:  # a regular file: reading it does not block
            while True:
                try:
                    block = audio.stream.read(READ_BYTES)
                except OSError as exc:
                    raise StreamAudioError(f"{audio.name} cannot be read ({exc.strerror or exc})") from None
                if not block:
                    return
                yield block
                await asyncio.sleep(0)
        pump = _StdinPump(audio.stream, asyncio.get_running_loop())
        while True:
            getter = asyncio.ensure_future(pump.queue.get())
            stopper = asyncio.ensure_future(self._stop.wait())
            # Measured from the last message: input that trickles in too slowly to fill a chunk in time
            # counts as a pause too.
            timeout = max(0.0, self._last_sent + INPUT_GAP_SECONDS - self.clock())
            done, _ = await asyncio.wait(
                {getter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for future in (getter, stopper):
                if future not in done:
                    future.cancel()
            if getter not in done:
                if not self._stop.is_set():
                    self.outcome.stopped = (
                        f"{audio.name} sent nothing for {INPUT_GAP_SECONDS:g} s: the session was ended "
                        f"(SpeechKit ends a session after {MAX_MESSAGE_GAP_SECONDS:g} s without a message)"
                    )
                return
            item = getter.result()
            pump.taken()
            if isinstance(item, BaseException):
                detail = getattr(item, "strerror", None) or type(item).__name__
                raise StreamAudioError(f"{audio.name} cannot be read ({detail})")
            if not item:
                return
            yield item

    async def _chunks(self) -> AsyncIterator[AudioChunk]:
        framer = self.audio.framer
        async for block in self._blocks():
            for chunk in framer.feed(block):
                yield chunk
            if isinstance(framer, WavFramer) and framer.complete:
                break  # the rest of the input is not audio
        for chunk in framer.finish():
            yield chunk

    async def _limited(self) -> AsyncIterator[AudioChunk]:
        async for chunk in self._chunks():
            admitted = self.limits.admit(chunk)
            if admitted is not None:
                yield admitted
            if self.limits.stopped is not None:
                self.outcome.stopped = self.limits.stopped
                return

    async def _send(self) -> AsyncIterator[bytes]:
        """The audio messages' payloads; when they end, the service's answers are awaited (at most
        :data:`FINISH_SECONDS`)."""
        self._last_sent = self.clock()
        try:
            paced = pace(self._limited(), realtime=not self.options.fast, clock=self.clock, wait=self._wait)
            async for chunk in paced:
                if self._stop.is_set():
                    break
                self.outcome.chunks += 1
                self.outcome.bytes += len(chunk.data)
                self.outcome.seconds = chunk.end
                yield chunk.data
                self._last_sent = self.clock()
        except StreamAudioError as exc:
            self.outcome.errors.append(str(exc))
        finally:
            outcome = self.outcome
            logger.debug(
                "audio ended: %d chunks, %d bytes, %.1f s", outcome.chunks, outcome.bytes, outcome.seconds
            )
            if not self.outcome.interrupted:
                self._finish_within(FINISH_SECONDS)

    # -- the call ----------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        if text:
            self.stdout.write(text)
            self.stdout.flush()

    async def run(self) -> int:
        """The session; returns the exit status. Messages for stderr are in :attr:`outcome`'s errors."""
        try:
            authorization = await self.authorize()
        except (SpeechApiError, ValueError) as exc:  # ValueError: SPEECHKIT_OPERATOR_CA_BUNDLE
            self.outcome.errors.append(f"credentials: {exc}")
            return EXIT_FAILED
        client = StreamingClient(
            self.endpoint, authorization=authorization, root_certificates=self.root_certificates
        )
        try:
            async with client, asyncio.timeout(None) as deadline:
                self._deadline = deadline
                async for response in client.recognize(self.config, self._send()):
                    self._write(self.renderer.render(response))
        except StreamingError as exc:
            self.outcome.errors.append(f"{exc.code}: {exc.details}" if exc.details else exc.code)
            return EXIT_FAILED
        except TimeoutError:
            if not self.outcome.interrupted:
                self.outcome.errors.append(
                    f"the service sent no end of the stream within {FINISH_SECONDS:g} s after the audio ended"
                )
                return EXIT_FAILED
        finally:
            self._deadline = None
            self._write(self.renderer.close())
        if self.outcome.interrupted:
            return EXIT_INTERRUPTED
        if not self.outcome.bytes and not self.outcome.errors and not self.outcome.stopped:
            # A WAV piped without its samples (cut after its header): nothing was recognised, and an exit
            # status 0 would tell a script that it was.
            self.outcome.errors.append(f"{self.audio.name} holds no audio samples: nothing was recognised")
        if self.outcome.errors or self.outcome.stopped:
            return EXIT_FAILED
        return EXIT_OK


# --- The command ------------------------------------------------------------------------------------


def _style(options: StreamOptions, stdout: TextIO) -> Style:
    if options.json:
        return "json"
    isatty = getattr(stdout, "isatty", None)
    return "terminal" if callable(isatty) and isatty() else "plain"


def _authorizer(credentials: Credentials, settings: Settings) -> Callable[[], Awaitable[str | None]]:
    async def authorize() -> str | None:
        """The ``authorization`` metadata: a service account's key is exchanged for an IAM token first."""
        if not isinstance(credentials, ServiceAccountKeyCredentials):
            return await SpeechAuthenticator(str(settings.iam_token_url), _no_session).authorization(
                credentials
            )
        async with aiohttp.ClientSession() as session:
            authenticator = SpeechAuthenticator(
                str(settings.iam_token_url),
                session,
                timeout=settings.http_timeout,
                ssl_context=load_ca_bundle(settings.ca_bundle),
            )
            return await authenticator.authorization(credentials)

    return authorize


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("only a service account's key is exchanged")


def stream(
    options: StreamOptions,
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the command; returns its exit status (see the module's text)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    environ = dict(os.environ if environ is None else environ)

    def fail(message: str, status: int) -> int:
        print(f"speechkit-operator stream: {message}", file=stderr)
        return status

    try:
        options = check_options(options)
        endpoint = resolve_endpoint(options.endpoint, tls=options.tls)
        settings = load_settings(Settings, environ=environ)
        credentials = speech_credentials(options, environ, settings)
        root_certificates = settings.ca_bundle.read_bytes() if settings.ca_bundle and endpoint.tls else None
    except (UsageError, EndpointError) as exc:
        return fail(str(exc), EXIT_USAGE)
    except ConfigurationError as exc:
        return fail("invalid configuration: " + "; ".join(exc.problems), EXIT_USAGE)
    except OSError as exc:
        return fail(f"the CA bundle cannot be read ({exc.strerror or type(exc).__name__})", EXIT_USAGE)
    if isinstance(credentials, AnonymousCredentials):
        if endpoint.host.lower().rstrip(".") == CLOUD_HOST:
            return fail(f"SpeechKit needs credentials: set {credential_names(options)}", EXIT_USAGE)
    elif not endpoint.tls and not endpoint.loopback:
        print(
            f"speechkit-operator stream: warning: credentials go to {endpoint.target} without TLS "
            "(use --tls unless the network is trusted)",
            file=stderr,
        )
    try:
        audio = open_input(options, stdin or sys.stdin.buffer)
    except (UsageError, StreamAudioError) as exc:
        return fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    config = StreamingConfig(
        audio_encoding=audio.format.encoding,
        sample_rate_hertz=audio.format.sample_rate,
        language_code=options.language,
        model=options.model,
        profanity_filter=options.profanity_filter,
        partial_results=options.partial_results,
        folder_id=credentials.folder_id,
    )
    style = _style(options, stdout)
    renderer = StreamRenderer(
        style,
        partials=options.partials or style == "terminal",
        width=shutil.get_terminal_size().columns,
    )
    logger.info("streaming %s (%s) to %s", audio.name, audio.format.describe(), endpoint.target)
    session = Session(
        options,
        audio,
        endpoint,
        config,
        authorize=_authorizer(credentials, settings),
        root_certificates=root_certificates,
        stdout=stdout,
        renderer=renderer,
    )
    try:
        status = asyncio.run(_main(session))
    except KeyboardInterrupt:  # before the handler was installed, or where there is none
        with contextlib.suppress(Exception):
            stdout.write(renderer.close())
        status = EXIT_INTERRUPTED
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        return EXIT_FAILED
    finally:
        if audio.closes:
            audio.stream.close()
    for message in session.outcome.errors:
        print(f"speechkit-operator stream: {message}", file=stderr)
    if session.outcome.stopped:
        print(f"speechkit-operator stream: {session.outcome.stopped}", file=stderr)
    if status == EXIT_INTERRUPTED:
        print("speechkit-operator stream: interrupted", file=stderr)
    return status


async def _main(session: Session) -> int:
    """The session in a task of its own, with Ctrl-C wired to it (in the main thread only)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(session.run())

    def on_interrupt() -> None:
        if not session.interrupt():
            task.cancel()

    handled = False
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, on_interrupt)
            handled = True
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled():  # a second Ctrl-C
            return EXIT_INTERRUPTED
        raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
