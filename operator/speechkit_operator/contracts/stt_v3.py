"""SpeechKit's async recognition API v3: ``recognizeFileAsync``, ``getRecognition``, ``deleteRecognition``.

The request (``RecognizeFileRequest``, proto3 JSON: lowerCamel names, the proto's snake_case names read
too, enums by name, int64 as strings)::

    {"uri": "https://storage.yandexcloud.net/<bucket>/<key>"  |  "content": "<base64>",
     "recognitionModel": {
         "model": "general",
         "audioFormat": {"containerAudio": {"containerAudioType": "WAV" | "OGG_OPUS" | "MP3"}
                         | "rawAudio": {"audioEncoding": "LINEAR16_PCM", "sampleRateHertz": "16000",
                                        "audioChannelCount": "1"}},
         "textNormalization": {"textNormalization": "TEXT_NORMALIZATION_ENABLED",
                               "profanityFilter": false, "literatureText": false,
                               "phoneFormattingMode": "PHONE_FORMATTING_MODE_DISABLED"},
         "languageRestriction": {"restrictionType": "WHITELIST" | "BLACKLIST", "languageCode": ["ru-RU"]}},
     "speakerLabeling": {"speakerLabeling": "SPEAKER_LABELING_ENABLED"}}

The answer is an Operation (:mod:`.operation`) whose ``response`` is empty: the results are read with
``GET /stt/v3/getRecognition?operation_id=…`` once it is done, as a stream of JSON objects
``{"result": <StreamingResponse>}`` (one per line; a tolerant reader also takes them pretty-printed or
back to back), possibly ended by ``{"error": <Status>}``. Each result has ``channelTag`` (a string,
**from "0"**; with speaker labeling on mono audio the speakers are "0" and "1"), ``audioCursors`` and one
event: ``final`` (an utterance's alternatives with word times in **milliseconds**, int64 strings),
``finalRefinement`` (its normalized text, same ``finalIndex``), ``eouUpdate``, ``partial``,
``statusCode`` or others, which a reader ignores.

Sources: the ``yandex-cloud/cloudapi`` protos ``yandex/cloud/ai/stt/v3/{stt,stt_service}.proto`` and
SpeechKit's v3 REST reference and walkthrough; ``../shared/docs/speechkit-api-facts.md``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from speechkit_operator.contracts.grpc import GrpcCode

RECOGNIZE_FILE_PATH: Final = "/stt/v3/recognizeFileAsync"
GET_RECOGNITION_PATH: Final = "/stt/v3/getRecognition"
DELETE_RECOGNITION_PATH: Final = "/stt/v3/deleteRecognition"
#: The query parameter of getRecognition and deleteRecognition.
OPERATION_ID_PARAMETER: Final = "operation_id"
#: With an IAM token, v3 wants the folder in this header.
FOLDER_HEADER: Final = "x-folder-id"
#: ``description`` of v3 recognition operations.
OPERATION_DESCRIPTION: Final = "STT v3 async recognition"
#: The recognition models of async v3.
MODELS: Final = ("general", "general:rc", "deferred-general")
#: Inline ``content`` is at most this large.
MAX_CONTENT_BYTES: Final = 60 * 1024 * 1024
#: Sample rates the API accepts for raw LINEAR16_PCM; channels at most this many.
SUPPORTED_PCM_RATES: Final = (8000, 16000, 48000)
MAX_CHANNELS: Final = 8
#: One result object larger than this is refused by :class:`ResultStreamDecoder` (a real one is a few KiB:
#: one utterance's words).
MAX_RESULT_BYTES: Final = 16 * 1024 * 1024


class ContainerAudioType(enum.StrEnum):
    WAV = "WAV"
    OGG_OPUS = "OGG_OPUS"
    MP3 = "MP3"


class RawAudioEncoding(enum.StrEnum):
    LINEAR16_PCM = "LINEAR16_PCM"


class TextNormalization(enum.StrEnum):
    ENABLED = "TEXT_NORMALIZATION_ENABLED"
    DISABLED = "TEXT_NORMALIZATION_DISABLED"


class PhoneFormattingMode(enum.StrEnum):
    """Only "disabled" exists; unspecified leaves SpeechKit's phone formatting on."""

    UNSPECIFIED = "PHONE_FORMATTING_MODE_UNSPECIFIED"
    DISABLED = "PHONE_FORMATTING_MODE_DISABLED"


class LanguageRestrictionType(enum.StrEnum):
    WHITELIST = "WHITELIST"
    BLACKLIST = "BLACKLIST"


class SpeakerLabeling(enum.StrEnum):
    ENABLED = "SPEAKER_LABELING_ENABLED"
    DISABLED = "SPEAKER_LABELING_DISABLED"


class _Wire(BaseModel):
    """proto3 JSON: lowerCamel names written, both spellings read, unknown fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


# --- The request --------------------------------------------------------------------------------------


#: An int64 field: a JSON number or a decimal string when read, a string when written.
Int64 = Annotated[int, PlainSerializer(str, return_type=str)]


class RawAudio(_Wire):
    audio_encoding: RawAudioEncoding = RawAudioEncoding.LINEAR16_PCM
    sample_rate_hertz: Int64
    audio_channel_count: Int64 = 1


class ContainerAudio(_Wire):
    container_audio_type: ContainerAudioType


class AudioFormatOptions(_Wire):
    """Exactly one of ``raw_audio`` and ``container_audio``."""

    raw_audio: RawAudio | None = None
    container_audio: ContainerAudio | None = None


class TextNormalizationOptions(_Wire):
    text_normalization: TextNormalization = TextNormalization.DISABLED
    profanity_filter: bool = False
    literature_text: bool = False
    phone_formatting_mode: PhoneFormattingMode | None = None


class LanguageRestrictionOptions(_Wire):
    restriction_type: LanguageRestrictionType = LanguageRestrictionType.WHITELIST
    language_code: list[str] = Field(default_factory=list)


class RecognitionModelOptions(_Wire):
    model: str = "general"
    audio_format: AudioFormatOptions
    text_normalization: TextNormalizationOptions | None = None
    language_restriction: LanguageRestrictionOptions | None = None


class SpeakerLabelingOptions(_Wire):
    speaker_labeling: SpeakerLabeling = SpeakerLabeling.DISABLED


class RecognizeFileRequest(_Wire):
    """Exactly one of ``uri`` and ``content`` (base64)."""

    uri: str | None = None
    content: str | None = None
    recognition_model: RecognitionModelOptions
    speaker_labeling: SpeakerLabelingOptions | None = None


# --- The results ----------------------------------------------------------------------------------------


def _probability(value: object) -> object:
    """A double the REST reference lists as a string and the examples show as a number: take both."""
    return float(value) if isinstance(value, str) else value


Probability = Annotated[float, BeforeValidator(_probability)]


class WordV3(_Wire):
    text: str = ""
    start_time_ms: Int64 = 0
    end_time_ms: Int64 = 0


class LanguageEstimation(_Wire):
    language_code: str
    probability: Probability = 0.0


class AlternativeV3(_Wire):
    words: list[WordV3] = Field(default_factory=list)
    text: str = ""
    start_time_ms: Int64 = 0
    end_time_ms: Int64 = 0
    confidence: Probability = 0.0
    languages: list[LanguageEstimation] = Field(default_factory=list)


class AlternativeUpdate(_Wire):
    alternatives: list[AlternativeV3] = Field(default_factory=list)
    channel_tag: str | None = None


class FinalRefinement(_Wire):
    final_index: Int64 = 0
    normalized_text: AlternativeUpdate | None = None


class EouUpdate(_Wire):
    time_ms: Int64 = 0


class AudioCursors(_Wire):
    received_data_ms: Int64 = 0
    reset_time_ms: Int64 = 0
    partial_time_ms: Int64 = 0
    final_time_ms: Int64 = 0
    final_index: Int64 = 0
    eou_time_ms: Int64 = 0


class StatusCode(_Wire):
    code_type: str = ""
    message: str = ""


class StreamingResponse(_Wire):
    """One result of getRecognition; exactly one event is set (others SpeechKit may add are ignored)."""

    #: None when the answer leaves them out: a reader then keeps the finals in order.
    audio_cursors: AudioCursors | None = None
    response_wall_time_ms: Int64 = 0
    channel_tag: str = "0"
    final: AlternativeUpdate | None = None
    partial: AlternativeUpdate | None = None
    final_refinement: FinalRefinement | None = None
    eou_update: EouUpdate | None = None
    status_code: StatusCode | None = None


class ResultStreamError(ValueError):
    """The stream is not a sequence of ``{"result": …}`` objects, or it ended with ``{"error": …}``
    (``code`` is then the error's gRPC code)."""

    def __init__(self, message: str, code: GrpcCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ResultStreamDecoder:
    """Reads getRecognition's answer incrementally: :meth:`feed` bytes as they arrive, get the objects
    complete so far (each ``{"result": {...}}`` as it came; :func:`parse_result` reads one); :meth:`close`
    at the end (it refuses a trailing partial object).

    Objects may be separated by newlines, other whitespace or nothing; an object larger than
    ``max_object_bytes`` is refused, so a hostile answer cannot grow the buffer without bound. Raises
    :class:`ResultStreamError` (and pydantic's ValidationError, a ValueError, for a result of the wrong
    shape).
    """

    def __init__(self, max_object_bytes: int = MAX_RESULT_BYTES) -> None:
        self._buffer = ""
        self._pending = b""
        self._max = max_object_bytes
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        text = self._decode(data)
        waiting = bool(self._buffer)
        self._buffer += text
        out: list[dict[str, Any]] = []
        if waiting and "}" not in text:
            # An object cannot have ended in this chunk: do not parse the whole buffer again.
            if len(self._buffer) > self._max:
                raise ResultStreamError(f"a result of getRecognition is larger than {self._max} bytes")
            return out
        while True:
            stripped = self._buffer.lstrip()
            if not stripped:
                self._buffer = ""
                return out
            try:
                value, end = self._decoder.raw_decode(stripped)
            except json.JSONDecodeError:
                if len(stripped) > self._max:
                    raise ResultStreamError(
                        f"a result of getRecognition is larger than {self._max} bytes"
                    ) from None
                self._buffer = stripped
                return out
            self._buffer = stripped[end:]
            out.append(_checked(value))

    def close(self) -> None:
        leftover = (self._buffer + self._pending.decode("utf-8", errors="replace")).strip()
        if leftover:
            raise ResultStreamError("the answer of getRecognition ended in the middle of a result")

    def _decode(self, data: bytes) -> str:
        """UTF-8 across chunk boundaries: an incomplete trailing sequence waits for the next chunk."""
        data = self._pending + data
        for cut in range(min(3, len(data)) + 1):
            try:
                text = data[: len(data) - cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self._pending = data[len(data) - cut :]
            return text
        raise ResultStreamError("the answer of getRecognition is not UTF-8")


def _checked(value: object) -> dict[str, Any]:
    """``value`` if it is a ``{"result": {...}}`` object; the error of an ``{"error": {...}}`` one."""
    if not isinstance(value, dict):
        raise ResultStreamError("getRecognition answered something other than a JSON object")
    if isinstance(value.get("result"), dict):
        return value
    error = value.get("error")
    if isinstance(error, dict):
        code = GrpcCode.from_wire(error.get("code"))
        message = error.get("message")
        raise ResultStreamError(
            f"getRecognition failed: {message if isinstance(message, str) else 'no message'}", code
        )
    raise ResultStreamError("getRecognition answered an object that is neither a result nor an error")


def parse_result(raw: dict[str, Any]) -> StreamingResponse:
    """The result in one ``{"result": {...}}`` object of the stream."""
    return StreamingResponse.model_validate(raw["result"])


def decode_results(body: bytes, max_object_bytes: int = MAX_RESULT_BYTES) -> Iterator[StreamingResponse]:
    """Every result in a complete getRecognition answer."""
    decoder = ResultStreamDecoder(max_object_bytes)
    for raw in decoder.feed(body):
        yield parse_result(raw)
    decoder.close()


def encode_result(result: StreamingResponse) -> bytes:
    """One result as the service writes it: ``{"result": {...}}`` and a newline."""
    return (
        json.dumps({"result": result.to_wire()}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
    )
