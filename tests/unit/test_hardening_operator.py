"""Regression tests of the operator hardening issue, one group per defect, each reproduced on main:

1. a crafted or corrupt Ogg (a last-page granule of 2^62 overflowed the first check's time; 2^38 in a
   237 KB file put the first check 11 days out), and a tail crowded with fake pages that blocked the
   event loop for seconds;
2. SSRF: a storage Secret's ``endpoint`` let any namespace user make the operator probe ports, and
   the answers told open ports from closed ones;
3. memory: a boto3 Session per storage configuration (about 12 MiB each), kept for ever;
4. keys and prefixes with ``.``/``..`` segments, which HTTP clients resolve into other objects.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from speechkit_operator.clients import storage as storage_module
from speechkit_operator.clients.kube import JobStore
from speechkit_operator.clients.secrets import SecretReader
from speechkit_operator.clients.speech.base import SpeechClient
from speechkit_operator.clients.storage import (
    MAX_CLIENTS,
    ObjectHead,
    ObjectStorage,
    StorageError,
    StorageFactory,
    _classify,
)
from speechkit_operator.config import Settings
from speechkit_operator.logic.audio_probe import (
    HEAD_BYTES,
    TAIL_BYTES,
    AudioProbeError,
    DeclaredAudio,
    _last_granule,
    ogg_crc,
    probe_audio,
)
from speechkit_operator.logic.credentials import (
    STORAGE_ENDPOINTS_VARIABLE,
    SecretProblem,
    parse_storage_secret,
)
from speechkit_operator.logic.polling import (
    MAX_WAIT_SECONDS,
    PollPolicy,
    first_check_at,
    next_check_at,
)
from speechkit_operator.models.credentials import Credentials
from speechkit_operator.models.job import (
    JobRef,
    JobStatus,
    OutputSpec,
    Reason,
    SourceSpec,
    TranscriptionJobSpec,
)
from speechkit_operator.models.operation import OperationState, RecognitionRequest
from speechkit_operator.models.storage import StorageConfig
from speechkit_operator.workflow import MAX_AUDIO_SECONDS, Job, JobWorkflow
from tests.support.audio import audio_dir
from tests.support.free_port import free_port
from tests.support.moto_server import moto_s3_server

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
YANDEX = "https://storage.yandexcloud.net"
KEYS = {"access-key-id": b"YCAJEaccess", "secret-access-key": b"YCsecretAccessKeyValue"}


# --------------------------------------------------------------------------------------------------
# A workflow with fakes around it: Secrets, storage serving given bytes, a recording job store.
# --------------------------------------------------------------------------------------------------


class FakeStorage:
    def __init__(self, config: StorageConfig, data: bytes) -> None:
        self.config = config
        self.data = data

    async def head(self, bucket: str, key: str) -> ObjectHead:
        return ObjectHead(size=len(self.data), content_type="audio/ogg")

    async def read_range(self, bucket: str, key: str, byte_range: str) -> bytes:
        spec = byte_range.removeprefix("bytes=")
        if spec.startswith("-"):
            return self.data[-int(spec[1:]) :]
        first, last = (int(part) for part in spec.split("-"))
        return self.data[first : last + 1]

    def object_url(self, bucket: str, key: str, *, presign: bool, expires_in: int) -> str:
        return f"{self.config.endpoint}/{bucket}/{key}"

    async def put(self, bucket: str, key: str, body: bytes, content_type: str) -> None:
        self.written[(bucket, key)] = body

    #: What every storage wrote, by (bucket, key).
    written: dict[tuple[str, str], bytes] = {}  # noqa: RUF012 - shared on purpose


@dataclass
class FakeStorages:
    data: bytes = b""
    asked: list[StorageConfig] = field(default_factory=list)

    def get(self, config: StorageConfig) -> FakeStorage:
        self.asked.append(config)
        return FakeStorage(config, self.data)


@dataclass
class FakeSecrets:
    data: dict[str, Mapping[str, bytes]]

    async def read(self, namespace: str, name: str) -> Mapping[str, bytes]:
        return self.data[name]

    def forget(self, namespace: str, name: str) -> None:
        pass


@dataclass
class FakeJobs:
    statuses: list[Mapping[str, Any]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    async def patch_status(
        self, job: JobRef, status: Mapping[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        self.statuses.append(dict(status))
        return {"metadata": {"resourceVersion": str(len(self.statuses))}, "status": dict(status)}

    async def post_event(self, job: JobRef, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


@dataclass
class FakeSpeech:
    submitted: list[RecognitionRequest] = field(default_factory=list)

    async def submit(self, request: RecognitionRequest, credentials: Credentials) -> OperationState:
        self.submitted.append(request)
        return OperationState(id="e03op", done=False)


@dataclass
class Harness:
    workflow: JobWorkflow
    storages: FakeStorages
    jobs: FakeJobs
    speech: FakeSpeech

    async def submit(self, spec: Mapping[str, Any]) -> Mapping[str, Any]:
        job = Job(ref=JobRef("calls", "job", uid="uid-1", generation=1), spec=spec, status=JobStatus())
        await self.workflow.submit(job)
        return self.jobs.statuses[-1]


def harness(data: bytes = b"", storage_secret: Mapping[str, bytes] = KEYS, **settings: Any) -> Harness:
    storages, jobs, speech = FakeStorages(data), FakeJobs(), FakeSpeech()
    secrets = FakeSecrets({"speechkit-credentials": {"api-key": b"key"}, "speechkit-storage": storage_secret})
    workflow = JobWorkflow(
        Settings(**settings),
        speech=cast(SpeechClient, speech),
        storage=cast(StorageFactory, storages),
        secrets=cast(SecretReader, secrets),
        jobs=cast(JobStore, jobs),
        clock=lambda: T0,
    )
    return Harness(workflow, storages, jobs, speech)


SPEC = {"source": {"bucket": "calls", "key": "incoming/talk.ogg"}}


# --------------------------------------------------------------------------------------------------
# 1. A crafted or corrupt Ogg
# --------------------------------------------------------------------------------------------------


def crafted_ogg(granule: int) -> bytes:
    """librivox-all.ogg (27.93 s, 237,083 bytes) with its last page's granule position replaced and
    the page's checksum made right again, as a crafted file would have it."""
    data = bytearray((audio_dir() / "librivox-all.ogg").read_bytes())
    last = data.rfind(b"OggS")
    data[last + 6 : last + 14] = granule.to_bytes(8, "little")
    data[last + 22 : last + 26] = bytes(4)
    data[last + 22 : last + 26] = ogg_crc(bytes(data[last:])).to_bytes(4, "little")
    return bytes(data)


def probe(data: bytes) -> Any:
    return probe_audio(data[:HEAD_BYTES], len(data), DeclaredAudio(), data[-TAIL_BYTES:])


def test_crafted_ogg_the_untouched_file_probes_as_recorded() -> None:
    data = (audio_dir() / "librivox-all.ogg").read_bytes()
    last = data.rfind(b"OggS")
    assert crafted_ogg(int.from_bytes(data[last + 6 : last + 14], "little")) == data
    assert probe(data).duration_seconds == pytest.approx(27.93, abs=0.05)


@pytest.mark.parametrize("granule", [2**62, 2**38, 2**63 - 1], ids=["2^62", "2^38", "2^63-1"])
def test_crafted_ogg_granule_beyond_what_the_bytes_hold_is_corrupt_audio(granule: int) -> None:
    with pytest.raises(AudioProbeError) as caught:
        probe(crafted_ogg(granule))

    assert caught.value.reason == Reason.CORRUPT_AUDIO
    assert f"granule position {granule}" in caught.value.message
    assert "237083 bytes can hold at most 28450 s" in caught.value.message
    assert "corrupt or crafted" in caught.value.message


@pytest.mark.parametrize(
    ("granule", "reason"),
    [(2**62, "CorruptAudio"), (2**38, "CorruptAudio"), (5 * 3600 * 48000, "AudioTooLong")],
    ids=["2^62", "2^38", "5-hours"],
)
async def test_crafted_ogg_fails_the_job_before_anything_is_submitted(granule: int, reason: str) -> None:
    """2^62 raised 'date value out of range' on main, and 2^38 scheduled the first check 11 days out.
    A plausible but long duration (5 h fit in 237 KB at the least Opus bitrate) is AudioTooLong."""
    run = harness(crafted_ogg(granule))

    status = await run.submit(SPEC)

    assert (status["phase"], status["reason"]) == ("Failed", reason)
    assert run.speech.submitted == []
    assert "s3://calls/incoming/talk.ogg" in status["message"]
    if reason == "AudioTooLong":
        assert f"more than the {MAX_AUDIO_SECONDS / 3600:.0f} hours" in status["message"]


async def test_crafted_ogg_the_real_file_is_still_submitted() -> None:
    run = harness((audio_dir() / "librivox-all.ogg").read_bytes())

    status = await run.submit(SPEC)

    assert status["phase"] == "Running", status
    assert status["audio"]["durationSeconds"] == pytest.approx(27.93, abs=0.05)
    assert len(run.speech.submitted) == 1


def test_crafted_ogg_tail_crowded_with_fake_pages_is_probed_in_milliseconds() -> None:
    """Every "OggS" in the tail was checked with a CRC computed in Python: 8 s of a blocked event
    loop for one 64 KiB tail of overlapping fake pages. zlib computes it now."""
    tail = (b"OggS\x00" * 13_108)[:TAIL_BYTES]
    started = time.perf_counter()
    assert _last_granule(tail, 0) is None
    assert time.perf_counter() - started < 1.0


def test_craftedogg_crc_is_the_ogg_checksum() -> None:
    # A real page verifies, and the checksum of known data is the reference implementation's.
    data = (audio_dir() / "librivox-0870.ogg").read_bytes()
    page = data[: data.index(b"OggS", 4)]
    assert ogg_crc(page[:22], bytes(4), page[26:]) == int.from_bytes(page[22:26], "little")
    assert ogg_crc(b"123456789") == 0x89A1897F  # CRC-32/MPEG-2 parameters, initial value 0


HUGE_POLICY = PollPolicy(
    seconds_per_audio_minute=1e300,
    first_check_min_seconds=1e300,
    initial_interval_seconds=1e300,
    backoff_factor=1e300,
    max_interval_seconds=math.inf,
)


def _latest(at: datetime, seconds: float) -> datetime:
    try:
        return at + timedelta(seconds=seconds)
    except OverflowError:
        return datetime.max.replace(tzinfo=at.tzinfo)


@pytest.mark.parametrize("policy", [PollPolicy(), HUGE_POLICY], ids=["default-policy", "huge-policy"])
@pytest.mark.parametrize(
    "at", [T0, datetime.max.replace(tzinfo=UTC) - timedelta(seconds=1)], ids=["now", "end-of-time"]
)
def test_crafted_ogg_polling_never_overflows(policy: PollPolicy, at: datetime) -> None:
    """2^62 / 48000 s of audio raised OverflowError ('date value out of range') on main."""
    latest = _latest(at, MAX_WAIT_SECONDS)
    for duration in (2**62 / 48000, 2**38 / 48000, 1e308, math.inf, math.nan, -math.inf, None):
        for channels in (1, 8, 10**400, -5):
            assert at <= first_check_at(at, duration, channels, policy) <= latest, (duration, channels)
    for checks in (0, 1, 10**6, 10**400):
        for retry_after in (None, math.inf, math.nan, -1.0, 1e300):
            assert at <= next_check_at(at, checks, policy, retry_after) <= latest, (checks, retry_after)


def test_crafted_ogg_first_check_is_within_a_day_whatever_the_duration() -> None:
    assert first_check_at(T0, 2**38 / 48000, 1, PollPolicy()) == T0 + timedelta(seconds=MAX_WAIT_SECONDS)
    assert first_check_at(T0, 600.0, 1, PollPolicy()) == T0 + timedelta(seconds=100)


# --------------------------------------------------------------------------------------------------
# 2. SSRF through the storage Secret's endpoint
# --------------------------------------------------------------------------------------------------


def storage_config(data: Mapping[str, bytes], *patterns: str) -> StorageConfig:
    return parse_storage_secret(
        "s3-keys",
        {**KEYS, **data},
        default_endpoint=YANDEX,
        default_region="ru-central1",
        allowed_endpoints=patterns,
    )


@pytest.mark.parametrize(
    ("endpoint", "patterns"),
    [
        ("http://127.0.0.1:22", ()),
        ("http://169.254.169.254", ()),
        ("http://kubernetes.default.svc:443", ()),
        ("https://storage.yandexcloud.net:8443", ()),  # another port of the allowed host
        ("http://storage.yandexcloud.net", ()),  # another scheme (and port) of it
        ("https://storage.yandexcloud.net.evil.example", ()),
        ("http://127.0.0.1:9001", ("http://127.0.0.1:9000",)),
        ("http://127.0.0.1:8080", ("http://127.0.0.1",)),  # no port in a pattern: the default one
        ("https://minio.storage.svc", ("http://*.svc:*",)),
        ("http://10.0.0.1:9000", ("http://*.svc:*",)),
    ],
)
def test_ssrf_endpoints_outside_the_allowlist_are_refused(endpoint: str, patterns: tuple[str, ...]) -> None:
    with pytest.raises(SecretProblem) as caught:
        storage_config({"endpoint": endpoint.encode()}, *patterns)

    assert caught.value.reason == "StorageEndpointNotAllowed"
    assert STORAGE_ENDPOINTS_VARIABLE in caught.value.message
    assert "settings.storage_endpoints" in caught.value.message
    assert "'s3-keys'" in caught.value.message
    assert "YCsecretAccessKeyValue" not in caught.value.message


@pytest.mark.parametrize(
    ("endpoint", "patterns", "expected"),
    [
        (None, (), YANDEX),
        ("https://storage.yandexcloud.net", (), YANDEX),
        ("HTTPS://Storage.YandexCloud.net/", (), YANDEX),
        ("https://storage.yandexcloud.net:443", (), "https://storage.yandexcloud.net:443"),
        ("http://127.0.0.1:9000", ("http://127.0.0.1:9000",), "http://127.0.0.1:9000"),
        ("http://127.0.0.1:39512", ("http://127.0.0.1:*",), "http://127.0.0.1:39512"),
        ("http://minio.storage.svc:9000", ("http://*.svc:*",), "http://minio.storage.svc:9000"),
        ("https://s3.eu.example.net", ("https://*.example.net",), "https://s3.eu.example.net"),
        ("http://[::1]:9000", ("http://[::1]:9000",), "http://[::1]:9000"),
        ("http://minio", ("https://other", "http://minio:80"), "http://minio"),
    ],
)
def test_ssrf_endpoints_in_the_allowlist_pass_in_canonical_form(
    endpoint: str | None, patterns: tuple[str, ...], expected: str
) -> None:
    data = {} if endpoint is None else {"endpoint": endpoint.encode()}
    assert storage_config(data, *patterns).endpoint == expected


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:9000\\@storage.yandexcloud.net",  # urllib3 and urlsplit disagree on the host
        "https://storage.yandexcloud.net@127.0.0.1",
        "https://user:pass@storage.yandexcloud.net",
        "https://storage.yandexcloud.net/../../latest/meta-data",
        "https://storage.yandexcloud.net?x=1",
        "https://storage.yandexcloud.net#f",
        "https://storage.yandexcloud.net%2f@127.0.0.1",
        "https://storage.yandexcloud.net:0",
        "https://storage.yandexcloud.net:65536",
        "https://storage.yandexcloud.net.",
        "https:// storage.yandexcloud.net",
    ],
)
def test_ssrf_endpoints_that_are_not_plain_origins_are_invalid(endpoint: str) -> None:
    with pytest.raises(SecretProblem) as caught:
        storage_config({"endpoint": endpoint.encode()}, "http://*:*", "https://*:*")

    assert caught.value.reason == "InvalidStorageSecret"
    assert "scheme://host[:port]" in caught.value.message


def test_ssrf_allowlist_setting_is_parsed_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_ENDPOINTS_VARIABLE, " http://127.0.0.1:* , HTTPS://*.Example.NET/ ")
    assert Settings().storage_endpoints == ("http://127.0.0.1:*", "https://*.example.net")
    monkeypatch.delenv(STORAGE_ENDPOINTS_VARIABLE)
    assert Settings().storage_endpoints == ()
    for bad in ("minio:9000", "ftp://minio", "http://minio/path", "http://u@minio", "http://minio:0"):
        with pytest.raises(ValueError, match="is not an endpoint pattern"):
            Settings(storage_endpoints=bad)


async def test_ssrf_a_job_naming_a_forbidden_endpoint_waits_and_nothing_connects() -> None:
    run = harness(storage_secret={**KEYS, "endpoint": b"http://127.0.0.1:22"})

    status = await run.submit(SPEC)

    assert (status["phase"], status["reason"]) == ("Pending", "StorageEndpointNotAllowed")
    assert STORAGE_ENDPOINTS_VARIABLE in status["message"]
    assert run.storages.asked == []
    assert run.speech.submitted == []
    assert [reason for _, reason, _ in run.jobs.events] == ["RetryScheduled"]


async def test_ssrf_the_operators_allowlist_lets_a_job_through() -> None:
    data = (audio_dir() / "librivox-all.ogg").read_bytes()
    run = harness(
        data,
        storage_secret={**KEYS, "endpoint": b"http://minio.storage.svc:9000"},
        storage_endpoints="http://minio.storage.svc:9000",
    )

    status = await run.submit(SPEC)

    assert status["phase"] == "Running", status
    assert [config.endpoint for config in run.storages.asked] == ["http://minio.storage.svc:9000"]


@contextlib.contextmanager
def tcp_server(behaviour: str) -> Iterator[int]:
    """A loopback port that accepts and then stays silent, closes at once, or answers non-HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            if behaviour == "close":
                connection.close()
                continue
            if behaviour == "banner":
                connection.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
            connections.append(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        listener.close()
        for connection in connections:
            connection.close()


async def _failure(port: int) -> StorageError:
    config = StorageConfig(f"http://127.0.0.1:{port}", "us-east-1", "key-id", "secret-key-value")
    storage = ObjectStorage(config, timeout=0.3)
    try:
        with pytest.raises(StorageError) as caught:
            await storage.head("calls", "a.wav")
    finally:
        storage.close()
    return caught.value


async def test_ssrf_connection_failures_look_alike_whatever_the_ports_state() -> None:
    """On main the message named the exception (EndpointConnectionError for a closed port,
    ReadTimeoutError for a silent one, ConnectionClosedError for one that hangs up...): a port scan."""
    failures = {"refused": await _failure(free_port())}
    for behaviour in ("silent", "close", "banner"):
        with tcp_server(behaviour) as port:
            failures[behaviour] = await _failure(port)
    for constructed in (
        EndpointConnectionError(endpoint_url="http://no-such-host.invalid"),
        ConnectTimeoutError(endpoint_url="http://10.255.255.1"),
        ReadTimeoutError(endpoint_url="http://10.255.255.1"),
        OSError("[Errno -2] Name or service not known"),
    ):
        failures[type(constructed).__name__] = _classify(constructed, "s3://calls/a.wav")

    texts = {(error.kind, error.message) for error in failures.values()}
    assert len(texts) == 1, failures
    [(kind, message)] = texts
    assert kind == "unavailable"
    assert message.startswith("s3://calls/a.wav: storage unreachable: the connection to the endpoint failed")
    assert "secret-key-value" not in message


def _client_error(status: int, code: str) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (499, ""),  # MinIO while it shuts down with requests in flight (seen in the chaos run)
        (499, "ClientDisconnected"),
        (400, "RequestTimeout"),  # S3: the socket was not read from in time
        (408, ""),
        (503, "SlowDownWrite"),
        (429, ""),
        (500, "InternalError"),
    ],
)
def test_storage_answers_that_say_try_again_are_transient(status: int, code: str) -> None:
    """A MinIO restart answered a write with 499, read as "refused", and failed a job that a retry
    a moment later would have finished."""
    error = _classify(_client_error(status, code), "s3://calls/out/a.json")
    assert error.kind == "unavailable", error
    assert error.transient


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "InvalidArgument", "invalid"),
        (400, "EntityTooLarge", "invalid"),
        (403, "AccessDenied", "denied"),
        (404, "NoSuchBucket", "not_found"),
        (409, "BucketAlreadyExists", "invalid"),
    ],
)
def test_storage_answers_that_a_retry_cannot_fix_stay_permanent(status: int, code: str, kind: str) -> None:
    error = _classify(_client_error(status, code), "s3://calls/out/a.json")
    assert error.kind == kind
    assert not error.transient


# --------------------------------------------------------------------------------------------------
# 3. Memory: one boto3 Session, a bounded LRU of clients
# --------------------------------------------------------------------------------------------------


def config_number(index: int) -> StorageConfig:
    return StorageConfig(f"http://127.0.0.1:{10000 + index}", "us-east-1", f"key-{index}", "secret")


def test_memory_every_client_comes_from_one_boto3_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """On main each ObjectStorage made a Session of its own: about 12 MiB per storage configuration."""
    sessions: list[boto3.session.Session] = []
    real_session = boto3.session.Session

    def counting_session(*args: Any, **kwargs: Any) -> boto3.session.Session:
        made = real_session(*args, **kwargs)
        sessions.append(made)
        return made

    monkeypatch.setattr(storage_module, "_session", None)
    monkeypatch.setattr(boto3.session, "Session", counting_session)
    factory = StorageFactory(timeout=1.0)
    try:
        made = [factory.get(config_number(index)) for index in range(5)]
        made.append(ObjectStorage(config_number(99), timeout=1.0))
    finally:
        factory.close()
        made[-1].close()

    assert len(sessions) == 1
    assert len({id(storage) for storage in made}) == 6


@dataclass
class RecordingStorage:
    config: StorageConfig
    timeout: float
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[RecordingStorage]:
    made: list[RecordingStorage] = []

    def make(config: StorageConfig, *, timeout: float) -> RecordingStorage:
        made.append(RecordingStorage(config, timeout))
        return made[-1]

    monkeypatch.setattr(storage_module, "ObjectStorage", make)
    return made


def test_memory_the_factory_keeps_a_bounded_lru_and_closes_what_it_evicts(
    recorded: list[RecordingStorage],
) -> None:
    factory = StorageFactory(timeout=1.0, max_clients=3)

    def get(index: int) -> RecordingStorage:
        return cast(RecordingStorage, factory.get(config_number(index)))

    a, b, c = (get(index) for index in range(3))
    assert get(0) is a  # a is now the most recently used

    d = get(3)  # evicts b, the least recently used

    assert len(factory) == 3
    assert [storage.closed for storage in (a, b, c, d)] == [False, True, False, False]
    assert get(0) is a
    assert get(3) is d
    again = get(1)  # made anew; evicts c
    assert again is not b
    assert [storage.closed for storage in (a, c, d, again)] == [False, True, False, False]
    assert len(recorded) == 5

    factory.close()
    assert all(storage.closed for storage in recorded)
    assert len(factory) == 0


def test_memory_the_factory_is_bounded_by_default(recorded: list[RecordingStorage]) -> None:
    assert MAX_CLIENTS == 32
    factory = StorageFactory(timeout=1.0)
    for index in range(100):
        factory.get(config_number(index))

    assert len(factory) == MAX_CLIENTS
    assert sum(not storage.closed for storage in recorded) == MAX_CLIENTS
    assert [storage.config for storage in recorded if not storage.closed] == [
        config_number(index) for index in range(100 - MAX_CLIENTS, 100)
    ]
    with pytest.raises(ValueError, match="at least 1"):
        StorageFactory(max_clients=0)


async def test_memory_a_storage_evicted_while_in_use_still_works() -> None:
    """A step may hold a storage that another job's configuration evicts meanwhile: closing a boto3
    client only drops its pooled connections, and its next call connects again."""
    with moto_s3_server() as endpoint:
        factory = StorageFactory(timeout=5.0, max_clients=1)
        try:
            held = factory.get(StorageConfig(endpoint, "us-east-1", "held", "secret"))
            held._client.create_bucket(Bucket="calls")
            await held.put("calls", "a.txt", b"before", "text/plain")

            factory.get(StorageConfig(endpoint, "us-east-1", "other", "secret"))  # evicts and closes it
            await held.put("calls", "b.txt", b"after", "text/plain")

            assert await held.read_range("calls", "b.txt", "bytes=0-99") == b"after"
            assert len(factory) == 1
        finally:
            factory.close()
            held.close()


# --------------------------------------------------------------------------------------------------
# 4. Keys and prefixes with . and .. segments
# --------------------------------------------------------------------------------------------------

DOT_SEGMENT_KEYS = ["a/../b.wav", "./a.wav", "a/./b", "..", ".", "a/..", "calls/.", "a/b/../../c"]


@pytest.mark.parametrize("key", DOT_SEGMENT_KEYS)
def test_dot_segments_in_the_source_key_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match=r"must not contain \. or \.\. path segments") as caught:
        SourceSpec(bucket="calls", key=key)
    assert "HTTP clients resolve them" in str(caught.value)


@pytest.mark.parametrize("prefix", ["../", "./", "out/../", "out/./x/", "..", "out/.."])
def test_dot_segments_in_the_output_prefix_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match=r"must not contain \. or \.\. path segments"):
        OutputSpec(prefix=prefix)


@pytest.mark.parametrize(
    ("key", "prefix"),
    [("...", "out/"), (".hidden/a.wav", ".out/"), ("a..b/..c.wav", "x../"), ("calls/a.", "out."), ("a", "")],
)
def test_dot_segments_dots_inside_names_are_fine(key: str, prefix: str) -> None:
    spec = TranscriptionJobSpec.model_validate(
        {"source": {"bucket": "calls", "key": key}, "output": {"prefix": prefix}}
    )
    assert (spec.source.key, spec.output.prefix) == (key, prefix)


async def test_dot_segments_fail_a_job_that_slipped_past_the_crd() -> None:
    run = harness()

    status = await run.submit({"source": {"bucket": "calls", "key": "public/../private/ceo.wav"}})

    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.source.key" in status["message"]
    assert run.storages.asked == []
