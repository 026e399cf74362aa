"""The backend setting: one client for SpeechKit and the self-hosted service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from pydantic import ValidationError

from speechkit_operator.clients.speech.v2 import SpeechKitV2Client
from speechkit_operator.config import Settings
from speechkit_operator.context import build_context
from speechkit_operator.models.credentials import AnonymousCredentials


def test_cloud_backend_uses_the_speechkit_hosts() -> None:
    settings = Settings()
    assert settings.submit_base_url == "https://transcribe.api.cloud.yandex.net"
    assert settings.operations_base_url == "https://operation.api.cloud.yandex.net"


def test_self_hosted_backend_uses_one_address_for_both() -> None:
    settings = Settings(backend="self-hosted", self_hosted_url="http://recognizer.speech:8088/")
    assert settings.submit_base_url == "http://recognizer.speech:8088"
    assert settings.operations_base_url == "http://recognizer.speech:8088"


def test_self_hosted_backend_without_an_address_is_refused() -> None:
    with pytest.raises(ValidationError, match="SELF_HOSTED_URL"):
        Settings(backend="self-hosted")


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(backend="on-prem")


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    async def operation(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"id": request.match_info["id"], "done": False})

    app = web.Application()
    app.router.add_get("/operations/{id}", operation)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_anonymous_credentials_send_no_authorization_header(
    recorder: tuple[str, list[dict[str, str]]],
) -> None:
    url, seen = recorder
    settings = Settings(backend="self-hosted", self_hosted_url=url)
    context = build_context(settings)
    try:
        assert isinstance(context.speech, SpeechKitV2Client)
        operation = await context.speech.get_operation("op1", AnonymousCredentials())
    finally:
        await context.close()
    assert operation.id == "op1" and not operation.done
    assert len(seen) == 1
    assert "Authorization" not in seen[0]
