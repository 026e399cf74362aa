"""The interface every speech API client implements, and the value types it speaks.

The operator depends only on this module. The v2 REST client implements it today; a v3 client
(``recognizeFileAsync``/``getRecognition``) can implement it beside v2 without touching handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.recognition import Transcript


@dataclass(frozen=True)
class ApiKeyCredentials:
    api_key: str
    folder_id: str | None = None


@dataclass(frozen=True)
class IamTokenCredentials:
    iam_token: str
    folder_id: str | None = None


@dataclass(frozen=True)
class ServiceAccountKeyCredentials:
    """An authorized key of a service account (``authorized-key.json``)."""

    key_id: str
    service_account_id: str
    private_key: str  # PEM
    folder_id: str | None = None


@dataclass(frozen=True)
class AnonymousCredentials:
    """No ``Authorization`` header: for a self-hosted service that runs without API keys."""

    folder_id: str | None = None


Credentials = ApiKeyCredentials | IamTokenCredentials | ServiceAccountKeyCredentials | AnonymousCredentials


@dataclass(frozen=True)
class RecognitionRequest:
    audio_uri: str  # may be presigned: never log it
    language_code: str
    model: str
    audio_encoding: AudioEncoding
    sample_rate_hertz: int | None = None  # LINEAR16_PCM only
    audio_channel_count: int | None = None  # LINEAR16_PCM only
    profanity_filter: bool = False
    literature_text: bool = False
    raw_results: bool = False


@dataclass(frozen=True)
class OperationError:
    code: int  # gRPC status code
    message: str


@dataclass(frozen=True)
class OperationState:
    """One look at a long-running operation."""

    id: str
    done: bool
    error: OperationError | None = None
    response: dict[str, Any] | None = None  # the API's response object exactly as returned
    transcript: Transcript | None = None  # the response, parsed
    #: The operation's ``modifiedAt`` (RFC 3339): when done, about when it finished.
    modified_at: str | None = None


class SpeechClient(Protocol):
    """Submit recognition and look at operations.

    Implementations retry transient failures themselves and raise
    :class:`~speechkit_operator.clients.speech.errors.SpeechApiError` when they give up.
    """

    async def submit(self, request: RecognitionRequest, credentials: Credentials) -> OperationState: ...

    async def get_operation(self, operation_id: str, credentials: Credentials) -> OperationState: ...

    async def cancel(self, operation_id: str, credentials: Credentials) -> None:
        """Ask for a running operation to be cancelled; best effort, not retried."""
        ...

    async def close(self) -> None: ...
