"""SpeechKit API v3 async recognition: the request format and the REST framing of results.

The REST gateway of ``stt.api.cloud.yandex.net`` maps the ``speechkit.stt.v3.AsyncRecognizer`` service
(``yandex/cloud/ai/stt/v3/stt_service.proto``) onto:

* ``POST /stt/v3/recognizeFileAsync`` (body: ``RecognizeFileRequest``; answer: an ``Operation``),
* ``GET /stt/v3/getRecognition?operation_id=...`` (a server stream of ``StreamingResponse``: newline
  delimited JSON objects ``{"result": {...}}``),
* ``DELETE /stt/v3/deleteRecognition?operation_id=...`` (answer: ``google.protobuf.Empty``, ``{}``).

Bodies follow the proto3 JSON mapping, like a grpc-gateway: fields may be spelled in lowerCamelCase or as
in the proto (``recognitionModel`` or ``recognition_model``), enums as their names (or numbers), int64 as
strings or numbers, bytes in base64; unknown fields are ignored; a JSON ``null`` leaves a field unset.
This module checks a request like the service does and has no dependency on the rest of the emulator.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

RECOGNIZE_PATH: Final = "/stt/v3/recognizeFileAsync"
GET_RECOGNITION_PATH: Final = "/stt/v3/getRecognition"
DELETE_RECOGNITION_PATH: Final = "/stt/v3/deleteRecognition"
#: ``description`` of v3 operations (as in the documented answers).
OPERATION_DESCRIPTION_V3: Final = "STT v3 async recognition"
#: The header that names the folder when v3 is called with an IAM token.
FOLDER_HEADER: Final = "x-folder-id"

#: ``RecognitionModelOptions.model`` values that ``AsyncRecognizer.RecognizeFile`` takes (stt.proto).
SUPPORTED_MODELS: Final = frozenset(
    {
        "general",
        "general:rc",
        "general:deprecated",
        "deferred-general",
        "deferred-general:rc",
        "deferred-general:deprecated",
    }
)
DEFAULT_MODEL: Final = "general"
SUPPORTED_SAMPLE_RATES: Final = frozenset({8000, 16000, 48000})
MAX_CHANNELS: Final = 8
#: Inline ``content`` is limited to 60 MB (quotas and limits page, "API v3 request body").
MAX_CONTENT_BYTES: Final = 60 * 1024 * 1024

# Enum names by number, from stt.proto.
AUDIO_ENCODINGS: Final = ("AUDIO_ENCODING_UNSPECIFIED", "LINEAR16_PCM")
CONTAINER_TYPES: Final = ("CONTAINER_AUDIO_TYPE_UNSPECIFIED", "WAV", "OGG_OPUS", "MP3")
TEXT_NORMALIZATIONS: Final = (
    "TEXT_NORMALIZATION_UNSPECIFIED",
    "TEXT_NORMALIZATION_ENABLED",
    "TEXT_NORMALIZATION_DISABLED",
)
PHONE_FORMATTING_MODES: Final = ("PHONE_FORMATTING_MODE_UNSPECIFIED", "PHONE_FORMATTING_MODE_DISABLED")
RESTRICTION_TYPES: Final = ("LANGUAGE_RESTRICTION_TYPE_UNSPECIFIED", "WHITELIST", "BLACKLIST")
AUDIO_PROCESSING_TYPES: Final = ("AUDIO_PROCESSING_TYPE_UNSPECIFIED", "REAL_TIME", "FULL_DATA")
SPEAKER_LABELINGS: Final = (
    "SPEAKER_LABELING_UNSPECIFIED",
    "SPEAKER_LABELING_ENABLED",
    "SPEAKER_LABELING_DISABLED",
)

#: The HTTP status a grpc-gateway answers for each gRPC code (runtime.HTTPStatusFromCode).
HTTP_STATUS_BY_GRPC_CODE: Final[dict[int, int]] = {
    0: 200,
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}
FAILED_PRECONDITION: Final = 9


def http_status_for(code: int) -> int:
    return HTTP_STATUS_BY_GRPC_CODE.get(code, 500)


class V3InvalidRequestError(Exception):
    """A ``recognizeFileAsync`` body the service refuses with INVALID_ARGUMENT."""


@dataclass(frozen=True)
class V3Request:
    """The parts of a ``RecognizeFileRequest`` the emulator acts on."""

    uri: str | None
    content: bytes | None
    model: str
    #: ``WAV``, ``OGG_OPUS`` or ``MP3`` for container audio; None for raw audio.
    container_audio_type: str | None
    #: ``LINEAR16_PCM`` for raw audio; None for container audio.
    audio_encoding: str | None
    sample_rate_hertz: int | None
    #: For raw audio (1 when not given); None for container audio (the container carries it).
    audio_channel_count: int | None
    text_normalization: str
    profanity_filter: bool
    literature_text: bool
    phone_formatting_mode: str
    restriction_type: str
    language_codes: tuple[str, ...]
    audio_processing_type: str
    speaker_labeling: str

    @property
    def normalization_enabled(self) -> bool:
        return self.text_normalization == "TEXT_NORMALIZATION_ENABLED"

    @property
    def speaker_labeling_enabled(self) -> bool:
        return self.speaker_labeling == "SPEAKER_LABELING_ENABLED"


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _get(message: Mapping[str, Any], proto_name: str, path: str) -> Any:
    """A field given by its JSON name or its proto name (not both); None when absent or null."""
    json_name = _camel(proto_name)
    if json_name != proto_name and json_name in message and proto_name in message:
        raise V3InvalidRequestError(
            f"{path}{json_name}: the field is given twice (as {json_name} and {proto_name})"
        )
    value = message.get(json_name, message.get(proto_name))
    return value


def _message(parent: Mapping[str, Any], proto_name: str, path: str) -> dict[str, Any] | None:
    value = _get(parent, proto_name, path)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise V3InvalidRequestError(f"{path}{_camel(proto_name)}: expected an object")
    return value


def _string(parent: Mapping[str, Any], proto_name: str, path: str) -> str:
    value = _get(parent, proto_name, path)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise V3InvalidRequestError(f"{path}{_camel(proto_name)}: expected a string, got {json.dumps(value)}")
    return value


def _bool(parent: Mapping[str, Any], proto_name: str, path: str) -> bool:
    value = _get(parent, proto_name, path)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise V3InvalidRequestError(
            f"{path}{_camel(proto_name)}: expected a boolean, got {json.dumps(value)}"
        )
    return value


def _int64(parent: Mapping[str, Any], proto_name: str, path: str) -> int:
    """An int64: a JSON integer or a decimal string (the JSON mapping writes int64 as strings)."""
    value = _get(parent, proto_name, path)
    name = f"{path}{_camel(proto_name)}"
    if value is None:
        return 0
    if isinstance(value, bool):
        raise V3InvalidRequestError(f"{name}: expected an integer, got {json.dumps(value)}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip() == value and value.lstrip("-").isdigit():
        return int(value)
    raise V3InvalidRequestError(f"{name}: expected an integer, got {json.dumps(value)}")


def _enum(parent: Mapping[str, Any], proto_name: str, path: str, names: tuple[str, ...]) -> str:
    """An enum given by name or number; its name (the ``*_UNSPECIFIED`` one when absent)."""
    value = _get(parent, proto_name, path)
    name = f"{path}{_camel(proto_name)}"
    if value is None:
        return names[0]
    if isinstance(value, str) and value in names:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return names[value]
    raise V3InvalidRequestError(
        f"{name}: invalid value {json.dumps(value)}; expected one of {', '.join(names[1:])}"
    )


def _strings(parent: Mapping[str, Any], proto_name: str, path: str) -> tuple[str, ...]:
    value = _get(parent, proto_name, path)
    name = f"{path}{_camel(proto_name)}"
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise V3InvalidRequestError(f"{name}: expected a list of strings")
    return tuple(value)


def _bytes(value: object, name: str) -> bytes:
    """Base64, standard or URL-safe alphabet, padding optional (as the proto3 JSON mapping allows)."""
    if not isinstance(value, str):
        raise V3InvalidRequestError(f"{name}: expected a base64 string")
    text = value.strip()
    text += "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text.encode("ascii"))
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise V3InvalidRequestError(f"{name}: not valid base64") from None


def parse_recognize_file_request(
    body: Mapping[str, Any], *, max_content_bytes: int = MAX_CONTENT_BYTES
) -> V3Request:
    """Check a ``RecognizeFileRequest`` like the service does; raise :class:`V3InvalidRequestError`."""
    uri_value = _get(body, "uri", "")
    content_value = _get(body, "content", "")
    if uri_value is not None and content_value is not None:
        raise V3InvalidRequestError("content, uri: only one of the oneof AudioSource may be set")
    uri: str | None = None
    content: bytes | None = None
    if uri_value is not None:
        if not isinstance(uri_value, str):
            raise V3InvalidRequestError(f"uri: expected a string, got {json.dumps(uri_value)}")
        parts = urlsplit(uri_value)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise V3InvalidRequestError("uri: must be an http(s) link to an Object Storage object")
        uri = uri_value
    elif content_value is not None:
        content = _bytes(content_value, "content")
        if not content:
            raise V3InvalidRequestError("content: the audio is empty")
        if len(content) > max_content_bytes:
            raise V3InvalidRequestError(
                f"content: {len(content)} bytes exceed the limit of {max_content_bytes} bytes; "
                "put the audio into Object Storage and pass its uri"
            )
    else:
        raise V3InvalidRequestError("uri or content: the audio source is required")

    model_options = _message(body, "recognition_model", "")
    if model_options is None:
        raise V3InvalidRequestError("recognitionModel: required field is missing")
    path = "recognitionModel."
    model = _string(model_options, "model", path) or DEFAULT_MODEL
    if model not in SUPPORTED_MODELS:
        raise V3InvalidRequestError(
            f"recognitionModel.model: unsupported model {json.dumps(model)}; "
            f"expected one of {', '.join(sorted(SUPPORTED_MODELS))}"
        )

    audio_format = _message(model_options, "audio_format", path)
    if audio_format is None:
        raise V3InvalidRequestError("recognitionModel.audioFormat: required field is missing")
    path = "recognitionModel.audioFormat."
    raw = _message(audio_format, "raw_audio", path)
    container = _message(audio_format, "container_audio", path)
    if raw is not None and container is not None:
        raise V3InvalidRequestError(
            "recognitionModel.audioFormat: only one of rawAudio, containerAudio may be set"
        )
    container_type: str | None = None
    encoding: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    if raw is not None:
        path = "recognitionModel.audioFormat.rawAudio."
        encoding = _enum(raw, "audio_encoding", path, AUDIO_ENCODINGS)
        if encoding == AUDIO_ENCODINGS[0]:
            raise V3InvalidRequestError(f"{path}audioEncoding: required; expected LINEAR16_PCM")
        sample_rate = _int64(raw, "sample_rate_hertz", path)
        if sample_rate not in SUPPORTED_SAMPLE_RATES:
            raise V3InvalidRequestError(
                f"{path}sampleRateHertz: unsupported value {sample_rate}; expected 8000, 16000 or 48000"
            )
        channels = _int64(raw, "audio_channel_count", path) or 1
        if not 1 <= channels <= MAX_CHANNELS:
            raise V3InvalidRequestError(
                f"{path}audioChannelCount: must be between 1 and {MAX_CHANNELS}, got {channels}"
            )
    elif container is not None:
        path = "recognitionModel.audioFormat.containerAudio."
        container_type = _enum(container, "container_audio_type", path, CONTAINER_TYPES)
        if container_type == CONTAINER_TYPES[0]:
            raise V3InvalidRequestError(f"{path}containerAudioType: required; expected WAV, OGG_OPUS or MP3")
    else:
        raise V3InvalidRequestError(
            "recognitionModel.audioFormat: one of rawAudio, containerAudio is required"
        )

    path = "recognitionModel.textNormalization."
    normalization = _message(model_options, "text_normalization", "recognitionModel.") or {}
    text_normalization = _enum(normalization, "text_normalization", path, TEXT_NORMALIZATIONS)
    profanity_filter = _bool(normalization, "profanity_filter", path)
    literature_text = _bool(normalization, "literature_text", path)
    phone_formatting = _enum(normalization, "phone_formatting_mode", path, PHONE_FORMATTING_MODES)

    path = "recognitionModel.languageRestriction."
    restriction = _message(model_options, "language_restriction", "recognitionModel.") or {}
    restriction_type = _enum(restriction, "restriction_type", path, RESTRICTION_TYPES)
    language_codes = _strings(restriction, "language_code", path)
    if any(not code for code in language_codes):
        raise V3InvalidRequestError(f"{path}languageCode: language codes must not be empty")

    processing = _enum(model_options, "audio_processing_type", "recognitionModel.", AUDIO_PROCESSING_TYPES)

    labeling_options = _message(body, "speaker_labeling", "") or {}
    speaker_labeling = _enum(labeling_options, "speaker_labeling", "speakerLabeling.", SPEAKER_LABELINGS)
    if speaker_labeling == "SPEAKER_LABELING_ENABLED" and channels is not None and channels > 1:
        raise V3InvalidRequestError(
            "speakerLabeling.speakerLabeling: speaker labeling works on mono audio only, "
            f"but rawAudio.audioChannelCount is {channels}"
        )
    for other in ("recognition_classifier", "speech_analysis", "summarization"):
        _message(body, other, "")  # accepted (not emulated), but must be objects

    return V3Request(
        uri=uri,
        content=content,
        model=model,
        container_audio_type=container_type,
        audio_encoding=encoding,
        sample_rate_hertz=sample_rate,
        audio_channel_count=channels,
        text_normalization=text_normalization,
        profanity_filter=profanity_filter,
        literature_text=literature_text,
        phone_formatting_mode=phone_formatting,
        restriction_type=restriction_type,
        language_codes=language_codes,
        audio_processing_type=processing,
        speaker_labeling=speaker_labeling,
    )


def stream_line(message: Mapping[str, Any]) -> bytes:
    """One element of a REST server stream: ``{"result": <message>}`` and a newline."""
    return json.dumps({"result": message}, separators=(",", ":")).encode() + b"\n"


def stream_error_line(error: Mapping[str, Any]) -> bytes:
    """A grpc-gateway stream error element: ``{"error": <google.rpc.Status>}`` and a newline."""
    return json.dumps({"error": error}, separators=(",", ":")).encode() + b"\n"
