"""The SpeechKit asynchronous recognition API v3 over REST, with aiohttp.

- Submit: ``POST {stt_v3_url}/stt/v3/recognizeFileAsync`` with the audio by ``uri``.
- Look: ``GET {operation_url}/operations/{id}`` (the Operation API, as for v2); once it is done without an
  error, the results: ``GET {stt_v3_url}/stt/v3/getRecognition?operation_id=…``, a stream of JSON results
  read as it arrives (:class:`~speechkit_operator.contracts.stt_v3.ResultStreamDecoder`), at most
  :data:`MAX_RESULTS_BYTES`. A stream that breaks off is read again from its start, within the call's
  retries.
- With an IAM token (given, or exchanged for a service account's key) and a folder, the ``x-folder-id``
  header names the folder, as v3 wants.

The operation's ``response`` is then ``{"results": [<each {"result": …} as it came>]}``, which the json
output keeps; the transcript is parsed from the same results.

Retries, TLS, proxies, authorization and what messages never hold: see :mod:`.rest`.
"""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import quote

import aiohttp

from speechkit_operator.clients.speech.auth import json_object
from speechkit_operator.clients.speech.errors import (
    MalformedResponseError,
    OperationNotFoundError,
    SpeechApiError,
    scrub,
)
from speechkit_operator.clients.speech.rest import (
    SpeechKitRestClient,
    credential_secrets,
    is_retried,
    is_retried_submit,
    settings_options,
    uri_secrets,
)
from speechkit_operator.clients.speech.v2 import parse_operation
from speechkit_operator.clients.speech.v3_parsing import parse_v3_results
from speechkit_operator.config import Settings
from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.contracts.stt_v3 import (
    FOLDER_HEADER,
    GET_RECOGNITION_PATH,
    OPERATION_ID_PARAMETER,
    RECOGNIZE_FILE_PATH,
    AudioFormatOptions,
    ContainerAudio,
    ContainerAudioType,
    LanguageRestrictionOptions,
    LanguageRestrictionType,
    PhoneFormattingMode,
    RawAudio,
    RecognitionModelOptions,
    RecognizeFileRequest,
    ResultStreamDecoder,
    ResultStreamError,
    SpeakerLabeling,
    SpeakerLabelingOptions,
    StreamingResponse,
    TextNormalization,
    TextNormalizationOptions,
    parse_result,
)
from speechkit_operator.models.credentials import (
    Credentials,
    IamTokenCredentials,
    ServiceAccountKeyCredentials,
)
from speechkit_operator.models.operation import OperationState, RecognitionRequest

#: The largest getRecognition answer read (4 hours of speech give a few MiB).
MAX_RESULTS_BYTES: Final = 64 * 1024 * 1024

_CONTAINERS: Final = {
    AudioEncoding.OGG_OPUS: ContainerAudioType.OGG_OPUS,
    AudioEncoding.MP3: ContainerAudioType.MP3,
}


def build_recognize_file_body(request: RecognitionRequest) -> dict[str, Any]:
    """The JSON body of ``recognizeFileAsync`` for ``request``.

    A WAV object goes as a WAV container (SpeechKit reads its header); headerless LINEAR16_PCM as raw
    audio with its rate and channels; Ogg Opus and MP3 as their containers. A language code (not
    ``auto``) is a whitelist of that one language; ``language_restriction`` replaces it.
    """
    encoding = AudioEncoding(request.audio_encoding)
    if request.wav_container:
        audio_format = AudioFormatOptions(
            container_audio=ContainerAudio(container_audio_type=ContainerAudioType.WAV)
        )
    elif encoding is AudioEncoding.LINEAR16_PCM:
        audio_format = AudioFormatOptions(
            raw_audio=RawAudio(
                sample_rate_hertz=request.sample_rate_hertz or 48000,
                audio_channel_count=request.audio_channel_count or 1,
            )
        )
    else:
        audio_format = AudioFormatOptions(
            container_audio=ContainerAudio(container_audio_type=_CONTAINERS[encoding])
        )
    restriction = None
    if request.language_restriction is not None:
        kind, languages = request.language_restriction
        restriction = LanguageRestrictionOptions(
            restriction_type=LanguageRestrictionType(kind.upper()), language_code=list(languages)
        )
    elif request.language_code.strip().lower() != "auto":
        restriction = LanguageRestrictionOptions(
            restriction_type=LanguageRestrictionType.WHITELIST, language_code=[request.language_code]
        )
    normalization = TextNormalizationOptions(
        text_normalization=TextNormalization.ENABLED
        if request.text_normalization
        else TextNormalization.DISABLED,
        profanity_filter=request.profanity_filter,
        literature_text=request.literature_text,
        phone_formatting_mode=PhoneFormattingMode.DISABLED if request.phone_formatting is False else None,
    )
    body = RecognizeFileRequest(
        uri=request.audio_uri,
        recognition_model=RecognitionModelOptions(
            model=request.model,
            audio_format=audio_format,
            text_normalization=normalization,
            language_restriction=restriction,
        ),
        speaker_labeling=(
            SpeakerLabelingOptions(speaker_labeling=SpeakerLabeling.ENABLED)
            if request.speaker_labeling
            else None
        ),
    )
    return body.to_wire()


def is_v2_result(response: object) -> bool:
    """Whether an operation's ``response`` is a v2 ``LongRunningRecognitionResponse`` (v3's is empty)."""
    if not isinstance(response, dict):
        return False
    kind = response.get("@type")
    return "chunks" in response or (
        isinstance(kind, str) and kind.endswith(".LongRunningRecognitionResponse")
    )


def folder_headers(credentials: Credentials) -> dict[str, str]:
    """``x-folder-id`` for IAM tokens with a folder; API keys carry their folder themselves."""
    if isinstance(credentials, IamTokenCredentials | ServiceAccountKeyCredentials) and credentials.folder_id:
        return {FOLDER_HEADER: credentials.folder_id}
    return {}


def _with_folder_hint(exc: SpeechApiError, credentials: Credentials) -> SpeechApiError:
    """A 403 for IAM credentials without a folder says what v3 wants."""
    iam = isinstance(credentials, IamTokenCredentials | ServiceAccountKeyCredentials)
    if exc.http_status != 403 or not iam or credentials.folder_id:
        return exc
    hint = (
        f"{exc.message} (API v3 with an IAM token needs the folder in the x-folder-id header: add "
        "folder-id to the credentials Secret)"
    )
    return SpeechApiError(
        hint, http_status=exc.http_status, grpc_code=exc.grpc_code, retry_after=exc.retry_after
    )


class SpeechKitV3Client(SpeechKitRestClient):
    """:class:`~speechkit_operator.clients.speech.base.SpeechClient` for the v3 async REST API; the
    keyword arguments are :class:`~.rest.SpeechKitRestClient`'s."""

    def __init__(
        self,
        stt_url: str,
        operation_url: str,
        iam_token_url: str,
        *,
        max_results_bytes: int = MAX_RESULTS_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(operation_url, iam_token_url, **kwargs)
        base = str(stt_url).rstrip("/")
        self._submit_url = base + RECOGNIZE_FILE_PATH
        self._results_url = base + GET_RECOGNITION_PATH
        self._max_results_bytes = max_results_bytes

    @classmethod
    def from_settings(
        cls, settings: Settings, *, session: aiohttp.ClientSession | None = None
    ) -> SpeechKitV3Client:
        """The client for the configured backend, CA bundle, timeout and retries."""
        return cls(
            settings.v3_base_url,
            settings.operations_base_url,
            str(settings.iam_token_url),
            session=session,
            **settings_options(settings),
        )

    async def submit(self, request: RecognitionRequest, credentials: Credentials) -> OperationState:
        secrets = uri_secrets(request.audio_uri) + credential_secrets(credentials)
        try:
            raw = await self._call(
                "SpeechKit v3 submit",
                "POST",
                self._submit_url,
                credentials,
                json_body=build_recognize_file_body(request),
                secrets=secrets,
                headers=folder_headers(credentials),
                retried=self._unless_throttled(is_retried_submit),
            )
        except SpeechApiError as exc:
            raise _with_folder_hint(exc, credentials) from None
        operation = parse_operation(json_object(raw, "SpeechKit v3 submit"), secrets=secrets, v2_result=False)
        return OperationState(
            id=operation.id, done=False, error=operation.error, modified_at=operation.modified_at
        )

    async def get_operation(self, operation_id: str, credentials: Credentials) -> OperationState:
        """The operation; once it is done without an error, with its results and their transcript.

        Reads a v2 operation too (its result is in the operation): an adopted operation, such as one the
        cron script started, is read whichever API the job names."""
        body = await self.operation_body(operation_id, credentials)
        secrets = credential_secrets(credentials)
        if is_v2_result(body.get("response")):
            return parse_operation(body, secrets=secrets)
        # v3's response is empty (google.protobuf.Empty): never parse it as a v2 result.
        operation = parse_operation({**body, "response": None}, secrets=secrets, v2_result=False)
        if not operation.done or operation.error is not None:
            return operation
        raw_results, results = await self.results(operation_id, credentials)
        return OperationState(
            id=operation.id,
            done=True,
            response={"results": raw_results},
            transcript=parse_v3_results(results),
            modified_at=operation.modified_at,
            calls=2,
        )

    async def results(
        self, operation_id: str, credentials: Credentials
    ) -> tuple[list[dict[str, Any]], list[StreamingResponse]]:
        """Every result of a finished operation: as they came, and parsed. An answer that is not a stream
        of results is a :class:`MalformedResponseError`; a 404 an :class:`OperationNotFoundError` (the
        results expired or were deleted)."""
        what = f"SpeechKit v3 results of {scrub(operation_id)}"
        url = f"{self._results_url}?{OPERATION_ID_PARAMETER}={quote(operation_id, safe='')}"
        raw: list[dict[str, Any]] = []
        decoder = ResultStreamDecoder()

        def start() -> None:
            nonlocal decoder
            raw.clear()
            decoder = ResultStreamDecoder()

        def chunk(data: bytes) -> None:
            raw.extend(decoder.feed(data))

        try:
            await self._call(
                what,
                "GET",
                url,
                credentials,
                not_found=OperationNotFoundError,
                retried=self._unless_throttled(is_retried),
                headers=folder_headers(credentials),
                on_chunk=chunk,
                start_body=start,
                max_body_bytes=self._max_results_bytes,
            )
            decoder.close()
            return raw, [parse_result(item) for item in raw]
        except ResultStreamError as exc:
            if exc.code is None:
                raise MalformedResponseError(f"{what}: not a stream of recognition results ({exc})") from None
            # The stream ended in an error object: the API's own verdict, as if it had answered with it.
            error_class = OperationNotFoundError if exc.code is GrpcCode.NOT_FOUND else SpeechApiError
            raise error_class(
                f"{what} failed: {scrub(str(exc), credential_secrets(credentials))[:300]}",
                http_status=exc.code.http_status,
                grpc_code=int(exc.code),
            ) from None
        except ValueError as exc:  # a result of the wrong shape
            detail = scrub(
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__, credential_secrets(credentials)
            )
            raise MalformedResponseError(
                f"{what}: not a stream of recognition results ({detail[:300]})"
            ) from None
