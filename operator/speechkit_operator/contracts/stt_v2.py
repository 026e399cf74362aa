"""SpeechKit's async recognition API v2 (``longRunningRecognize``) and the v1 sync API's parameters.

Request::

    {"config": {"specification": {"languageCode", "model", "profanityFilter", "literature_text",
                                  "audioEncoding", "sampleRateHertz", "audioChannelCount", "rawResults"},
                "folderId"?},
     "audio": {"uri": "<object URL>"} | {"content": "<base64>"}}

Result (an Operation's ``response`` once done)::

    {"@type": "...LongRunningRecognitionResponse",
     "chunks": [{"alternatives": [{"words": [{"startTime": "0.879999999s", "endTime": "1.159999992s",
                                              "word": "when", "confidence": 1}, ...],
                                   "text": "when writing ...", "confidence": 1}],
                 "channelTag": "1"}, ...]}

``chunks`` is missing when nothing was recognised; times are protobuf Durations; ``channelTag`` is a
string; confidences are always 1. The one addition of this project's service: for ``languageCode:
auto`` (which v3 defines and v2 does not) an alternative carries ``languages`` in v3's shape,
``[{"languageCode": "en-US", "probability": 0.98}]``; v2 clients ignore it.

The models read leniently, as a client must: a missing ``channelTag`` is channel ``"1"``, a number
becomes its string, a missing ``text`` is built from the words by the reader; a wrong type raises
:class:`pydantic.ValidationError` (a ValueError).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from speechkit_operator.contracts.duration import format_duration, parse_duration

#: ``POST {stt_url}/speech/stt/v2/longRunningRecognize``.
SUBMIT_PATH: Final = "/speech/stt/v2/longRunningRecognize"
#: ``POST {stt_url}/speech/v1/stt:recognize?lang=…&format=…`` (synchronous, short audio).
SYNC_PATH: Final = "/speech/v1/stt:recognize"
#: The ``@type`` of a v2 async recognition result.
RESPONSE_TYPE: Final = "type.googleapis.com/yandex.cloud.ai.stt.v2.LongRunningRecognitionResponse"
#: ``description`` of recognition operations.
OPERATION_DESCRIPTION: Final = "STT async recognition"


class AudioEncoding(enum.StrEnum):
    """The encodings the async API v2 accepts (``config.specification.audioEncoding``)."""

    LINEAR16_PCM = "LINEAR16_PCM"
    OGG_OPUS = "OGG_OPUS"
    MP3 = "MP3"


#: Sample rates the API accepts for LINEAR16_PCM.
SUPPORTED_PCM_RATES: Final = (8000, 16000, 48000)
DEFAULT_LANGUAGE: Final = "ru-RU"
DEFAULT_MODEL: Final = "general"
DEFAULT_ENCODING: Final = AudioEncoding.OGG_OPUS
DEFAULT_SAMPLE_RATE: Final = 48000
#: ``audioChannelCount`` (LINEAR16_PCM only) is at most this.
MAX_CHANNELS: Final = 8
#: The channel of chunks that carry no ``channelTag`` (mono audio).
DEFAULT_CHANNEL: Final = "1"
#: ``format`` of the sync API -> encoding.
SYNC_FORMATS: Final[Mapping[str, AudioEncoding]] = {
    "lpcm": AudioEncoding.LINEAR16_PCM,
    "oggopus": AudioEncoding.OGG_OPUS,
    "mp3": AudioEncoding.MP3,
}


# --- The request --------------------------------------------------------------------------------------


class RecognitionSpec(BaseModel):
    """``config.specification``: SpeechKit's defaults filled in. ``literature_text`` keeps its snake-case
    wire name, as SpeechKit documents it."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    language_code: str = Field(default=DEFAULT_LANGUAGE, alias="languageCode")
    model: str = DEFAULT_MODEL
    profanity_filter: bool = Field(default=False, alias="profanityFilter")
    literature_text: bool = Field(default=False, alias="literature_text")
    raw_results: bool = Field(default=False, alias="rawResults")
    audio_encoding: AudioEncoding = Field(default=DEFAULT_ENCODING, alias="audioEncoding")
    sample_rate_hertz: int = Field(default=DEFAULT_SAMPLE_RATE, alias="sampleRateHertz")
    audio_channel_count: int = Field(default=1, alias="audioChannelCount")

    @property
    def decoder_sample_rate(self) -> int | None:
        """The rate to tell a decoder: only headerless PCM needs one."""
        return self.sample_rate_hertz if self.audio_encoding is AudioEncoding.LINEAR16_PCM else None

    @property
    def decoder_channel_count(self) -> int | None:
        return self.audio_channel_count if self.audio_encoding is AudioEncoding.LINEAR16_PCM else None

    def to_wire(self) -> dict[str, Any]:
        """The specification as a client sends it: the rate and the channel count only for LINEAR16_PCM
        (the other encodings carry their own)."""
        body = self.model_dump(by_alias=True, mode="json")
        if self.audio_encoding is not AudioEncoding.LINEAR16_PCM:
            del body["sampleRateHertz"], body["audioChannelCount"]
        return body


def long_running_request(spec: RecognitionSpec, *, uri: str, folder_id: str | None = None) -> dict[str, Any]:
    """The JSON body of ``longRunningRecognize`` for audio at ``uri``."""
    config: dict[str, Any] = {"specification": spec.to_wire()}
    if folder_id:
        config["folderId"] = folder_id
    return {"config": config, "audio": {"uri": uri}}


# --- The result ---------------------------------------------------------------------------------------


def _duration(value: Any) -> float:
    return parse_duration(value)


#: A protobuf Duration on the wire, seconds here.
Duration = Annotated[
    float, BeforeValidator(_duration), PlainSerializer(lambda seconds: format_duration(max(seconds, 0.0)))
]


def _channel_tag(value: object) -> str:
    if value is None or value == "":
        return DEFAULT_CHANNEL
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"channelTag is not a string: {type(value).__name__}")


ChannelTag = Annotated[str, BeforeValidator(_channel_tag)]


def _absent_as_empty(value: object) -> object:
    return [] if value is None else value


class WordInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    start_time: Duration = Field(default=0.0, alias="startTime")
    #: None when the answer leaves it out: the reader takes the start.
    end_time: Duration | None = Field(default=None, alias="endTime")
    word: str = ""
    confidence: float = 1


class DetectedLanguage(BaseModel):
    """v3's ``languages[]`` entry, which this project's service adds for ``languageCode: auto``."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    language_code: str = Field(alias="languageCode")
    probability: float | None = None


class SpeechRecognitionAlternative(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    words: Annotated[list[WordInfo], BeforeValidator(_absent_as_empty)] = Field(default_factory=list)
    text: str | None = None
    confidence: float = 1
    languages: list[DetectedLanguage] | None = None


class SpeechRecognitionChunk(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    alternatives: Annotated[list[SpeechRecognitionAlternative], BeforeValidator(_absent_as_empty)] = Field(
        default_factory=list
    )
    channel_tag: ChannelTag = Field(default=DEFAULT_CHANNEL, alias="channelTag")


class LongRunningRecognitionResponse(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    type: str = Field(default=RESPONSE_TYPE, alias="@type")
    chunks: Annotated[list[SpeechRecognitionChunk], BeforeValidator(_absent_as_empty)] = Field(
        default_factory=list
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON object; no ``chunks`` key when nothing was recognised, no ``languages`` unless set."""
        body = self.model_dump(by_alias=True, mode="json", exclude_none=True)
        if not self.chunks:
            body.pop("chunks", None)
        return body
