"""SpeechAuthenticator and build_jwt: header values, the PS256 JWT, the IAM token cache, single-flight."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from speechkit_operator.clients.speech.auth import (
    IAM_JWT_AUDIENCE,
    MAX_JWT_LIFETIME,
    SpeechAuthenticator,
    build_jwt,
)
from speechkit_operator.clients.speech.errors import (
    CredentialsError,
    MalformedResponseError,
    SpeechApiError,
)
from speechkit_operator.models.credentials import (
    ApiKeyCredentials,
    IamTokenCredentials,
    ServiceAccountKeyCredentials,
)

HOUR = 3600.0
START = 1_700_000_000.0


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def sa_creds(rsa_key: rsa.RSAPrivateKey) -> ServiceAccountKeyCredentials:
    return ServiceAccountKeyCredentials(
        key_id="ajekeyid0001", service_account_id="ajesa0000001", private_key=_pem(rsa_key)
    )


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


Reply = Callable[[int, str], Awaitable[web.StreamResponse]]


class FakeIam:
    """A minimal IAM token endpoint: records every JWT, answers with ``reply`` (default: a token)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.url = ""
        self.jwts: list[str] = []
        self.lifetime = 12 * HOUR
        self.delay = 0.0
        self.reply: Reply | None = None

    @property
    def exchanges(self) -> int:
        return len(self.jwts)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.jwts.append(body["jwt"])
        n = len(self.jwts)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.reply is not None:
            return await self.reply(n, body["jwt"])
        return web.json_response(
            {"iamToken": f"t1.token-number-{n}", "expiresAt": rfc3339(self.clock.now + self.lifetime)}
        )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def iam(clock: FakeClock) -> AsyncIterator[FakeIam]:
    fake = FakeIam(clock)
    app = web.Application()
    app.router.add_post("/iam/v1/tokens", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}/iam/v1/tokens"
    yield fake
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def auth(iam: FakeIam, session: aiohttp.ClientSession, clock: FakeClock) -> SpeechAuthenticator:
    return SpeechAuthenticator(iam.url, session, timeout=2.0, clock=clock)


def decode(token: str, key: rsa.RSAPrivateKey) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        key.public_key(),
        algorithms=["PS256"],
        audience=IAM_JWT_AUDIENCE,
        options={"verify_exp": False, "verify_iat": False},
    )
    return claims


# --- build_jwt ----------------------------------------------------------------------------------


def test_jwt_header_and_claims_verify_with_the_public_key(
    sa_creds: ServiceAccountKeyCredentials, rsa_key: rsa.RSAPrivateKey
) -> None:
    now = time.time()
    token = build_jwt(sa_creds, now)

    assert jwt.get_unverified_header(token) == {"typ": "JWT", "alg": "PS256", "kid": "ajekeyid0001"}
    # Verified for real, expiry included, with the public half of the key.
    claims = jwt.decode(token, rsa_key.public_key(), algorithms=["PS256"], audience=IAM_JWT_AUDIENCE)
    assert claims == {
        "iss": "ajesa0000001",
        "aud": "https://iam.api.cloud.yandex.net/iam/v1/tokens",
        "iat": int(now),
        "exp": int(now) + 3600,
    }


def test_jwt_does_not_verify_with_another_key(
    sa_creds: ServiceAccountKeyCredentials, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    token = build_jwt(sa_creds, time.time())
    with pytest.raises(jwt.InvalidSignatureError):
        decode(token, other_rsa_key)


def test_jwt_lifetime_is_capped_at_an_hour(
    sa_creds: ServiceAccountKeyCredentials, rsa_key: rsa.RSAPrivateKey
) -> None:
    long = decode(build_jwt(sa_creds, START, lifetime=7200), rsa_key)
    assert long["exp"] - long["iat"] == MAX_JWT_LIFETIME == 3600
    short = decode(build_jwt(sa_creds, START, lifetime=600), rsa_key)
    assert short["exp"] - short["iat"] == 600
    assert short["iat"] == int(START)


def test_jwt_accepts_the_yandex_warning_line_before_the_pem(
    sa_creds: ServiceAccountKeyCredentials, rsa_key: rsa.RSAPrivateKey
) -> None:
    prefixed = ServiceAccountKeyCredentials(
        key_id=sa_creds.key_id,
        service_account_id=sa_creds.service_account_id,
        private_key="PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <ajekeyid0001>\n"
        + sa_creds.private_key,
    )
    assert decode(build_jwt(prefixed, START), rsa_key)["iss"] == "ajesa0000001"


@pytest.mark.parametrize(
    "private_key",
    [
        "not a key at all",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    ],
)
def test_unloadable_private_key_is_a_permanent_credentials_error(private_key: str) -> None:
    creds = ServiceAccountKeyCredentials(key_id="k", service_account_id="sa", private_key=private_key)
    with pytest.raises(CredentialsError) as info:
        build_jwt(creds, START)
    assert not info.value.transient
    assert info.value.reason == "InvalidCredentials"
    assert private_key not in str(info.value)
    assert "bm90IGEga2V5" not in str(info.value)


def test_non_rsa_private_key_is_refused() -> None:
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
    )
    creds = ServiceAccountKeyCredentials(key_id="k", service_account_id="sa", private_key=ec_pem)
    with pytest.raises(CredentialsError, match="not an RSA key"):
        build_jwt(creds, START)


# --- Static credentials ---------------------------------------------------------------------------


async def test_api_key_and_iam_token_headers(auth: SpeechAuthenticator, iam: FakeIam) -> None:
    assert await auth.authorization(ApiKeyCredentials(api_key="AQVNsecret", folder_id="b1g")) == (
        "Api-Key AQVNsecret"
    )
    assert await auth.authorization(IamTokenCredentials(iam_token="t1.static")) == "Bearer t1.static"
    # Trailing newlines from `kubectl create secret --from-file` are dropped.
    assert await auth.authorization(ApiKeyCredentials(api_key="AQVNsecret\n")) == "Api-Key AQVNsecret"
    assert iam.exchanges == 0


@pytest.mark.parametrize(
    "creds",
    [ApiKeyCredentials(api_key=""), IamTokenCredentials(iam_token="  "), ApiKeyCredentials(api_key="a\nb")],
)
async def test_unusable_static_credentials_are_permanent(
    auth: SpeechAuthenticator, creds: ApiKeyCredentials | IamTokenCredentials
) -> None:
    with pytest.raises(CredentialsError) as info:
        await auth.authorization(creds)
    assert not info.value.transient


# --- Service-account exchange ---------------------------------------------------------------------


async def test_service_account_exchange_sends_a_valid_jwt(
    auth: SpeechAuthenticator,
    iam: FakeIam,
    sa_creds: ServiceAccountKeyCredentials,
    rsa_key: rsa.RSAPrivateKey,
    clock: FakeClock,
) -> None:
    assert await auth.authorization(sa_creds) == "Bearer t1.token-number-1"
    assert iam.exchanges == 1
    assert jwt.get_unverified_header(iam.jwts[0])["kid"] == "ajekeyid0001"
    claims = decode(iam.jwts[0], rsa_key)
    assert claims["iss"] == "ajesa0000001"
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] == int(clock.now) + 3600


async def test_token_is_cached_until_shortly_before_expiry(
    iam: FakeIam, session: aiohttp.ClientSession, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    auth = SpeechAuthenticator(iam.url, session, clock=clock, refresh_margin=300, max_token_age=None)
    iam.lifetime = 12 * HOUR
    assert await auth.iam_token(sa_creds) == "t1.token-number-1"

    clock.now = START + 12 * HOUR - 301  # still more than the 5-minute margin left
    assert await auth.iam_token(sa_creds) == "t1.token-number-1"
    assert iam.exchanges == 1

    clock.now = START + 12 * HOUR - 299  # inside the margin: refresh
    assert await auth.iam_token(sa_creds) == "t1.token-number-2"
    assert iam.exchanges == 2
    assert await auth.iam_token(sa_creds) == "t1.token-number-2"
    assert iam.exchanges == 2


async def test_short_lived_tokens_refresh_at_ten_percent_of_their_life(
    iam: FakeIam, session: aiohttp.ClientSession, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    auth = SpeechAuthenticator(iam.url, session, clock=clock, refresh_margin=300, max_token_age=None)
    iam.lifetime = 100.0  # margin = min(300, 10) = 10 s
    await auth.iam_token(sa_creds)
    clock.now = START + 89
    assert await auth.iam_token(sa_creds) == "t1.token-number-1"
    clock.now = START + 91
    assert await auth.iam_token(sa_creds) == "t1.token-number-2"


async def test_tokens_are_refreshed_hourly_by_default(
    auth: SpeechAuthenticator, iam: FakeIam, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    await auth.iam_token(sa_creds)
    clock.now = START + HOUR - 1
    assert await auth.iam_token(sa_creds) == "t1.token-number-1"
    clock.now = START + HOUR + 1
    assert await auth.iam_token(sa_creds) == "t1.token-number-2"


async def test_missing_expires_at_is_treated_as_one_hour(
    iam: FakeIam, session: aiohttp.ClientSession, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    auth = SpeechAuthenticator(iam.url, session, clock=clock, max_token_age=None)

    async def no_expiry(n: int, _jwt: str) -> web.StreamResponse:
        return web.json_response({"iamToken": f"t1.token-number-{n}"})

    iam.reply = no_expiry
    await auth.iam_token(sa_creds)
    clock.now = START + HOUR - 301
    assert await auth.iam_token(sa_creds) == "t1.token-number-1"
    clock.now = START + HOUR - 299
    assert await auth.iam_token(sa_creds) == "t1.token-number-2"


async def test_cache_is_per_key_id_and_private_key(
    auth: SpeechAuthenticator,
    iam: FakeIam,
    sa_creds: ServiceAccountKeyCredentials,
    other_rsa_key: rsa.RSAPrivateKey,
) -> None:
    other_id = ServiceAccountKeyCredentials(
        key_id="ajekeyid0002",
        service_account_id=sa_creds.service_account_id,
        private_key=sa_creds.private_key,
    )
    rotated = ServiceAccountKeyCredentials(
        key_id=sa_creds.key_id,
        service_account_id=sa_creds.service_account_id,
        private_key=_pem(other_rsa_key),
    )
    with_folder = ServiceAccountKeyCredentials(
        key_id=sa_creds.key_id,
        service_account_id=sa_creds.service_account_id,
        private_key=sa_creds.private_key,
        folder_id="b1gfolder",
    )
    tokens = [await auth.iam_token(c) for c in (sa_creds, other_id, rotated, with_folder, sa_creds)]
    assert tokens == [
        "t1.token-number-1",
        "t1.token-number-2",
        "t1.token-number-3",
        "t1.token-number-1",  # the folder is not part of the key
        "t1.token-number-1",
    ]
    assert iam.exchanges == 3


async def test_twenty_concurrent_callers_share_one_exchange(
    auth: SpeechAuthenticator, iam: FakeIam, sa_creds: ServiceAccountKeyCredentials
) -> None:
    iam.delay = 0.1
    headers = await asyncio.gather(*(auth.authorization(sa_creds) for _ in range(20)))
    assert headers == ["Bearer t1.token-number-1"] * 20
    assert iam.exchanges == 1


async def test_concurrent_callers_share_one_failure_and_it_is_not_cached(
    auth: SpeechAuthenticator, iam: FakeIam, sa_creds: ServiceAccountKeyCredentials
) -> None:
    iam.delay = 0.1

    async def unavailable(_n: int, _jwt: str) -> web.StreamResponse:
        return web.json_response({"code": 14, "message": "try later"}, status=503)

    iam.reply = unavailable
    results = await asyncio.gather(*(auth.iam_token(sa_creds) for _ in range(20)), return_exceptions=True)
    assert iam.exchanges == 1
    assert all(isinstance(r, SpeechApiError) and r.transient and r.http_status == 503 for r in results)

    iam.reply = None
    iam.delay = 0.0
    assert await auth.iam_token(sa_creds) == "t1.token-number-2"


async def test_a_cancelled_caller_does_not_cancel_the_shared_exchange(
    auth: SpeechAuthenticator, iam: FakeIam, sa_creds: ServiceAccountKeyCredentials
) -> None:
    iam.delay = 0.2
    first = asyncio.create_task(auth.iam_token(sa_creds))
    second = asyncio.create_task(auth.iam_token(sa_creds))
    await asyncio.sleep(0.05)
    first.cancel()
    assert await second == "t1.token-number-1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert iam.exchanges == 1


async def test_invalidate_drops_only_the_refused_token(
    auth: SpeechAuthenticator, iam: FakeIam, sa_creds: ServiceAccountKeyCredentials
) -> None:
    assert await auth.authorization(sa_creds) == "Bearer t1.token-number-1"
    # Someone else's stale header: the cache holds a different token, so nothing is dropped.
    assert not auth.invalidate(sa_creds, "Bearer t1.some-older-token")
    assert await auth.authorization(sa_creds) == "Bearer t1.token-number-1"
    assert auth.invalidate(sa_creds, "Bearer t1.token-number-1")
    assert not auth.invalidate(sa_creds)  # nothing left to drop
    assert await auth.authorization(sa_creds) == "Bearer t1.token-number-2"
    assert iam.exchanges == 2
    assert not auth.invalidate(ApiKeyCredentials(api_key="AQVNsecret"))


async def test_transient_refresh_failure_keeps_using_a_still_valid_token(
    auth: SpeechAuthenticator, iam: FakeIam, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    await auth.iam_token(sa_creds)
    clock.now = START + HOUR + 1  # due for refresh, far from expiry

    async def unavailable(_n: int, _jwt: str) -> web.StreamResponse:
        return web.Response(status=503, text="down")

    iam.reply = unavailable
    assert await auth.iam_token(sa_creds) == "t1.token-number-1"
    assert iam.exchanges == 2

    clock.now = START + 12 * HOUR - 10  # too close to expiry to keep using it
    with pytest.raises(SpeechApiError) as info:
        await auth.iam_token(sa_creds)
    assert info.value.transient


async def test_permanent_refresh_failure_is_raised_even_with_a_valid_token(
    auth: SpeechAuthenticator, iam: FakeIam, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    await auth.iam_token(sa_creds)
    clock.now = START + HOUR + 1

    async def revoked(_n: int, _jwt: str) -> web.StreamResponse:
        return web.json_response({"code": 16, "message": "key revoked"}, status=401)

    iam.reply = revoked
    with pytest.raises(SpeechApiError) as info:
        await auth.iam_token(sa_creds)
    assert info.value.http_status == 401
    assert not info.value.transient


@pytest.mark.parametrize(
    "case",
    [
        (400, 3, False, "InvalidArgument"),
        (401, 16, False, "Unauthenticated"),
        (403, 7, False, "PermissionDenied"),
        (429, 8, True, "ResourceExhausted"),
        (500, 13, True, "Internal"),
        (503, 14, True, "Unavailable"),
        (504, 4, True, "DeadlineExceeded"),
    ],
)
async def test_exchange_failures_are_classified(
    auth: SpeechAuthenticator,
    iam: FakeIam,
    sa_creds: ServiceAccountKeyCredentials,
    case: tuple[int, int, bool, str],
) -> None:
    status, code, transient, reason = case

    async def fail(_n: int, received_jwt: str) -> web.StreamResponse:
        # A server that echoes the JWT back: it must not reach the message.
        return web.json_response(
            {"code": code, "message": f"refused {received_jwt}", "details": []},
            status=status,
            headers={"Retry-After": "7"},
        )

    iam.reply = fail
    with pytest.raises(SpeechApiError) as info:
        await auth.authorization(sa_creds)
    error = info.value
    assert error.http_status == status
    assert error.grpc_code == code
    assert error.transient is transient
    assert error.reason == reason
    assert error.retry_after == 7.0
    assert "refused" in str(error)
    assert iam.jwts[0] not in str(error)
    assert iam.jwts[0].split(".")[1] not in str(error)


async def test_exchange_failure_with_a_non_json_body(
    auth: SpeechAuthenticator, iam: FakeIam, sa_creds: ServiceAccountKeyCredentials
) -> None:
    async def html(_n: int, _jwt: str) -> web.StreamResponse:
        return web.Response(status=502, text="<html>bad gateway</html>", content_type="text/html")

    iam.reply = html
    with pytest.raises(SpeechApiError) as info:
        await auth.iam_token(sa_creds)
    assert info.value.http_status == 502
    assert info.value.transient
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"expiresAt": "2030-01-01T00:00:00Z"}', b'{"iamToken": ""}', b"[1, 2]"],
)
async def test_malformed_exchange_answers(
    auth: SpeechAuthenticator, iam: FakeIam, sa_creds: ServiceAccountKeyCredentials, body: bytes
) -> None:
    async def odd(_n: int, _jwt: str) -> web.StreamResponse:
        return web.Response(status=200, body=body, content_type="application/json")

    iam.reply = odd
    with pytest.raises(MalformedResponseError) as info:
        await auth.iam_token(sa_creds)
    assert info.value.transient
    assert info.value.reason == "MalformedResponse"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connection_failure_is_transient(
    session: aiohttp.ClientSession, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    auth = SpeechAuthenticator(f"http://127.0.0.1:{_closed_port()}/iam/v1/tokens", session, clock=clock)
    with pytest.raises(SpeechApiError) as info:
        await auth.iam_token(sa_creds)
    assert info.value.http_status is None
    assert info.value.transient
    assert info.value.reason == "SpeechApiUnreachable"
    assert info.value.__cause__ is None


async def test_timeout_is_transient(
    iam: FakeIam, session: aiohttp.ClientSession, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    iam.delay = 0.3
    auth = SpeechAuthenticator(iam.url, session, timeout=0.05, clock=clock)
    with pytest.raises(SpeechApiError, match="no answer within") as info:
        await auth.iam_token(sa_creds)
    assert info.value.transient
    assert info.value.http_status is None


async def test_session_may_be_given_as_a_factory(
    iam: FakeIam, session: aiohttp.ClientSession, clock: FakeClock, sa_creds: ServiceAccountKeyCredentials
) -> None:
    calls: list[int] = []

    def factory() -> aiohttp.ClientSession:
        calls.append(1)
        return session

    auth = SpeechAuthenticator(iam.url, factory, clock=clock)
    assert await auth.authorization(ApiKeyCredentials(api_key="AQVNsecret")) == "Api-Key AQVNsecret"
    assert calls == []  # not needed for static credentials
    assert await auth.iam_token(sa_creds) == "t1.token-number-1"
    assert calls == [1]
