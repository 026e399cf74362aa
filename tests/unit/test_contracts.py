"""The wire contracts (speechkit_operator.contracts): what the client sends is what the service reads, what
the service answers is what the client parses, and the codes map as the REST gateways map them."""

from __future__ import annotations

import re

import pytest

from speechkit_operator.clients.speech.v2_parsing import parse_v2_response
from speechkit_operator.contracts.duration import format_duration, parse_duration
from speechkit_operator.contracts.grpc import GrpcCode, code_for_http_status, error_body
from speechkit_operator.contracts.operation import OPERATION_ID_PATTERN, Operation, new_operation_id
from speechkit_operator.contracts.stt_v2 import (
    AudioEncoding,
    LongRunningRecognitionResponse,
    RecognitionSpec,
    long_running_request,
)
from speechkit_operator.models.recognition import Chunk, Word
from speechkit_operator.selfhosted.protocol import parse_long_running_request, render_recognition_response


def test_every_code_has_an_http_status_that_maps_back_for_the_documented_ones() -> None:
    documented = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 503: 14, 504: 4}
    for status, code in documented.items():
        assert code_for_http_status(status) == code
        assert GrpcCode(code).http_status == status
    assert all(isinstance(code.http_status, int) for code in GrpcCode)
    assert GrpcCode.INVALID_ARGUMENT.reason == "InvalidArgument"
    assert (
        GrpcCode.from_wire(True) is None
        and GrpcCode.from_wire(17) is None
        and GrpcCode.from_wire("3") is None
    )
    assert error_body(GrpcCode.NOT_FOUND, "gone") == {"code": 5, "message": "gone", "details": []}


@pytest.mark.parametrize("seconds", [0.0, 0.88, 1.00025, 0.879999999, 3600.5, -1.5])
def test_durations_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)


def test_operation_ids_match_the_one_pattern() -> None:
    ids = {new_operation_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(OPERATION_ID_PATTERN, i) and i.startswith("e03") and len(i) == 20 for i in ids)


def test_an_operation_reads_leniently_and_checks_its_outcome() -> None:
    odd = Operation.model_validate({"id": "e03x", "done": "yes", "error": {"code": "x", "message": 5}})
    assert odd.done is False  # only JSON true is done
    assert odd.error is not None and (odd.error.code, odd.error.message) == (GrpcCode.UNKNOWN, "")
    with pytest.raises(ValueError, match="exactly one"):
        Operation(id="e03x", done=True).check_outcome()
    wire = Operation(id="e03x", done=True, response={"chunks": []}).check_outcome().to_wire()
    assert set(wire) == {"id", "description", "createdAt", "createdBy", "modifiedAt", "done", "response"}


def test_the_request_the_client_builds_is_the_one_the_service_reads() -> None:
    spec = RecognitionSpec(
        language_code="en-US",
        raw_results=True,
        literature_text=True,
        audio_encoding=AudioEncoding.LINEAR16_PCM,
        sample_rate_hertz=16000,
        audio_channel_count=2,
    )
    body = long_running_request(spec, uri="https://storage.example/b/k.wav", folder_id="b1g")
    assert body["config"]["specification"]["literature_text"] is True  # SpeechKit's documented spelling
    read = parse_long_running_request(body, max_content_bytes=1)
    assert (read.spec, read.uri, read.folder_id) == (spec, "https://storage.example/b/k.wav", "b1g")
    ogg = RecognitionSpec(audio_encoding=AudioEncoding.OGG_OPUS).to_wire()
    assert "sampleRateHertz" not in ogg and "audioChannelCount" not in ogg


def test_the_result_the_service_renders_is_the_one_the_client_parses() -> None:
    chunks = [
        Chunk(channel="2", text="two", words=(Word("two", 0.5, 0.9),)),
        Chunk(channel="1", text="one more", words=(Word("one", 0.5, 0.8), Word("more", 0.88, 1.2))),
    ]
    wire = render_recognition_response(chunks)
    assert wire["chunks"][0]["alternatives"][0]["words"][1] == {
        "startTime": "0.880s",
        "endTime": "1.200s",
        "word": "more",
        "confidence": 1,
    }
    transcript = parse_v2_response(wire)
    assert [(c.channel, c.text) for c in transcript.chunks] == [("1", "one more"), ("2", "two")]
    assert transcript.chunks[0].words[1] == Word("more", 0.88, 1.2)
    assert render_recognition_response([]) == {"@type": LongRunningRecognitionResponse().type}
