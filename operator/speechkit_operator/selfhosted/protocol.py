"""The wire format of SpeechKit's recognition APIs, as pure functions: no I/O, no clock, no globals.

* :func:`parse_long_running_request` checks a v2 ``longRunningRecognize`` body like SpeechKit does and
  returns a typed :class:`LongRunningRequest`, or raises :class:`ApiError` naming the field;
* :func:`parse_sync_request` does the same for the query of v1 ``stt:recognize``;
* :func:`render_operation`, :func:`render_recognition_response` and :func:`error_body` build the JSON the
  service answers with.

Results follow the v2 shapes exactly. The one addition: for ``languageCode: auto`` (which v2 does not
define; v3 does) each alternative carries the language the engine detected in v3's shape,
``"languages": [{"languageCode": "en-US", "probability": 0.98}]``; clients that parse v2 ignore it.

Field names follow protobuf's JSON mapping: the lowerCamel name (``languageCode``) and the proto name
(``language_code``) are both accepted, unknown fields are ignored (``literature_text`` is one SpeechKit
documents but its proto does not declare), and int64 fields may be JSON numbers or decimal strings.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

from speechkit_operator.contracts.grpc import GrpcCode, error_body
from speechkit_operator.contracts.operation import Operation, OperationError, format_timestamp
from speechkit_operator.contracts.stt_v2 import (
    DEFAULT_ENCODING,
    DEFAULT_LANGUAGE,
    DEFAULT_MODEL,
    DEFAULT_SAMPLE_RATE,
    MAX_CHANNELS,
    OPERATION_DESCRIPTION,
    SUPPORTED_PCM_RATES,
    SYNC_FORMATS,
    AudioEncoding,
    DetectedLanguage,
    LongRunningRecognitionResponse,
    RecognitionSpec,
    SpeechRecognitionAlternative,
    SpeechRecognitionChunk,
    WordInfo,
)
from speechkit_operator.models.recognition import Chunk

#: The language code that asks the engine to detect the language.
AUTO_LANGUAGE: Final = "auto"
URI_SCHEMES: Final = frozenset({"http", "https", "s3"})

_SPEC = "config.specification"
#: Protobuf's int64 range; JSON numbers beyond it are refused rather than wrapped or rounded.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
#: An S3 bucket name (the AWS rules, with the dots, capitals and underscores that old buckets may have).
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


class ApiError(Exception):
    """An error answer: HTTP status, gRPC code and a message that is safe to show the caller."""

    def __init__(
        self, http_status: int, grpc_code: GrpcCode, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.grpc_code, self.message)


def invalid_argument(message: str) -> ApiError:
    return ApiError(400, GrpcCode.INVALID_ARGUMENT, message)


# --- Requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LongRunningRequest:
    """A valid ``longRunningRecognize`` request: exactly one of ``uri`` and ``content`` is set."""

    spec: RecognitionSpec
    uri: str | None = None
    content: bytes | None = None
    folder_id: str | None = None

    def __post_init__(self) -> None:
        if (self.uri is None) == (self.content is None):
            raise ValueError("exactly one of uri and content must be set")


@dataclass(frozen=True)
class LongNumber:
    """A JSON integer with more digits than any int64 has; kept as a marker, never converted (Python
    refuses to convert integers of more than 4300 digits, and nothing needs one)."""

    digits: int


#: Digits of the longest int64 (9223372036854775807).
_INT64_DIGITS: Final = 19


def _parse_int(text: str) -> int | LongNumber:
    digits = len(text.removeprefix("-").lstrip("0"))
    return LongNumber(digits) if digits > _INT64_DIGITS else int(text)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; 400 INVALID_ARGUMENT for anything else, including JSON nested
    deeper than Python's recursion limit. Integers longer than an int64 become :class:`LongNumber`, which
    the field checks refuse by name."""
    try:
        body = json.loads(raw, parse_int=_parse_int)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise invalid_argument("The request body is not valid JSON") from None
    except RecursionError:
        raise invalid_argument("The request body is not valid JSON: it is nested too deeply") from None
    except ValueError:  # pragma: no cover - json.loads raises the two above for bad input
        raise invalid_argument("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise invalid_argument("The request body must be a JSON object")
    return body


def parse_long_running_request(body: Mapping[str, Any], *, max_content_bytes: int) -> LongRunningRequest:
    """Check a ``longRunningRecognize`` body; raises :class:`ApiError` (400, INVALID_ARGUMENT) naming the
    first offending field.

    ``audio.content`` is decoded here (standard or URL-safe base64, padding optional); more than
    ``max_content_bytes`` decoded bytes are refused.
    """
    config = body.get("config")
    if not isinstance(config, Mapping):
        raise invalid_argument(
            "config: required field is missing" if config is None else "config: not an object"
        )
    raw_spec = config.get("specification")
    if not isinstance(raw_spec, Mapping):
        if raw_spec is None:
            raise invalid_argument(f"{_SPEC}: required field is missing")
        raise invalid_argument(f"{_SPEC}: not an object")
    folder_id = _field(config, "config", "folderId", "folder_id")
    if folder_id is not None and not isinstance(folder_id, str):
        raise invalid_argument("config.folderId: expected a string")
    spec = parse_specification(raw_spec)
    uri, content = _parse_audio(body.get("audio"), max_content_bytes)
    return LongRunningRequest(spec=spec, uri=uri, content=content, folder_id=folder_id or None)


def parse_specification(spec: Mapping[str, Any]) -> RecognitionSpec:
    language = _string(spec, "languageCode", "language_code", DEFAULT_LANGUAGE)
    model = _string(spec, "model", "model", DEFAULT_MODEL)
    profanity = _boolean(spec, "profanityFilter", "profanity_filter")
    literature = _boolean(spec, "literature_text", "literatureText")
    raw_results = _boolean(spec, "rawResults", "raw_results")
    _boolean(spec, "partialResults", "partial_results")  # streaming only; checked, then ignored
    _boolean(spec, "singleUtterance", "single_utterance")

    raw_encoding = _field(spec, _SPEC, "audioEncoding", "audio_encoding")
    encoding = _encoding(raw_encoding)
    rate = DEFAULT_SAMPLE_RATE
    raw_rate = _field(spec, _SPEC, "sampleRateHertz", "sample_rate_hertz")
    if raw_rate is not None:
        rate = int64(raw_rate, f"{_SPEC}.sampleRateHertz")
        if rate == 0:  # the proto3 default: "not set"
            rate = DEFAULT_SAMPLE_RATE
        elif rate not in SUPPORTED_PCM_RATES:
            raise invalid_argument(
                f"{_SPEC}.sampleRateHertz: unsupported value {rate}; expected 8000, 16000 or 48000"
            )
    channels = 1
    raw_channels = _field(spec, _SPEC, "audioChannelCount", "audio_channel_count")
    if raw_channels is not None:
        channels = int64(raw_channels, f"{_SPEC}.audioChannelCount")
        if encoding is not AudioEncoding.LINEAR16_PCM:
            raise invalid_argument(
                f"{_SPEC}.audioChannelCount: only allowed with LINEAR16_PCM; "
                f"{encoding.value} carries its own channel count"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise invalid_argument(
                f"{_SPEC}.audioChannelCount: must be between 1 and {MAX_CHANNELS}, got {channels}"
            )
    return RecognitionSpec(
        language_code=language,
        model=model,
        profanity_filter=profanity,
        literature_text=literature,
        raw_results=raw_results,
        audio_encoding=encoding,
        sample_rate_hertz=rate,
        audio_channel_count=channels,
    )


def _field(mapping: Mapping[str, Any], where: str, json_name: str, proto_name: str) -> Any:
    """A field under either of its protobuf JSON names; None when absent or null."""
    if json_name != proto_name and mapping.get(json_name) is not None and mapping.get(proto_name) is not None:
        raise invalid_argument(f"{where}.{json_name}: given twice (as {json_name} and {proto_name})")
    value = mapping.get(json_name)
    return mapping.get(proto_name) if value is None else value


def _string(spec: Mapping[str, Any], json_name: str, proto_name: str, default: str) -> str:
    value = _field(spec, _SPEC, json_name, proto_name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise invalid_argument(f"{_SPEC}.{json_name}: expected a string, got {shown(value)}")
    return value.strip() or default


def _boolean(spec: Mapping[str, Any], json_name: str, proto_name: str) -> bool:
    value = _field(spec, _SPEC, json_name, proto_name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise invalid_argument(f"{_SPEC}.{json_name}: expected true or false, got {shown(value)}")
    return value


def _encoding(value: object) -> AudioEncoding:
    if value is None or value == "AUDIO_ENCODING_UNSPECIFIED":
        return DEFAULT_ENCODING
    if isinstance(value, str):
        try:
            return AudioEncoding(value)
        except ValueError:
            pass
    expected = ", ".join(member.value for member in AudioEncoding)
    raise invalid_argument(
        f"{_SPEC}.audioEncoding: unsupported value {shown(value)}; expected one of {expected}"
    )


def int64(value: object, name: str) -> int:
    """An int64 in protobuf JSON: a number with no fraction, or a decimal string."""
    number: int | None = None
    if isinstance(value, LongNumber):
        raise invalid_argument(f"{name}: {shown(value)} is out of range")
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        digits = text.removeprefix("-")
        if digits.isdigit() and digits.isascii():
            if len(digits.lstrip("0")) > _INT64_DIGITS:
                raise invalid_argument(f"{name}: {shown(value)} is out of range")
            number = int(text)
    if number is None:
        raise invalid_argument(f"{name}: expected an integer, got {shown(value)}")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise invalid_argument(f"{name}: {shown(value)} is out of range")
    return number


def format_seconds(seconds: float) -> str:
    """Seconds for a message: ``61``, ``10.5``, ``0.025``."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def shown(value: object) -> str:
    """A short rendering of a request value for a message: never the whole of a large or deep value."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, LongNumber):
        return f"a number of {value.digits} digits"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**64:
        return "a number of more than 64 digits"
    if isinstance(value, str) and len(value) > 64:
        value = value[:64]
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError):
        return type(value).__name__
    return text if len(text) <= 64 else text[:63] + "…"


def _parse_audio(audio: object, max_content_bytes: int) -> tuple[str | None, bytes | None]:
    if audio is None:
        raise invalid_argument("audio: required field is missing")
    if not isinstance(audio, Mapping):
        raise invalid_argument("audio: not an object")
    uri = audio.get("uri")
    content = audio.get("content")
    if uri is not None and content is not None:
        raise invalid_argument("audio: set either uri or content, not both")
    if content is not None:
        return None, parse_content(content, max_content_bytes)
    if uri is None:
        raise invalid_argument("audio: one of audio.uri and audio.content is required")
    if not isinstance(uri, str) or not uri.strip():
        raise invalid_argument("audio.uri: expected a non-empty string")
    return parse_uri(uri.strip()), None


def parse_uri(uri: str, *, field: str = "audio.uri") -> str:
    """An audio URI the service may read: http(s) with a host, or ``s3://bucket/key``; 400
    INVALID_ARGUMENT naming ``field`` otherwise (whether the host or bucket is allowed is checked apart)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise invalid_argument(f"{field}: not a valid URI") from None
    scheme = parts.scheme.lower()
    if scheme not in URI_SCHEMES or not parts.netloc:
        raise invalid_argument(f"{field}: expected an http://, https:// or s3://bucket/key URI")
    if scheme == "s3" and not parts.path.lstrip("/"):
        raise invalid_argument(f"{field}: an s3:// URI needs a bucket and a key: s3://bucket/key")
    if scheme == "s3" and not _BUCKET.match(parts.netloc):
        raise invalid_argument(f"{field}: the bucket of an s3:// URI is not a valid bucket name")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in uri):
        raise invalid_argument(f"{field}: must not contain spaces or control characters")
    if scheme != "s3":
        try:
            host, _ = parts.hostname, parts.port
            uri.encode("utf-8")
        except (ValueError, UnicodeError):
            raise invalid_argument(f"{field}: not a valid URI") from None
        if not host:
            raise invalid_argument(f"{field}: expected a host: http(s)://host/path")
    return uri


def parse_content(
    content: object, max_content_bytes: int, *, field: str = "audio.content", uri_field: str = "audio.uri"
) -> bytes:
    """Inline audio: standard or URL-safe base64, padding optional, 1 to ``max_content_bytes`` bytes once
    decoded; 400 INVALID_ARGUMENT naming ``field`` otherwise (too large suggests ``uri_field``)."""
    if not isinstance(content, str):
        raise invalid_argument(f"{field}: expected a base64 string")
    text = content.strip()
    too_large = f"{field}: larger than {max_content_bytes} bytes; use {uri_field}"
    # Every 4 base64 characters hold 3 bytes: refuse oversized content before decoding it.
    if len(text) // 4 * 3 > max_content_bytes + 3:
        raise invalid_argument(too_large)
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"{field}: not valid base64") from None
    if not data:
        raise invalid_argument(f"{field}: must not be empty")
    if len(data) > max_content_bytes:
        raise invalid_argument(too_large)
    return data


def check_language(language_code: str, supported: Iterable[str], *, field: str) -> None:
    """Refuse a language the engine does not recognise, naming the ones it does (tags compare
    case-insensitively, as in BCP 47)."""
    languages = sorted(set(supported))
    if language_code.lower() not in {language.lower() for language in languages}:
        listed = ", ".join(languages) or "none"
        raise invalid_argument(
            f"{field}: language {shown(language_code)} is not supported by this service; supported: {listed}"
        )


# --- The v1 synchronous API -----------------------------------------------------------------------


def parse_sync_request(query: Mapping[str, str]) -> RecognitionSpec:
    """The query of ``stt:recognize``: ``lang``, ``topic``, ``format``, ``sampleRateHertz``,
    ``profanityFilter``, ``rawResults`` (and ``folderId``, ignored). The audio is always mono."""
    language = query.get("lang", "").strip() or DEFAULT_LANGUAGE
    model = query.get("topic", "").strip() or DEFAULT_MODEL
    name = query.get("format", "").strip().lower() or "oggopus"
    encoding = SYNC_FORMATS.get(name)
    if encoding is None:
        raise invalid_argument(f"format: unsupported value {shown(name)}; expected one of lpcm, oggopus, mp3")
    rate = DEFAULT_SAMPLE_RATE
    raw_rate = query.get("sampleRateHertz", "").strip()
    if raw_rate:
        rate = int64(raw_rate, "sampleRateHertz")
        if rate not in SUPPORTED_PCM_RATES:
            raise invalid_argument(
                f"sampleRateHertz: unsupported value {rate}; expected 8000, 16000 or 48000"
            )
    return RecognitionSpec(
        language_code=language,
        model=model,
        profanity_filter=_query_boolean(query, "profanityFilter"),
        raw_results=_query_boolean(query, "rawResults"),
        audio_encoding=encoding,
        sample_rate_hertz=rate,
        audio_channel_count=1,
    )


def _query_boolean(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "").strip().lower()
    if value in {"", "false", "0"}:
        return False
    if value in {"true", "1"}:
        return True
    raise invalid_argument(f"{name}: expected true or false, got {shown(value)}")


def render_sync_result(chunks: Iterable[Chunk]) -> dict[str, Any]:
    """``{"result": "<text>"}``: the utterances in time order, joined by spaces."""
    ordered = sorted(chunks, key=lambda chunk: chunk.start)
    return {"result": " ".join(chunk.text for chunk in ordered if chunk.text)}


# --- Operations -------------------------------------------------------------------------------------


def render_operation(
    *,
    operation_id: str,
    created_at: datetime,
    created_by: str,
    modified_at: datetime,
    done: bool,
    error: Mapping[str, Any] | None = None,
    response: Mapping[str, Any] | None = None,
    description: str = OPERATION_DESCRIPTION,
    empty_response: bool = False,
) -> dict[str, Any]:
    """An Operation; when ``done`` exactly one of ``error`` and ``response`` is set, before that no
    ``response`` (an ``error`` may show early, as SpeechKit allows).

    ``empty_response``: the operation's response type is ``google.protobuf.Empty`` (v3's
    recognizeFileAsync, whose results are read with getRecognition): a successful one is done with
    neither ``error`` nor ``response``, as SpeechKit answers it."""
    operation = Operation(
        id=operation_id,
        description=description,
        created_at=format_timestamp(created_at),
        created_by=created_by,
        modified_at=format_timestamp(modified_at),
        done=done,
        error=None if error is None else OperationError.model_validate(error),
        response=None if response is None else dict(response),
    )
    if empty_response:
        if response is not None:
            raise ValueError("an operation with an empty response type has no response")
        return operation.to_wire()
    return operation.check_outcome().to_wire()


@dataclass(frozen=True)
class RecognizedChunk(Chunk):
    """A chunk with the language the engine detected (requests with ``languageCode: auto``) and, for
    v3's text normalization, the utterance's ``refinement``: the same channel, the engine's own words
    (numbers in digits) and its normalised or, with ``literatureText``, punctuated text."""

    language_code: str | None = None
    language_probability: float | None = None
    refinement: Chunk | None = None


def render_recognition_response(chunks: Iterable[Chunk]) -> dict[str, Any]:
    """A v2 ``LongRunningRecognitionResponse``: one chunk per utterance, ordered by start time (then
    channel), string ``channelTag``s, Duration word times, confidences of 1. Utterances with neither
    text nor words are left out, and with nothing recognised there is no ``chunks`` key at all."""
    kept = [chunk for chunk in chunks if chunk.text or chunk.words]
    kept.sort(key=lambda chunk: (chunk.start, _channel_order(chunk.channel)))
    return LongRunningRecognitionResponse(chunks=[_wire_chunk(chunk) for chunk in kept]).to_wire()


def _channel_order(tag: str) -> tuple[int, str]:
    return (int(tag), tag) if tag.isdigit() else (1 << 30, tag)


def _wire_chunk(chunk: Chunk) -> SpeechRecognitionChunk:
    words = [
        WordInfo(start_time=max(word.start, 0.0), end_time=max(word.end, word.start, 0.0), word=word.text)
        for word in chunk.words
    ]
    languages = None
    if isinstance(chunk, RecognizedChunk) and chunk.language_code:
        detected = DetectedLanguage(language_code=chunk.language_code, probability=chunk.language_probability)
        languages = [detected]
    text = chunk.text or " ".join(word.text for word in chunk.words if word.text)
    alternative = SpeechRecognitionAlternative(words=words, text=text, languages=languages)
    return SpeechRecognitionChunk(alternatives=[alternative], channel_tag=str(chunk.channel))
