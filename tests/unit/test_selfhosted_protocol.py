"""The self-hosted service's wire format (request checks, Operation and response JSON) and its operation
store: pure functions, no server."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from speechkit_operator.clients.speech.v2_parsing import parse_v2_response
from speechkit_operator.contracts.duration import format_duration
from speechkit_operator.contracts.grpc import GrpcCode, error_body
from speechkit_operator.contracts.operation import format_timestamp, new_operation_id
from speechkit_operator.contracts.stt_v2 import RESPONSE_TYPE, AudioEncoding, RecognitionSpec
from speechkit_operator.models.recognition import Chunk, Word
from speechkit_operator.selfhosted.operations import OperationStore
from speechkit_operator.selfhosted.protocol import (
    ApiError,
    LongRunningRequest,
    RecognizedChunk,
    check_language,
    parse_json_object,
    parse_long_running_request,
    parse_sync_request,
    render_operation,
    render_recognition_response,
    render_sync_result,
)

LIMIT = 1000
URI = "https://storage.example.net/bucket/a.ogg"


def body(spec: dict[str, Any] | None = None, audio: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"config": {"specification": spec or {}}, "audio": audio or {"uri": URI}}


def parse(payload: dict[str, Any], limit: int = LIMIT) -> LongRunningRequest:
    return parse_long_running_request(payload, max_content_bytes=limit)


def refused(payload: dict[str, Any], limit: int = LIMIT) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(payload, limit)
    error = caught.value
    assert (error.http_status, error.grpc_code) == (400, GrpcCode.INVALID_ARGUMENT)
    assert error.body() == {"code": 3, "message": error.message, "details": []}
    return error


# --- longRunningRecognize -------------------------------------------------------------------------


def test_an_empty_specification_gets_speechkits_defaults() -> None:
    request = parse(body())
    assert request.spec == RecognitionSpec(
        language_code="ru-RU",
        model="general",
        profanity_filter=False,
        literature_text=False,
        raw_results=False,
        audio_encoding=AudioEncoding.OGG_OPUS,
        sample_rate_hertz=48000,
        audio_channel_count=1,
    )
    assert (request.uri, request.content, request.folder_id) == (URI, None, None)
    # Ogg and MP3 carry their own rate and channels: the decoder is told neither.
    assert (request.spec.decoder_sample_rate, request.spec.decoder_channel_count) == (None, None)


def test_every_documented_field_is_read() -> None:
    spec = {
        "languageCode": "en-US",
        "model": "general:rc",
        "profanityFilter": True,
        "literature_text": True,
        "audioEncoding": "LINEAR16_PCM",
        "sampleRateHertz": 16000,
        "audioChannelCount": 2,
        "rawResults": True,
    }
    payload = body(spec)
    payload["config"]["folderId"] = "b1gfolder"
    request = parse(payload)
    assert request.spec == RecognitionSpec(
        language_code="en-US",
        model="general:rc",
        profanity_filter=True,
        literature_text=True,
        raw_results=True,
        audio_encoding=AudioEncoding.LINEAR16_PCM,
        sample_rate_hertz=16000,
        audio_channel_count=2,
    )
    assert request.folder_id == "b1gfolder"
    assert (request.spec.decoder_sample_rate, request.spec.decoder_channel_count) == (16000, 2)


def test_proto_field_names_and_int64_strings_are_accepted_and_unknown_fields_ignored() -> None:
    spec = {
        "language_code": "en-US",
        "audio_encoding": "LINEAR16_PCM",
        "sample_rate_hertz": "8000",
        "audio_channel_count": 1.0,
        "literatureText": True,
        "somethingNew": {"x": 1},
    }
    request = parse(body(spec))
    assert request.spec.language_code == "en-US"
    assert request.spec.sample_rate_hertz == 8000
    assert request.spec.audio_channel_count == 1
    assert request.spec.literature_text is True


def test_lpcm_without_a_rate_defaults_to_48000() -> None:
    assert parse(body({"audioEncoding": "LINEAR16_PCM"})).spec.decoder_sample_rate == 48000


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"languageCode": 7}, "config.specification.languageCode"),
        ({"model": ["general"]}, "config.specification.model"),
        ({"profanityFilter": "yes"}, "config.specification.profanityFilter"),
        ({"literature_text": 1}, "config.specification.literature_text"),
        ({"rawResults": "true"}, "config.specification.rawResults"),
        ({"audioEncoding": "FLAC"}, "config.specification.audioEncoding"),
        ({"audioEncoding": 1}, "config.specification.audioEncoding"),
        ({"sampleRateHertz": 44100}, "config.specification.sampleRateHertz"),
        ({"sampleRateHertz": "fast"}, "config.specification.sampleRateHertz"),
        ({"sampleRateHertz": 16000.5}, "config.specification.sampleRateHertz"),
        ({"sampleRateHertz": True}, "config.specification.sampleRateHertz"),
        ({"audioEncoding": "LINEAR16_PCM", "audioChannelCount": 0}, "config.specification.audioChannelCount"),
        ({"audioEncoding": "LINEAR16_PCM", "audioChannelCount": 9}, "config.specification.audioChannelCount"),
        ({"audioChannelCount": 2}, "config.specification.audioChannelCount"),
        ({"audioEncoding": "MP3", "audioChannelCount": 1}, "config.specification.audioChannelCount"),
        ({"languageCode": "en-US", "language_code": "ru-RU"}, "config.specification.languageCode"),
    ],
)
def test_a_bad_specification_field_is_named(spec: dict[str, Any], field: str) -> None:
    assert refused(body(spec)).message.startswith(f"{field}:")


def test_channel_count_is_refused_for_ogg_with_a_reason() -> None:
    message = refused(body({"audioChannelCount": 2})).message
    assert "only allowed with LINEAR16_PCM" in message
    assert "OGG_OPUS" in message


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"audio": {"uri": URI}}, "config"),
        ({"config": "x", "audio": {"uri": URI}}, "config"),
        ({"config": {}, "audio": {"uri": URI}}, "config.specification"),
        ({"config": {"specification": []}, "audio": {"uri": URI}}, "config.specification"),
        ({"config": {"specification": {}, "folderId": 5}, "audio": {"uri": URI}}, "config.folderId"),
        ({"config": {"specification": {}}}, "audio"),
        ({"config": {"specification": {}}, "audio": "x"}, "audio"),
        ({"config": {"specification": {}}, "audio": {}}, "audio"),
    ],
)
def test_a_missing_or_malformed_section_is_named(payload: dict[str, Any], field: str) -> None:
    assert refused(payload).message.startswith(f"{field}:")


@pytest.mark.parametrize(
    "uri",
    ["s3://bucket/key.wav", "http://127.0.0.1:9000/b/k.wav?X-Amz-Signature=abc", "HTTPS://host/k"],
)
def test_http_https_and_s3_uris_are_accepted(uri: str) -> None:
    assert parse(body(audio={"uri": uri})).uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "ftp://host/a.wav",
        "file:///etc/passwd",
        "/bucket/a.wav",
        "https://",
        "s3://bucket",
        "s3://bucket/",
        "",
        5,
    ],
)
def test_other_uris_are_refused(uri: object) -> None:
    assert refused(body(audio={"uri": uri})).message.startswith("audio.uri:")


def test_a_uri_with_spaces_is_refused() -> None:
    assert refused(body(audio={"uri": "https://host/a b.wav"})).message.startswith("audio.uri:")


def test_uri_and_content_together_are_refused() -> None:
    message = refused(body(audio={"uri": URI, "content": "AAAA"})).message
    assert message == "audio: set either uri or content, not both"


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(b"\xff\xfe audio \x00").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe audio \x00").decode(),
        base64.b64encode(b"\xff\xfe audio \x00").decode().rstrip("="),
    ],
)
def test_content_is_base64_standard_or_url_safe_with_optional_padding(encoded: str) -> None:
    request = parse(body(audio={"content": encoded}))
    assert (request.uri, request.content) == (None, b"\xff\xfe audio \x00")


@pytest.mark.parametrize("content", ["not base64!", "A", 17, ""])
def test_content_that_is_not_base64_is_refused(content: object) -> None:
    assert refused(body(audio={"content": content})).message.startswith("audio.content:")


def test_content_over_the_limit_is_refused_and_at_the_limit_accepted() -> None:
    at_limit = base64.b64encode(b"x" * 30).decode()
    assert parse(body(audio={"content": at_limit}), limit=30).content == b"x" * 30
    over = base64.b64encode(b"x" * 31).decode()
    assert "larger than 30 bytes" in refused(body(audio={"content": over}), limit=30).message
    huge = base64.b64encode(b"x" * 3000).decode()
    assert "use audio.uri" in refused(body(audio={"content": huge}), limit=30).message


def test_request_needs_exactly_one_audio_source() -> None:
    with pytest.raises(ValueError):
        LongRunningRequest(spec=RecognitionSpec())
    with pytest.raises(ValueError):
        LongRunningRequest(spec=RecognitionSpec(), uri=URI, content=b"x")


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff", b'"text"'])
def test_a_body_that_is_not_a_json_object_is_refused(raw: bytes) -> None:
    with pytest.raises(ApiError) as caught:
        parse_json_object(raw)
    assert caught.value.grpc_code is GrpcCode.INVALID_ARGUMENT
    assert caught.value.message.startswith("The request body")


def test_check_language_names_the_supported_languages() -> None:
    check_language("en-US", {"en-US", "ru-RU"}, field="lang")
    check_language("en-us", {"en-US"}, field="lang")
    with pytest.raises(ApiError) as caught:
        check_language("de-DE", frozenset({"ru-RU", "en-US"}), field="config.specification.languageCode")
    assert caught.value.http_status == 400
    assert caught.value.message == (
        'config.specification.languageCode: language "de-DE" is not supported by this service; '
        "supported: en-US, ru-RU"
    )


# --- The v1 synchronous API ------------------------------------------------------------------------


def test_sync_query_defaults_and_fields() -> None:
    assert parse_sync_request({}) == RecognitionSpec(audio_encoding=AudioEncoding.OGG_OPUS)
    spec = parse_sync_request(
        {
            "lang": "en-US",
            "topic": "general:rc",
            "format": "lpcm",
            "sampleRateHertz": "8000",
            "rawResults": "true",
        }
    )
    assert spec == RecognitionSpec(
        language_code="en-US",
        model="general:rc",
        raw_results=True,
        audio_encoding=AudioEncoding.LINEAR16_PCM,
        sample_rate_hertz=8000,
    )
    assert parse_sync_request({"format": "mp3"}).audio_encoding is AudioEncoding.MP3


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"format": "wav"}, "format"),
        ({"format": "lpcm", "sampleRateHertz": "22050"}, "sampleRateHertz"),
        ({"sampleRateHertz": "x"}, "sampleRateHertz"),
        ({"profanityFilter": "maybe"}, "profanityFilter"),
    ],
)
def test_a_bad_sync_parameter_is_named(query: dict[str, str], field: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_sync_request(query)
    assert caught.value.grpc_code is GrpcCode.INVALID_ARGUMENT
    assert caught.value.message.startswith(f"{field}:")


def test_sync_result_joins_utterances_in_time_order() -> None:
    chunks = [
        Chunk("1", "world", (Word("world", 2.0, 2.5),)),
        Chunk("1", "hello", (Word("hello", 0.5, 1.0),)),
        Chunk("1", "", ()),
    ]
    assert render_sync_result(chunks) == {"result": "hello world"}
    assert render_sync_result([]) == {"result": ""}


# --- Operations and responses ----------------------------------------------------------------------


def test_operation_ids_look_like_speechkits() -> None:
    ids = {new_operation_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"e03[0-9a-v]{17}", operation_id) for operation_id in ids)


def test_timestamps_are_rfc3339_utc() -> None:
    moment = datetime(2019, 4, 21, 22, 49, 29, 123456, tzinfo=UTC)
    assert format_timestamp(moment) == "2019-04-21T22:49:29Z"
    assert format_timestamp(moment.astimezone(timezone(timedelta(hours=3)))) == "2019-04-21T22:49:29Z"
    assert format_timestamp(datetime(2019, 4, 21, 22, 49, 29)) == "2019-04-21T22:49:29Z"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (1.0, "1s"),
        (0.88, "0.880s"),
        (1.00025, "1.000250s"),
        (0.879999999, "0.879999999s"),
        (12.5, "12.500s"),
        (-1.5, "-1.500s"),
    ],
)
def test_durations_are_canonical_protobuf_json(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_operation_json_while_running_and_when_done() -> None:
    created = datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    common: dict[str, Any] = {
        "operation_id": "e03aaaaaaaaaaaaaaaaa",
        "created_at": created,
        "created_by": "ajeuser",
        "modified_at": created + timedelta(seconds=7),
    }
    assert render_operation(**common, done=False) == {
        "id": "e03aaaaaaaaaaaaaaaaa",
        "description": "STT async recognition",
        "createdAt": "2024-05-01T10:00:00Z",
        "createdBy": "ajeuser",
        "modifiedAt": "2024-05-01T10:00:07Z",
        "done": False,
    }
    done = render_operation(**common, done=True, response={"@type": RESPONSE_TYPE})
    assert done["done"] is True
    assert done["response"] == {"@type": RESPONSE_TYPE}
    assert "error" not in done
    failed = render_operation(**common, done=True, error=error_body(GrpcCode.INTERNAL, "boom"))
    assert failed["error"] == {"code": 13, "message": "boom", "details": []}
    assert "response" not in failed


def test_a_done_operation_has_exactly_one_of_error_and_response() -> None:
    common: dict[str, Any] = {
        "operation_id": "e03x",
        "created_at": datetime.now(UTC),
        "created_by": "x",
        "modified_at": datetime.now(UTC),
    }
    with pytest.raises(ValueError):
        render_operation(**common, done=True)
    with pytest.raises(ValueError):
        render_operation(**common, done=True, error=error_body(3, "x"), response={})
    with pytest.raises(ValueError):
        render_operation(**common, done=False, response={})


def test_response_has_the_documented_shape_in_time_order() -> None:
    chunks = [
        Chunk("2", "right side", (Word("right", 0.5, 0.9), Word("side", 1.0, 1.3))),
        Chunk("1", "when writing", (Word("when", 0.879999999, 1.159999992), Word("writing", 1.22, 1.54))),
        Chunk("1", "first", (Word("first", 0.1, 0.4),)),
        Chunk("10", "tenth", (Word("tenth", 0.5, 0.6),)),
        Chunk("1", "", ()),
    ]
    response = render_recognition_response(chunks)
    assert response["@type"] == RESPONSE_TYPE
    assert [(c["channelTag"], c["alternatives"][0]["text"]) for c in response["chunks"]] == [
        ("1", "first"),
        ("2", "right side"),
        ("10", "tenth"),
        ("1", "when writing"),
    ]
    assert response["chunks"][3] == {
        "alternatives": [
            {
                "words": [
                    {"startTime": "0.879999999s", "endTime": "1.159999992s", "word": "when", "confidence": 1},
                    {"startTime": "1.220s", "endTime": "1.540s", "word": "writing", "confidence": 1},
                ],
                "text": "when writing",
                "confidence": 1,
            }
        ],
        "channelTag": "1",
    }
    # The operator's own parser reads it back.
    transcript = parse_v2_response(response)
    assert transcript.channels == ("1", "2", "10")
    assert [chunk.text for chunk in transcript.chunks] == ["first", "right side", "tenth", "when writing"]


def test_response_without_speech_has_no_chunks_key() -> None:
    assert render_recognition_response([]) == {"@type": RESPONSE_TYPE}
    assert render_recognition_response([Chunk("1", "", ())]) == {"@type": RESPONSE_TYPE}


def test_a_detected_language_is_given_in_v3s_shape() -> None:
    """For languageCode auto: alternatives[].languages as v3 has it; v2 parsers ignore the extra field."""
    chunks = [
        RecognizedChunk("1", "hello there", (Word("hello", 0.1, 0.4),), language_code="en-US",
                        language_probability=0.982),
        RecognizedChunk("2", "привет", (Word("привет", 0.2, 0.5),), language_code="ru-RU"),
    ]  # fmt: skip
    response = render_recognition_response(chunks)

    assert response["chunks"][0]["alternatives"][0]["languages"] == [
        {"languageCode": "en-US", "probability": 0.982}
    ]
    assert response["chunks"][1]["alternatives"][0]["languages"] == [{"languageCode": "ru-RU"}]
    assert [chunk.text for chunk in parse_v2_response(response).chunks] == ["hello there", "привет"]
    plain = render_recognition_response([Chunk("1", "hello there", (Word("hello", 0.1, 0.4),))])
    assert "languages" not in plain["chunks"][0]["alternatives"][0]


def test_literature_text_and_the_profanity_filter_are_read() -> None:
    spec = parse_long_running_request(
        body({"literature_text": True, "profanityFilter": True}), max_content_bytes=LIMIT
    ).spec
    assert (spec.literature_text, spec.profanity_filter) == (True, True)
    assert parse_sync_request({"profanityFilter": "true"}).profanity_filter is True


def test_chunk_text_falls_back_to_its_words() -> None:
    response = render_recognition_response([Chunk("1", "", (Word("a", 0.0, 0.1), Word("b", 0.2, 0.3)))])
    assert response["chunks"][0]["alternatives"][0]["text"] == "a b"


# --- The operation store ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def test_store_lifecycle_and_retention() -> None:
    clock = FakeClock()
    store = OperationStore(retention_seconds=100, clock=clock)
    operation = store.create("ajeuser")
    assert store.get(operation.id) == operation
    assert operation.to_json()["done"] is False

    clock.advance(5)
    store.mark_running(operation.id)
    running = store.get(operation.id)
    assert running is not None
    assert running.running
    assert running.modified_at == clock.now

    clock.advance(5)
    assert store.complete(operation.id, {"@type": RESPONSE_TYPE})
    assert not store.fail(operation.id, GrpcCode.INTERNAL, "late")  # finished once only
    finished = store.get(operation.id)
    assert finished is not None
    assert finished.to_json()["response"] == {"@type": RESPONSE_TYPE}
    assert finished.to_json()["modifiedAt"] == "2024-05-01T12:00:10Z"
    assert finished.to_json()["createdAt"] == "2024-05-01T12:00:00Z"

    # Running operations never expire; finished ones do, counted from when they finished.
    clock.advance(99.9)
    assert store.get(operation.id) is not None
    clock.advance(0.1)
    assert store.get(operation.id) is None


def test_store_copies_do_not_change_the_record() -> None:
    store = OperationStore(retention_seconds=100)
    operation = store.create("x")
    operation.done = True
    stored = store.get(operation.id)
    assert stored is not None
    assert stored.done is False


def test_purge_drops_only_expired_operations() -> None:
    clock = FakeClock()
    store = OperationStore(retention_seconds=60, clock=clock)
    old = store.create("x")
    store.fail(old.id, GrpcCode.INVALID_ARGUMENT, "bad audio")
    running = store.create("x")
    clock.advance(30)
    recent = store.create("x")
    store.complete(recent.id, {"@type": RESPONSE_TYPE})
    clock.advance(30)
    assert store.purge() == 1
    assert len(store) == 2
    assert store.get(old.id) is None
    assert store.get(running.id) is not None
    assert store.get(recent.id) is not None


def test_unknown_operations_are_none_and_finishing_them_is_refused() -> None:
    store = OperationStore(retention_seconds=1)
    assert store.get("e03doesnotexist00000") is None
    assert not store.complete("e03doesnotexist00000", {})
    with pytest.raises(ValueError):
        OperationStore(retention_seconds=0)
