"""The SpeechKit asynchronous recognition API v2 over REST, with aiohttp.

- Submit: ``POST {stt_url}/speech/stt/v2/longRunningRecognize``.
- Look: ``GET {operation_url}/operations/{id}``; the result is in the operation once it is done.

Retries, TLS, proxies, authorization and what messages never hold: see :mod:`.rest`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import aiohttp

from speechkit_operator.clients.speech.auth import json_object
from speechkit_operator.clients.speech.errors import MalformedResponseError, scrub
from speechkit_operator.clients.speech.rest import (
    SpeechKitRestClient,
    credential_secrets,
    is_retried_submit,
    settings_options,
    uri_secrets,
)
from speechkit_operator.clients.speech.v2_parsing import parse_v2_response
from speechkit_operator.config import Settings
from speechkit_operator.contracts.operation import Operation
from speechkit_operator.contracts.stt_v2 import (
    SUBMIT_PATH,
    AudioEncoding,
    RecognitionSpec,
    long_running_request,
)
from speechkit_operator.models.credentials import Credentials
from speechkit_operator.models.operation import OperationError, OperationState, RecognitionRequest


def build_submit_body(request: RecognitionRequest, folder_id: str | None) -> dict[str, Any]:
    """The JSON body of ``longRunningRecognize`` for ``request``."""
    pcm = request.audio_encoding == AudioEncoding.LINEAR16_PCM
    spec = RecognitionSpec(
        language_code=request.language_code,
        model=request.model,
        profanity_filter=request.profanity_filter,
        literature_text=request.literature_text,
        raw_results=request.raw_results,
        audio_encoding=AudioEncoding(request.audio_encoding),
    )
    if pcm and request.sample_rate_hertz is not None:
        spec = spec.model_copy(update={"sample_rate_hertz": request.sample_rate_hertz})
    if pcm and request.audio_channel_count is not None:
        spec = spec.model_copy(update={"audio_channel_count": request.audio_channel_count})
    body = long_running_request(spec, uri=request.audio_uri, folder_id=folder_id)
    specification = body["config"]["specification"]
    # Fields the request leaves to the API's defaults are not sent.
    if pcm and request.sample_rate_hertz is None:
        del specification["sampleRateHertz"]
    if pcm and request.audio_channel_count is None:
        del specification["audioChannelCount"]
    return body


def parse_operation(
    body: dict[str, Any], *, secrets: Iterable[str] = (), v2_result: bool = True
) -> OperationState:
    """An :class:`OperationState` from an Operation object; the transcript is parsed once done.

    ``v2_result``: a done operation must carry a v2 result (false for API v3, whose results are read
    apart)."""
    secrets = tuple(secrets)
    op_id = body.get("id")
    if not isinstance(op_id, str) or not op_id:
        raise MalformedResponseError("the operation has no id")
    for name in ("error", "response"):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise MalformedResponseError(f"operation {op_id}: {name} is not an object")
    try:
        operation = Operation.model_validate(body)
    except ValueError:
        raise MalformedResponseError(f"operation {op_id}: not an Operation") from None
    error = None
    if operation.error is not None:
        error = OperationError(code=operation.error.code, message=scrub(operation.error.message, secrets))
    if v2_result and operation.done and operation.error is None and operation.response is None:
        # A v2 operation that is done has a result (without chunks when nothing was recognised); one
        # without is an API v3 operation, whose results only getRecognition gives.
        raise MalformedResponseError(
            f"operation {op_id} is done but carries no v2 result: it is an API v3 operation (adopt it "
            "with a job of recognition.api v3)"
        )
    transcript = None
    if operation.done and operation.response is not None:
        try:
            transcript = parse_v2_response(operation.response)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise MalformedResponseError(
                f"operation {op_id}: the recognition result has an unknown shape", body=body
            ) from None
    return OperationState(
        id=op_id,
        done=operation.done,
        error=error,
        response=operation.response,
        transcript=transcript,
        modified_at=operation.modified_at,
    )


class SpeechKitV2Client(SpeechKitRestClient):
    """:class:`~speechkit_operator.clients.speech.base.SpeechClient` for the v2 async REST API; the
    keyword arguments are :class:`~.rest.SpeechKitRestClient`'s."""

    def __init__(self, stt_url: str, operation_url: str, iam_token_url: str, **kwargs: Any) -> None:
        super().__init__(operation_url, iam_token_url, **kwargs)
        self._submit_url = str(stt_url).rstrip("/") + SUBMIT_PATH

    @classmethod
    def from_settings(
        cls, settings: Settings, *, session: aiohttp.ClientSession | None = None
    ) -> SpeechKitV2Client:
        """The client for the configured backend, CA bundle, timeout and retries."""
        return cls(
            settings.submit_base_url,
            settings.operations_base_url,
            str(settings.iam_token_url),
            session=session,
            **settings_options(settings),
        )

    async def submit(self, request: RecognitionRequest, credentials: Credentials) -> OperationState:
        body = build_submit_body(request, credentials.folder_id)
        secrets = uri_secrets(request.audio_uri) + credential_secrets(credentials)
        raw = await self._call(
            "SpeechKit submit",
            "POST",
            self._submit_url,
            credentials,
            json_body=body,
            secrets=secrets,
            retried=self._unless_throttled(is_retried_submit),
        )
        return parse_operation(json_object(raw, "SpeechKit submit"), secrets=secrets)

    async def get_operation(self, operation_id: str, credentials: Credentials) -> OperationState:
        body = await self.operation_body(operation_id, credentials)
        # An error message may echo what the API was given: never let a credential through.
        return parse_operation(body, secrets=credential_secrets(credentials))
