"""Property tests of the code that reads untrusted input: audio bytes and SpeechKit's answers.

- The audio probe, given any bytes (random, or the real shared recordings with their first or last
  64 KiB mutated), answers an :class:`AudioInfo` with a finite, non-negative, plausible duration or
  raises :class:`AudioProbeError`: nothing else.
- ``parse_operation`` raises nothing but :class:`MalformedResponseError`, and ``parse_v2_response``
  nothing but the ``ValueError``/``TypeError`` it documents, for any JSON-like value, deeply nested
  ones included.
- Spec keys and prefixes the model accepts never form a ``.``/``..`` segment in an output key, and
  the poll schedule never raises, whatever numbers it is given.

Each property runs a bounded number of examples (no deadline: the first examples warm caches) and
keeps no example database (Hypothesis's own caches in ``.hypothesis/`` carry their own .gitignore).
"""

from __future__ import annotations

import contextlib
import math
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speechkit_operator.clients.speech.errors import MalformedResponseError
from speechkit_operator.clients.speech.v2 import parse_operation
from speechkit_operator.clients.speech.v2_parsing import parse_v2_response
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.logic.audio_probe import (
    HEAD_BYTES,
    TAIL_BYTES,
    AudioProbeError,
    DeclaredAudio,
    ogg_crc,
    probe_audio,
)
from speechkit_operator.logic.output_keys import output_base_key
from speechkit_operator.logic.polling import MAX_WAIT_SECONDS, PollPolicy, first_check_at, next_check_at
from speechkit_operator.models.audio import AudioInfo
from speechkit_operator.models.job import DOT_SEGMENT_PATTERN, Reason, TranscriptionJobSpec
from tests.support.audio import audio_dir, manifest

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
REASONS = {"EmptyAudio", "UnknownAudioFormat", "UnsupportedAudio", "AudioEncodingMismatch", "CorruptAudio"}


# --------------------------------------------------------------------------------------------------
# The audio probe
# --------------------------------------------------------------------------------------------------

declared_audio = st.builds(
    DeclaredAudio,
    st.none() | st.sampled_from(AudioEncoding),
    st.none() | st.sampled_from([8000, 16000, 48000, 44100, 22050, 0, -16000]),
    st.none() | st.integers(-3, 10),
)


def probe_or_refuse(head: bytes, size: int, declared: DeclaredAudio, tail: bytes | None) -> AudioInfo | None:
    """Probe; the only exception allowed is AudioProbeError, and a duration must be sound."""
    try:
        info = probe_audio(head, size, declared, tail)
    except AudioProbeError as error:
        assert error.reason in REASONS
        assert error.message
        return None
    duration = info.duration_seconds
    if duration is not None:
        assert math.isfinite(duration), info
        assert duration >= 0, info
    assert info.size_bytes == size
    return info


@FUZZ
@given(
    head=st.binary(max_size=2048),
    size=st.integers(-8, 2**64),
    declared=declared_audio,
    tail=st.none() | st.binary(max_size=2048),
)
def test_probe_of_random_bytes_raises_only_its_own_error(
    head: bytes, size: int, declared: DeclaredAudio, tail: bytes | None
) -> None:
    probe_or_refuse(head, size, declared, tail)


MAGICS = [
    b"RIFF",
    b"RF64",
    b"WAVE",
    b"fmt ",
    b"data",
    b"ds64",
    b"OggS",
    b"OpusHead",
    b"ID3",
    b"Xing",
    b"Info",
]
MAGICS += [b"VBRI", b"LAME", b"\xff\xfb", b"\xff\xf3", b"\xff\xe3", b"\xff\xff\xff\xff", b"\x00\x00\x00\x00"]


@cache
def shared_files() -> dict[str, bytes]:
    return {name: (audio_dir() / name).read_bytes() for name in sorted(manifest()["files"])}


@st.composite
def mutated_recording(draw: st.DrawFn) -> tuple[bytes, int, bytes | None]:
    """A real recording's head and tail with bytes flipped, magic strings planted or cut short."""
    name = draw(st.sampled_from(sorted(shared_files())))
    data = shared_files()[name]
    at_end = draw(st.booleans())
    part = bytearray(data[-TAIL_BYTES:] if at_end else data[:HEAD_BYTES])
    # Most of the structure is in the first and last hundred bytes: aim there more often.
    offsets = (
        st.integers(0, 255) | st.integers(0, len(part) - 1) | st.integers(len(part) - 256, len(part) - 1)
    )
    for _ in range(draw(st.integers(0, 12))):
        offset = max(0, draw(offsets))
        if draw(st.booleans()):
            part[offset] = draw(st.integers(0, 255))
        else:
            magic = draw(st.sampled_from(MAGICS))
            part[offset : offset + len(magic)] = magic
    if draw(st.booleans()):
        del part[draw(st.integers(0, len(part))) :]
    mutated = bytes(part)
    head = data[:HEAD_BYTES] if at_end else mutated
    tail = mutated if at_end else data[-TAIL_BYTES:]
    size = len(data) + draw(st.sampled_from([0, 0, 0, -len(data) // 2, 1, 10**6, 10**12]))
    return head, size, draw(st.sampled_from([tail, None, head]))


@FUZZ
@given(recording=mutated_recording(), declared=declared_audio)
def test_probe_of_mutated_real_recordings_raises_only_its_own_error(
    recording: tuple[bytes, int, bytes | None], declared: DeclaredAudio
) -> None:
    head, size, tail = recording
    probe_or_refuse(head, size, declared, tail)


@FUZZ
@given(granule=st.integers(0, 2**64 - 1), size_factor=st.sampled_from([1, 2, 1000, 10**6]))
def test_probe_of_any_ogg_granule_is_plausible_or_corrupt(granule: int, size_factor: int) -> None:
    """Whatever the last page of librivox-all.ogg claims (its checksum made right), the duration stays
    within what the object's size can hold at Opus's least bitrate (an Opus packet lasts at most
    120 ms and takes at least one byte), or the object is CorruptAudio."""
    data = bytearray(shared_files()["librivox-all.ogg"])
    last = data.rfind(b"OggS")
    data[last + 6 : last + 14] = granule.to_bytes(8, "little")
    data[last + 22 : last + 26] = ogg_crc(
        bytes(data[last : last + 22]), bytes(4), bytes(data[last + 26 :])
    ).to_bytes(4, "little")
    size = len(data) * size_factor
    try:
        info = probe_audio(bytes(data[:HEAD_BYTES]), size, DeclaredAudio(), bytes(data[-TAIL_BYTES:]))
    except AudioProbeError as error:
        assert error.reason == Reason.CORRUPT_AUDIO
        assert "corrupt or crafted" in error.message
        return
    if info.duration_seconds is not None:  # no duration: a granule of "none" (all ones) or 2^63 and up
        assert 0 <= info.duration_seconds <= size * 0.12


# --------------------------------------------------------------------------------------------------
# SpeechKit's answers
# --------------------------------------------------------------------------------------------------

KEYS = ["id", "done", "error", "response", "chunks", "alternatives", "words", "text", "channelTag"]
KEYS += ["startTime", "endTime", "word", "confidence", "code", "message", "seconds", "nanos", "@type"]

#: Numbers as JSON decoding gives them: finite floats, and integers that a float can hold. (Larger
#: integers are test_huge_integers_in_word_times_are_a_malformed_answer's business.)
json_numbers = st.integers(-(2**1023), 2**1023) | st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | json_numbers | st.text(max_size=20)
durations = st.sampled_from(["0.5s", "1s", "-1.5s", "s", "", "1e999s", "nan", "0x10s", "1_0s"]) | json_numbers


#: Any JSON-like value: scalars, Duration-like strings, lists and objects of them.
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars | durations,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def nested(depth: int, leaf: Any) -> Any:
    """``leaf`` under ``depth`` levels of lists and objects, alternately."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {("chunks", "channelTag", "words")[level % 3]: value}
    return value


_words = st.fixed_dictionaries(
    {}, optional={"word": json_values, "startTime": durations | json_values, "endTime": json_values}
)
_alternatives = st.fixed_dictionaries(
    {}, optional={"text": json_values, "words": st.lists(_words, max_size=3) | json_values}
)
_chunks = st.fixed_dictionaries(
    {},
    optional={"alternatives": st.lists(_alternatives, max_size=2) | json_values, "channelTag": json_values},
)
#: Recognition results: the documented shape with arbitrary values planted anywhere, or anything.
_results = st.fixed_dictionaries(
    {}, optional={"chunks": st.lists(_chunks, max_size=3) | json_values}
) | st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)


@st.composite
def responses(draw: st.DrawFn, max_depth: int) -> dict[str, Any]:
    """A recognition result, sometimes with a value nested up to ``max_depth`` levels deep in it."""
    response: dict[str, Any] = draw(_results)
    if draw(st.booleans()):
        depth = draw(st.integers(1, max_depth))
        response[draw(st.sampled_from(["chunks", "channelTag", "x"]))] = nested(depth, draw(json_scalars))
    return response


@settings(FUZZ, max_examples=200)
@given(response=responses(max_depth=200))
def test_parse_v2_response_raises_only_value_and_type_errors(response: dict[str, Any]) -> None:
    try:
        transcript = parse_v2_response(response)
    except (ValueError, TypeError):
        return
    for chunk in transcript.chunks:
        assert isinstance(chunk.channel, str)
        assert all(math.isfinite(word.start) and math.isfinite(word.end) for word in chunk.words)


operations = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=12) | json_values,
        "done": st.booleans() | json_values,
        "error": st.fixed_dictionaries({}, optional={"code": json_values, "message": json_values})
        | json_values,
        "response": responses(max_depth=2000) | json_values,
        "metadata": json_values,
    },
)


@FUZZ
@given(
    body=operations | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_values, max_size=6)
)
def test_parse_operation_raises_only_malformed_response_errors(body: dict[str, Any]) -> None:
    try:
        operation = parse_operation(body, secrets=("s3cr3t-token",))
    except MalformedResponseError as error:
        assert "s3cr3t-token" not in str(error)
        return
    assert operation.id == body["id"]
    if operation.error is not None:
        assert "s3cr3t-token" not in operation.error.message


@pytest.mark.parametrize("depth", [100, 990, 5000])
def test_parse_operation_of_deeply_nested_results(depth: int) -> None:
    """json.loads gives up near 1000 levels; deeper values still end in a result or a malformed answer."""
    deep = nested(depth, "1")
    results = [
        {"chunks": deep},
        {"chunks": [{"channelTag": deep, "alternatives": [{"text": "a"}]}]},
        {"chunks": [{"alternatives": [{"words": [{"word": deep}]}]}]},
        {"chunks": [{"alternatives": [{"text": deep}]}]},
    ]
    for response in results:
        with contextlib.suppress(MalformedResponseError):
            parse_operation({"id": "e03op", "done": True, "response": response})
    if depth > 1000:
        with pytest.raises(MalformedResponseError, match="unknown shape"):
            parse_operation({"id": "e03op", "done": True, "response": results[1]})


@pytest.mark.parametrize(
    "time", [10**400, {"seconds": 10**400}, {"seconds": 0, "nanos": 10**400}], ids=["int", "seconds", "nanos"]
)
def test_huge_integers_in_word_times_are_a_malformed_answer(time: Any) -> None:
    body = {
        "id": "e03op",
        "done": True,
        "response": {"chunks": [{"alternatives": [{"words": [{"word": "a", "startTime": time}]}]}]},
    }
    with pytest.raises(MalformedResponseError):
        parse_operation(body)


# --------------------------------------------------------------------------------------------------
# Keys, prefixes and the poll schedule
# --------------------------------------------------------------------------------------------------

path_text = st.text(alphabet=st.sampled_from(["/", ".", "a", "é", " "]), min_size=0, max_size=12)
SUFFIXES = [".json", ".txt", ".srt", ".vtt", ".channel-1.srt", ".channel-8.vtt"]


@FUZZ
@given(key=path_text, prefix=path_text)
def test_accepted_keys_and_prefixes_never_form_dot_segments(key: str, prefix: str) -> None:
    try:
        spec = TranscriptionJobSpec.model_validate(
            {"source": {"bucket": "calls", "key": key}, "output": {"prefix": prefix}}
        )
    except ValueError:
        return
    base = output_base_key(spec.source.key, spec.output.prefix)
    for name in (spec.source.key, *(base + suffix for suffix in SUFFIXES)):
        assert re.search(DOT_SEGMENT_PATTERN, name) is None, name


floats = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**80), 2**80).map(float)
policies = st.builds(
    PollPolicy,
    seconds_per_audio_minute=floats,
    first_check_min_seconds=floats,
    initial_interval_seconds=floats,
    backoff_factor=floats,
    max_interval_seconds=floats,
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(9999, 12, 31, 23, 59), timezones=st.just(UTC)
)


def _within(at: datetime, moment: datetime) -> bool:
    try:
        latest = at + timedelta(seconds=MAX_WAIT_SECONDS)
    except OverflowError:
        latest = datetime.max.replace(tzinfo=UTC)
    return at <= moment <= latest


@FUZZ
@given(
    at=moments,
    duration=st.none() | floats,
    channels=st.integers(-10, 10**30) | st.just(10**400),
    checks=st.integers(-10, 10**30),
    retry_after=st.none() | floats,
    policy=policies,
)
def test_the_poll_schedule_never_raises_and_stays_within_a_day(
    at: datetime,
    duration: float | None,
    channels: int,
    checks: int,
    retry_after: float | None,
    policy: PollPolicy,
) -> None:
    assert _within(at, first_check_at(at, duration, channels, policy))
    assert _within(at, next_check_at(at, checks, policy, retry_after))


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_an_answer_nested_too_deep_is_a_malformed_answer(depth: int) -> None:
    from speechkit_operator.clients.speech.auth import RawResponse, json_object

    raw = RawResponse(status=200, body=b'{"a":' * depth + b"1" + b"}" * depth, retry_after=None)
    with pytest.raises(MalformedResponseError, match="not a JSON object"):
        json_object(raw, "SpeechKit operation x")
