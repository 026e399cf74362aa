"""SpeechKitV2Client against a small aiohttp server on 127.0.0.1, plus the retry loop and error helpers."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from speechkit_operator.clients.retry import RetryPolicy, with_retries
from speechkit_operator.clients.speech.auth import IAM_JWT_AUDIENCE
from speechkit_operator.clients.speech.errors import (
    MalformedResponseError,
    OperationNotFoundError,
    SpeechApiError,
    api_error_from_body,
    parse_retry_after,
    scrub,
)
from speechkit_operator.clients.speech.v2 import SpeechKitV2Client
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.credentials import (
    ApiKeyCredentials,
    Credentials,
    IamTokenCredentials,
    ServiceAccountKeyCredentials,
)
from speechkit_operator.models.operation import OperationError, RecognitionRequest
from speechkit_operator.models.recognition import Chunk, Transcript, Word

SUBMIT = "/speech/stt/v2/longRunningRecognize"
IAM = "/iam/v1/tokens"
API_KEY = "AQVNapikeysecret0123456789"
STATIC_IAM_TOKEN = "t1.staticIamTokenSecret0123456789"
PRESIGNED = (
    "http://storage.example:9000/audio-bucket/calls/2026/a.wav"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeefcafe"
)
RESPONSE_TYPE = "type.googleapis.com/yandex.cloud.ai.stt.v2.LongRunningRecognitionResponse"
POLICY = RetryPolicy(attempts=3, base_delay=0.01, max_delay=5.0)


# --- A tiny SpeechKit -----------------------------------------------------------------------------

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]]


def reply_json(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    async def reply(_request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return reply


def reply_text(status: int, text: str, content_type: str = "text/html") -> Reply:
    async def reply(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, text=text, content_type=content_type)

    return reply


def reply_slow(seconds: float) -> Reply:
    async def reply(_request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return web.json_response({"id": "late", "done": False})

    return reply


def operation(op_id: str = "e03sup6d5h1q", **fields: Any) -> dict[str, Any]:
    return {
        "id": op_id,
        "done": False,
        "createdAt": "2019-04-21T22:49:29Z",
        "createdBy": "ajes08feato8",
        "modifiedAt": "2019-04-21T22:49:29Z",
        **fields,
    }


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: Any


@dataclass
class FakeSpeechKit:
    """Scripted replies per endpoint: each request takes the next one; the last one repeats."""

    base_url: str = ""
    requests: list[Seen] = field(default_factory=list)
    submit: list[Reply] = field(default_factory=lambda: [reply_json(200, operation())])
    operations: list[Reply] = field(default_factory=lambda: [reply_json(200, operation())])
    iam: list[Reply] = field(default_factory=list)
    jwts: list[str] = field(default_factory=list)

    def seen(self, path_prefix: str) -> list[Seen]:
        return [r for r in self.requests if r.path.startswith(path_prefix)]

    @staticmethod
    def _next(replies: list[Reply]) -> Reply:
        return replies.pop(0) if len(replies) > 1 else replies[0]

    async def handle_submit(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Seen("POST", request.path, request.headers.get("Authorization"), body))
        return await self._next(self.submit)(request)

    async def handle_operation(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen("GET", request.raw_path, request.headers.get("Authorization"), None))
        return await self._next(self.operations)(request)

    async def handle_iam(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.jwts.append(body["jwt"])
        self.requests.append(Seen("POST", request.path, request.headers.get("Authorization"), body))
        if self.iam:
            return await self._next(self.iam)(request)
        return web.json_response(
            {"iamToken": f"t1.exchangedTokenSecret-{len(self.jwts)}", "expiresAt": "2100-01-01T00:00:00Z"}
        )


@pytest.fixture
async def api() -> AsyncIterator[FakeSpeechKit]:
    fake = FakeSpeechKit()
    app = web.Application()
    app.router.add_post(SUBMIT, fake.handle_submit)
    app.router.add_get("/operations/{id:.+}", fake.handle_operation)
    app.router.add_post(IAM, fake.handle_iam)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield fake
    await runner.cleanup()


class Sleeps:
    """An injected asyncio.sleep that only records."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(api: FakeSpeechKit, sleeps: Sleeps) -> AsyncIterator[SpeechKitV2Client]:
    c = SpeechKitV2Client(
        api.base_url + "/",  # trailing slashes are tolerated
        api.base_url + "/",
        api.base_url + IAM,
        timeout=2.0,
        retry_policy=POLICY,
        sleep=sleeps,
    )
    yield c
    await c.close()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def private_pem(rsa_key: rsa.RSAPrivateKey) -> str:
    return rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture
def sa_creds(private_pem: str) -> ServiceAccountKeyCredentials:
    return ServiceAccountKeyCredentials(
        key_id="ajekeyid0001",
        service_account_id="ajesa0000001",
        private_key=private_pem,
        folder_id="b1gfolder",
    )


def lpcm_request(**overrides: Any) -> RecognitionRequest:
    fields: dict[str, Any] = {
        "audio_uri": PRESIGNED,
        "language_code": "ru-RU",
        "model": "general",
        "audio_encoding": AudioEncoding.LINEAR16_PCM,
        "sample_rate_hertz": 16000,
        "audio_channel_count": 2,
    }
    fields.update(overrides)
    return RecognitionRequest(**fields)


def api_error(status: int, code: int, message: str, **headers: str) -> Reply:
    return reply_json(status, {"code": code, "message": message, "details": []}, headers=headers or None)


# --- Request shapes and headers -------------------------------------------------------------------


async def test_submit_lpcm_body_and_api_key_header(client: SpeechKitV2Client, api: FakeSpeechKit) -> None:
    request = lpcm_request(profanity_filter=True, literature_text=True, raw_results=True)
    state = await client.submit(request, ApiKeyCredentials(api_key=API_KEY))

    assert state.id == "e03sup6d5h1q"
    assert not state.done
    assert state.error is None
    assert state.transcript is None
    (seen,) = api.seen(SUBMIT)
    assert seen.path == SUBMIT
    assert seen.authorization == f"Api-Key {API_KEY}"
    assert seen.body == {
        "config": {
            "specification": {
                "languageCode": "ru-RU",
                "model": "general",
                "profanityFilter": True,
                "literature_text": True,
                "audioEncoding": "LINEAR16_PCM",
                "sampleRateHertz": 16000,
                "audioChannelCount": 2,
                "rawResults": True,
            }
        },
        "audio": {"uri": PRESIGNED},
    }


@pytest.mark.parametrize("encoding", [AudioEncoding.OGG_OPUS, AudioEncoding.MP3])
async def test_submit_container_formats_omit_rate_and_channels(
    client: SpeechKitV2Client, api: FakeSpeechKit, encoding: AudioEncoding
) -> None:
    # Even when the request carries them, OggOpus and MP3 must not send LPCM-only fields.
    request = lpcm_request(audio_encoding=encoding, language_code="en-US")
    await client.submit(request, IamTokenCredentials(iam_token=STATIC_IAM_TOKEN, folder_id="b1gfolder"))

    (seen,) = api.seen(SUBMIT)
    assert seen.authorization == f"Bearer {STATIC_IAM_TOKEN}"
    assert seen.body == {
        "config": {
            "specification": {
                "languageCode": "en-US",
                "model": "general",
                "profanityFilter": False,
                "literature_text": False,
                "audioEncoding": encoding.value,
                "rawResults": False,
            },
            "folderId": "b1gfolder",
        },
        "audio": {"uri": PRESIGNED},
    }


async def test_folder_id_only_when_the_credentials_carry_one(
    client: SpeechKitV2Client, api: FakeSpeechKit
) -> None:
    await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY, folder_id="b1gother"))
    first, second = api.seen(SUBMIT)
    assert "folderId" not in first.body["config"]
    assert second.body["config"]["folderId"] == "b1gother"


async def test_lpcm_without_rate_or_channels_sends_neither(
    client: SpeechKitV2Client, api: FakeSpeechKit
) -> None:
    await client.submit(
        lpcm_request(sample_rate_hertz=None, audio_channel_count=None), ApiKeyCredentials(api_key=API_KEY)
    )
    spec = api.seen(SUBMIT)[0].body["config"]["specification"]
    assert "sampleRateHertz" not in spec
    assert "audioChannelCount" not in spec


async def test_service_account_header_uses_the_exchanged_token(
    client: SpeechKitV2Client,
    api: FakeSpeechKit,
    sa_creds: ServiceAccountKeyCredentials,
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    await client.submit(lpcm_request(), sa_creds)
    await client.get_operation("e03sup6d5h1q", sa_creds)

    submit, get = api.seen(SUBMIT)[0], api.seen("/operations/")[0]
    assert submit.authorization == get.authorization == "Bearer t1.exchangedTokenSecret-1"
    assert submit.body["config"]["folderId"] == "b1gfolder"
    # One exchange for both calls, with a JWT signed by the key and no Authorization header of its own.
    (iam,) = api.seen(IAM)
    assert iam.authorization is None
    claims = jwt.decode(api.jwts[0], rsa_key.public_key(), algorithms=["PS256"], audience=IAM_JWT_AUDIENCE)
    assert claims["iss"] == "ajesa0000001"


async def test_get_operation_path_and_header(client: SpeechKitV2Client, api: FakeSpeechKit) -> None:
    state = await client.get_operation("e03sup6d5h1q", IamTokenCredentials(iam_token=STATIC_IAM_TOKEN))
    (seen,) = api.seen("/operations/")
    assert seen.path == "/operations/e03sup6d5h1q"
    assert seen.authorization == f"Bearer {STATIC_IAM_TOKEN}"
    assert state.id == "e03sup6d5h1q"


async def test_operation_ids_are_escaped_in_the_path(client: SpeechKitV2Client, api: FakeSpeechKit) -> None:
    await client.get_operation("a/../b?c", ApiKeyCredentials(api_key=API_KEY))
    assert api.seen("/operations/")[0].path == "/operations/a%2F..%2Fb%3Fc"


# --- Operations -----------------------------------------------------------------------------------


async def test_error_while_not_done(client: SpeechKitV2Client, api: FakeSpeechKit) -> None:
    api.operations = [
        reply_json(
            200, operation(done=False, error={"code": 3, "message": "audio is too long", "details": []})
        )
    ]
    state = await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    assert not state.done
    assert state.error == OperationError(code=3, message="audio is too long")
    assert state.transcript is None


async def test_done_with_error(client: SpeechKitV2Client, api: FakeSpeechKit) -> None:
    api.operations = [reply_json(200, operation(done=True, error={"code": 7, "message": "no access"}))]
    state = await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    assert state.done
    assert state.error == OperationError(code=7, message="no access")
    assert state.response is None
    assert state.transcript is None


async def test_done_without_chunks_is_an_empty_transcript(
    client: SpeechKitV2Client, api: FakeSpeechKit
) -> None:
    api.operations = [reply_json(200, operation(done=True, response={"@type": RESPONSE_TYPE}))]
    state = await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    assert state.done
    assert state.error is None
    assert state.response == {"@type": RESPONSE_TYPE}
    assert state.transcript == Transcript()


async def test_done_with_chunks_keeps_the_raw_response_and_parses_it(
    client: SpeechKitV2Client, api: FakeSpeechKit
) -> None:
    response = {
        "@type": RESPONSE_TYPE,
        "chunks": [
            {
                "alternatives": [
                    {
                        "words": [
                            {
                                "startTime": "0.879999999s",
                                "endTime": "1.159999992s",
                                "word": "when",
                                "confidence": 1,
                            }
                        ],
                        "text": "when",
                        "confidence": 1,
                    }
                ],
                "channelTag": "2",
            }
        ],
    }
    api.operations = [reply_json(200, operation(done=True, response=response))]
    state = await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    assert state.response == response
    assert state.transcript == Transcript(
        chunks=(Chunk(channel="2", text="when", words=(Word("when", 0.879999999, 1.159999992),)),),
        channels=("2",),
    )


async def test_unparseable_result_is_a_malformed_response(
    client: SpeechKitV2Client, api: FakeSpeechKit
) -> None:
    api.operations = [reply_json(200, operation(done=True, response={"chunks": "garbage"}))]
    with pytest.raises(MalformedResponseError):
        await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))


async def test_404_on_get_is_operation_not_found_and_not_retried(
    client: SpeechKitV2Client, api: FakeSpeechKit, sleeps: Sleeps
) -> None:
    api.operations = [api_error(404, 5, "Operation not found")]
    with pytest.raises(OperationNotFoundError) as info:
        await client.get_operation("expired", ApiKeyCredentials(api_key=API_KEY))
    assert info.value.http_status == 404
    assert info.value.reason == "NotFound"
    assert not info.value.transient
    assert len(api.seen("/operations/")) == 1
    assert sleeps.delays == []


# --- Retries and transient failures ---------------------------------------------------------------


async def test_429_with_retry_after_is_honoured_then_succeeds(
    client: SpeechKitV2Client, api: FakeSpeechKit, sleeps: Sleeps
) -> None:
    api.submit = [
        api_error(429, 8, "quota exceeded", **{"Retry-After": "2"}),
        reply_json(200, operation("op-after-429")),
    ]
    state = await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    assert state.id == "op-after-429"
    assert sleeps.delays == [2.0]
    assert len(api.seen(SUBMIT)) == 2


async def test_503_then_success_backs_off_with_jitter(
    client: SpeechKitV2Client, api: FakeSpeechKit, sleeps: Sleeps
) -> None:
    api.operations = [
        api_error(503, 14, "unavailable"),
        reply_text(502, "<html>bad gateway</html>"),
        reply_json(200, operation(done=True, response={"chunks": []})),
    ]
    state = await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    assert state.done
    assert len(api.seen("/operations/")) == 3
    assert len(sleeps.delays) == 2
    assert 0 <= sleeps.delays[0] <= POLICY.base_delay
    assert 0 <= sleeps.delays[1] <= POLICY.base_delay * 2


async def test_giving_up_raises_a_transient_error(
    client: SpeechKitV2Client, api: FakeSpeechKit, sleeps: Sleeps
) -> None:
    api.submit = [api_error(503, 14, "service unavailable")]
    with pytest.raises(SpeechApiError) as info:
        await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    error = info.value
    assert error.transient
    assert error.http_status == 503
    assert error.reason == "Unavailable"
    assert error.retry_after is None
    assert "service unavailable" in str(error)
    assert len(api.seen(SUBMIT)) == POLICY.attempts
    assert len(sleeps.delays) == POLICY.attempts - 1


async def test_giving_up_after_429s_keeps_retry_after(
    client: SpeechKitV2Client, api: FakeSpeechKit, sleeps: Sleeps
) -> None:
    api.operations = [api_error(429, 8, "too many checks", **{"Retry-After": "3"})]
    with pytest.raises(SpeechApiError) as info:
        await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    assert info.value.transient
    assert info.value.retry_after == 3.0
    assert info.value.reason == "ResourceExhausted"
    assert sleeps.delays == [3.0, 3.0]


async def test_retry_after_beyond_max_delay_gives_up_at_once(
    client: SpeechKitV2Client, api: FakeSpeechKit, sleeps: Sleeps
) -> None:
    api.submit = [api_error(429, 8, "hourly quota", **{"Retry-After": "120"})]
    with pytest.raises(SpeechApiError) as info:
        await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    assert info.value.transient
    assert info.value.retry_after == 120.0
    assert len(api.seen(SUBMIT)) == 1
    assert sleeps.delays == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connection_errors_are_retried_then_transient(sleeps: Sleeps) -> None:
    dead = f"http://127.0.0.1:{_closed_port()}"
    async with SpeechKitV2Client(dead, dead, dead + IAM, retry_policy=POLICY, sleep=sleeps) as client:
        with pytest.raises(SpeechApiError) as info:
            await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    assert info.value.http_status is None
    assert info.value.transient
    assert info.value.reason == "SpeechApiUnreachable"
    assert len(sleeps.delays) == POLICY.attempts - 1


async def test_a_timed_out_submission_is_not_repeated_within_the_call(
    api: FakeSpeechKit, sleeps: Sleeps
) -> None:
    """The server may have created the operation before the answer was lost: sending the request
    again could make a second, billed operation."""
    api.submit = [reply_slow(0.3)]
    client = SpeechKitV2Client(
        api.base_url, api.base_url, api.base_url + IAM, timeout=0.05, retry_policy=POLICY, sleep=sleeps
    )
    try:
        with pytest.raises(SpeechApiError, match="no answer within") as info:
            await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    finally:
        await client.close()
    assert info.value.transient
    assert not info.value.certainly_unprocessed
    assert info.value.http_status is None
    assert len(api.seen(SUBMIT)) == 1


async def test_a_refused_connection_is_retried_on_submit(sleeps: Sleeps) -> None:
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    client = SpeechKitV2Client(closed, closed, closed + IAM, timeout=1, retry_policy=POLICY, sleep=sleeps)
    try:
        with pytest.raises(SpeechApiError, match="connection failed") as info:
            await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    finally:
        await client.close()
    assert info.value.certainly_unprocessed
    assert len(sleeps.delays) == POLICY.attempts - 1


async def test_timeouts_of_operation_checks_are_retried(api: FakeSpeechKit, sleeps: Sleeps) -> None:
    api.operations = [reply_slow(0.3)]
    client = SpeechKitV2Client(
        api.base_url, api.base_url, api.base_url + IAM, timeout=0.05, retry_policy=POLICY, sleep=sleeps
    )
    try:
        with pytest.raises(SpeechApiError, match="no answer within"):
            await client.get_operation("e03abc", ApiKeyCredentials(api_key=API_KEY))
    finally:
        await client.close()
    assert len(api.seen("/operations/")) == POLICY.attempts


async def test_iam_exchange_failures_are_retried_too(
    client: SpeechKitV2Client, api: FakeSpeechKit, sa_creds: ServiceAccountKeyCredentials, sleeps: Sleeps
) -> None:
    api.iam = [
        reply_text(503, "busy"),
        reply_json(200, {"iamToken": "t1.secondTry", "expiresAt": "2100-01-01T00:00:00Z"}),
    ]
    await client.submit(lpcm_request(), sa_creds)
    assert len(api.jwts) == 2
    assert api.seen(SUBMIT)[0].authorization == "Bearer t1.secondTry"
    assert len(sleeps.delays) == 1


# --- Permanent failures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        (400, 3, "InvalidArgument"),
        (401, 16, "Unauthenticated"),
        (403, 7, "PermissionDenied"),
        (404, 5, "NotFound"),  # on submit: not an OperationNotFoundError
        (400, 9, "FailedPrecondition"),  # the body's code wins over the HTTP status
    ],
)
async def test_permanent_submit_errors(
    client: SpeechKitV2Client, api: FakeSpeechKit, sleeps: Sleeps, case: tuple[int, int, str]
) -> None:
    status, code, reason = case
    api.submit = [api_error(status, code, "the API explains")]
    with pytest.raises(SpeechApiError) as info:
        await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    error = info.value
    assert type(error) is SpeechApiError
    assert not error.transient
    assert error.http_status == status
    assert error.grpc_code == code
    assert error.reason == reason
    assert "the API explains" in error.message
    assert len(api.seen(SUBMIT)) == 1
    assert sleeps.delays == []


async def test_permanent_error_with_a_non_json_body(client: SpeechKitV2Client, api: FakeSpeechKit) -> None:
    api.submit = [reply_text(403, "<html>Forbidden</html>")]
    with pytest.raises(SpeechApiError) as info:
        await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    assert info.value.http_status == 403
    assert info.value.reason == "PermissionDenied"  # from the HTTP status
    assert not info.value.transient


async def test_malformed_submit_answer_is_not_retried(
    client: SpeechKitV2Client, api: FakeSpeechKit, sleeps: Sleeps
) -> None:
    api.submit = [reply_json(200, {"done": False})]  # no id
    with pytest.raises(MalformedResponseError) as info:
        await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    assert info.value.transient  # the caller may try later; this call does not submit twice
    assert len(api.seen(SUBMIT)) == 1
    assert sleeps.delays == []


async def test_401_with_service_account_refreshes_the_token_once(
    client: SpeechKitV2Client, api: FakeSpeechKit, sa_creds: ServiceAccountKeyCredentials, sleeps: Sleeps
) -> None:
    await client.get_operation("warm-up", sa_creds)  # caches t1.exchangedTokenSecret-1
    api.submit = [api_error(401, 16, "token revoked"), reply_json(200, operation("fresh"))]
    state = await client.submit(lpcm_request(), sa_creds)
    assert state.id == "fresh"
    first, second = api.seen(SUBMIT)
    assert first.authorization == "Bearer t1.exchangedTokenSecret-1"
    assert second.authorization == "Bearer t1.exchangedTokenSecret-2"
    assert len(api.jwts) == 2
    assert sleeps.delays == []


async def test_persistent_401_with_service_account_is_permanent_after_one_refresh(
    client: SpeechKitV2Client, api: FakeSpeechKit, sa_creds: ServiceAccountKeyCredentials
) -> None:
    api.operations = [api_error(401, 16, "unauthenticated")]
    with pytest.raises(SpeechApiError) as info:
        await client.get_operation("e03sup6d5h1q", sa_creds)
    assert info.value.http_status == 401
    assert not info.value.transient
    assert len(api.seen("/operations/")) == 2
    assert len(api.jwts) == 2


async def test_401_with_an_api_key_is_not_repeated(client: SpeechKitV2Client, api: FakeSpeechKit) -> None:
    api.submit = [api_error(401, 16, "bad key")]
    with pytest.raises(SpeechApiError) as info:
        await client.submit(lpcm_request(), ApiKeyCredentials(api_key=API_KEY))
    assert info.value.reason == "Unauthenticated"
    assert len(api.seen(SUBMIT)) == 1
    assert api.jwts == []


# --- Secrets never reach messages or logs -----------------------------------------------------------


async def echo_everything(request: web.Request, status: int) -> web.StreamResponse:
    """A hostile server: its error message repeats the Authorization header and the request body."""
    body = await request.text()
    auth = request.headers.get("Authorization", "")
    return web.json_response(
        {"code": 3, "message": f"auth={auth} body={body} uri={PRESIGNED}"}, status=status
    )


def secrets_in(error: BaseException, extra: list[str]) -> list[str]:
    texts = [str(error), repr(error), *(str(a) for a in error.args)]
    if isinstance(error, SpeechApiError):
        texts.append(error.message)
    everything = "\n".join(texts)
    return [s for s in extra if s in everything]


@pytest.mark.parametrize("mode", ["api-key", "iam-token", "service-account"])
async def test_no_secret_or_presigned_uri_in_any_message(
    client: SpeechKitV2Client,
    api: FakeSpeechKit,
    sa_creds: ServiceAccountKeyCredentials,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    by_mode: dict[str, Credentials] = {
        "api-key": ApiKeyCredentials(api_key=API_KEY),
        "iam-token": IamTokenCredentials(iam_token=STATIC_IAM_TOKEN),
        "service-account": sa_creds,
    }
    creds = by_mode[mode]

    async def echo_400(request: web.Request) -> web.StreamResponse:
        return await echo_everything(request, 400)

    async def echo_503(request: web.Request) -> web.StreamResponse:
        return await echo_everything(request, 503)

    async def echo_iam_401(request: web.Request) -> web.StreamResponse:
        return await echo_everything(request, 401)

    forbidden = [
        API_KEY,
        STATIC_IAM_TOKEN,
        "t1.exchangedTokenSecret",
        PRESIGNED,
        PRESIGNED.split("?", maxsplit=1)[0],
        "X-Amz-Signature",
        "deadbeefcafe",
        "BEGIN PRIVATE KEY",
        sa_creds.private_key.splitlines()[1],
    ]
    errors: list[SpeechApiError] = []

    api.submit = [echo_400]
    with pytest.raises(SpeechApiError) as permanent:
        await client.submit(lpcm_request(), creds)
    errors.append(permanent.value)

    api.submit = [echo_503]
    with pytest.raises(SpeechApiError) as transient:
        await client.submit(lpcm_request(), creds)
    assert transient.value.transient
    errors.append(transient.value)

    api.operations = [
        reply_json(200, operation(done=True, error={"code": 5, "message": f"cannot read {PRESIGNED}"}))
    ]
    state = await client.get_operation("e03sup6d5h1q", creds)
    assert state.error is not None
    assert "cannot read" in state.error.message
    assert [s for s in forbidden if s in state.error.message] == []

    if isinstance(creds, ServiceAccountKeyCredentials):
        client.auth.invalidate(creds)
        api.iam = [echo_iam_401]
        with pytest.raises(SpeechApiError) as iam_failure:
            await client.submit(lpcm_request(), creds)
        errors.append(iam_failure.value)
        forbidden.extend(api.jwts)
        assert api.jwts

    for error in errors:
        assert "auth=" in error.message  # the echo did arrive, scrubbed
        assert secrets_in(error, forbidden) == []
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("speechkit_operator"))
    assert "retrying" in logged
    assert [s for s in forbidden if s in logged] == []


# --- Sessions -------------------------------------------------------------------------------------


async def test_an_own_session_is_created_lazily_and_closed(api: FakeSpeechKit) -> None:
    client = SpeechKitV2Client(api.base_url, api.base_url, api.base_url + IAM, retry_policy=POLICY)
    await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    session = client._session
    assert session is not None
    await client.close()
    assert session.closed
    await client.close()  # twice is fine


async def test_a_given_session_is_not_closed(api: FakeSpeechKit) -> None:
    async with aiohttp.ClientSession() as session:
        client = SpeechKitV2Client(
            api.base_url, api.base_url, api.base_url + IAM, retry_policy=POLICY, session=session
        )
        await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
        await client.close()
        assert not session.closed
        with pytest.raises(SpeechApiError, match="closed"):
            await client.get_operation("e03sup6d5h1q", ApiKeyCredentials(api_key=API_KEY))
    assert len(api.seen("/operations/")) == 1


# --- with_retries ---------------------------------------------------------------------------------


class Flaky(Exception):
    def __init__(self, n: int, transient: bool = True, retry_after: float | None = None) -> None:
        super().__init__(f"failure {n}")
        self.transient = transient
        self.retry_after = retry_after


def is_flaky_transient(exc: Exception) -> bool:
    return isinstance(exc, Flaky) and exc.transient


def flaky_retry_after(exc: Exception) -> float | None:
    return exc.retry_after if isinstance(exc, Flaky) else None


class Script:
    """Raises the scripted errors in order, then returns "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_full_jitter_exponential_backoff_capped_at_max_delay(sleeps: Sleeps) -> None:
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=5.0)
    call = Script(*(Flaky(n) for n in range(5)))
    notices: list[tuple[int, str, float]] = []
    result = await with_retries(
        call,
        policy,
        is_transient=is_flaky_transient,
        on_retry=lambda n, exc, delay: notices.append((n, str(exc), delay)),
        sleep=sleeps,
        rand=lambda: 1.0,
    )
    assert result == "ok"
    assert call.calls == 6
    assert sleeps.delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [n for n, _, _ in notices] == [1, 2, 3, 4, 5]
    assert notices[0][1] == "failure 0"

    half = Sleeps()
    await with_retries(
        Script(Flaky(0), Flaky(1)), policy, is_transient=is_flaky_transient, sleep=half, rand=lambda: 0.5
    )
    assert half.delays == [0.5, 1.0]


async def test_the_last_error_is_raised_when_attempts_run_out(sleeps: Sleeps) -> None:
    errors = [Flaky(0), Flaky(1), Flaky(2)]
    call = Script(*errors)
    with pytest.raises(Flaky) as info:
        await with_retries(
            call, RetryPolicy(attempts=3, base_delay=0.01), is_transient=is_flaky_transient, sleep=sleeps
        )
    assert info.value is errors[2]
    assert call.calls == 3
    assert len(sleeps.delays) == 2


async def test_permanent_errors_are_raised_at_once(sleeps: Sleeps) -> None:
    call = Script(Flaky(0, transient=False))
    with pytest.raises(Flaky):
        await with_retries(call, RetryPolicy(attempts=5), is_transient=is_flaky_transient, sleep=sleeps)
    assert call.calls == 1
    assert sleeps.delays == []


async def test_retry_after_is_used_exactly_and_too_long_gives_up(sleeps: Sleeps) -> None:
    policy = RetryPolicy(attempts=5, base_delay=0.01, max_delay=10.0)
    call = Script(Flaky(0, retry_after=7.0), Flaky(1, retry_after=0.0))
    assert (
        await with_retries(
            call, policy, is_transient=is_flaky_transient, retry_after_of=flaky_retry_after, sleep=sleeps
        )
        == "ok"
    )
    assert sleeps.delays == [7.0, 0.0]

    too_long = Script(Flaky(0, retry_after=10.5))
    with pytest.raises(Flaky) as info:
        await with_retries(
            too_long, policy, is_transient=is_flaky_transient, retry_after_of=flaky_retry_after, sleep=sleeps
        )
    assert info.value.retry_after == 10.5
    assert too_long.calls == 1
    assert sleeps.delays == [7.0, 0.0]


async def test_cancellation_is_not_retried(sleeps: Sleeps) -> None:
    call = Script(asyncio.CancelledError())  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):
        await with_retries(call, RetryPolicy(attempts=3), is_transient=lambda _e: True, sleep=sleeps)
    assert call.calls == 1


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"base_delay": -1.0}, {"max_delay": -0.5}])
def test_retry_policy_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


def test_backoff_ceiling_does_not_overflow() -> None:
    policy = RetryPolicy(attempts=10_000, base_delay=0.5, max_delay=30.0)
    assert policy.backoff_ceiling(1) == 0.5
    assert policy.backoff_ceiling(3) == 2.0
    assert policy.backoff_ceiling(5000) == 30.0


# --- Error helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now) == expected


def test_scrub_removes_known_secrets_credentials_and_urls() -> None:
    text = (
        "key AQVNsecret123 and Authorization: Bearer t1.abc.def-ghi and Api-Key AQVNother "
        "jwt eyJhbGciOiJQUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln and https://host/bucket/key?X-Amz-Signature=1 end"
    )
    cleaned = scrub(text, ["AQVNsecret123", None, ""])
    for secret in ["AQVNsecret123", "t1.abc", "AQVNother", "eyJhbGci", "X-Amz-Signature", "host/bucket"]:
        assert secret not in cleaned
    assert cleaned.startswith("key *** and Authorization: Bearer ***")
    assert cleaned.endswith("<url> end")


def test_api_error_from_body_shapes() -> None:
    err = api_error_from_body("Op", 400, b'{"code": 3, "message": "bad ' + b"x" * 1000 + b'"}')
    assert err.grpc_code == 3
    assert len(err.message) < 400
    assert err.message.endswith("...")

    plain = api_error_from_body("Op", 503, b"<html>down</html>", retry_after=4.0)
    assert plain.message == "Op failed"
    assert plain.grpc_code == 14
    assert plain.retry_after == 4.0
    assert plain.transient

    odd_code = api_error_from_body("Op", 400, b'{"code": 99, "message": "m"}')
    assert odd_code.grpc_code == 3  # out of range: from the HTTP status

    nf = api_error_from_body("Op", 404, b"{}", error_class=OperationNotFoundError)
    assert isinstance(nf, OperationNotFoundError)


async def test_a_closed_client_opens_no_new_session() -> None:
    client = SpeechKitV2Client("http://127.0.0.1:9", "http://127.0.0.1:9", "http://127.0.0.1:9/iam/v1/tokens")
    await client.close()
    with pytest.raises(SpeechApiError, match="closed") as raised:
        await client.get_operation("e03abc", ApiKeyCredentials(api_key="k"))
    assert raised.value.transient
