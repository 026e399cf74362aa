"""What the operator asks a speech API for and what it learns of the operation: the values that
:class:`~speechkit_operator.clients.speech.base.SpeechClient` takes and returns and the logic judges
(:func:`~speechkit_operator.logic.transitions.judge_operation`), whatever the API version."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.recognition import Transcript


@dataclass(frozen=True)
class RecognitionRequest:
    audio_uri: str  # may be presigned: never log it
    language_code: str
    model: str
    audio_encoding: AudioEncoding
    sample_rate_hertz: int | None = None  # LINEAR16_PCM only
    audio_channel_count: int | None = None  # LINEAR16_PCM only
    #: The object is a WAV file (LINEAR16_PCM behind a RIFF header): v3 takes it as a WAV container.
    wav_container: bool = False
    profanity_filter: bool = False
    literature_text: bool = False
    raw_results: bool = False  # v2 only
    #: API v3 only: normalize the text, leave phone numbers unformatted, the languages to expect
    #: (``"whitelist"``) or rule out (``"blacklist"``), label speakers. None: the API's default.
    text_normalization: bool | None = None
    phone_formatting: bool | None = None
    language_restriction: tuple[str, tuple[str, ...]] | None = None
    speaker_labeling: bool = False


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
    #: API calls this look took (v3: the status, then the results once done).
    calls: int = 1
