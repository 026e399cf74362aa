"""``speechkit-operator stream``'s pure parts: formats, chunks, conversion, limits, pacing (with a fake
clock), rendering, and the checks of its arguments, endpoint and credentials."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import math
import struct
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st

from speechkit_operator import cli
from speechkit_operator.clients.speech.streaming import (
    DEFAULT_PORT,
    Endpoint,
    EndpointError,
    StreamingConfig,
    config_request,
    resolve_endpoint,
    response_from_message,
)
from speechkit_operator.config import Settings
from speechkit_operator.contracts.stt_streaming import stt_service_pb2 as pb
from speechkit_operator.logic.stream_audio import (
    CHUNK_SECONDS,
    MAX_SESSION_BYTES,
    AudioChunk,
    OggFramer,
    PcmConverter,
    PcmFramer,
    SessionLimits,
    StreamAudioError,
    WavFramer,
    detect_format,
    known_size_problem,
    ogg_duration,
    parse_wav_header,
    send_time,
)
from speechkit_operator.logic.stream_rendering import (
    CLEAR_LINE,
    PARTIAL_PREFIX,
    StreamRenderer,
    fit,
    printable,
    response_json,
)
from speechkit_operator.models.credentials import (
    AnonymousCredentials,
    ApiKeyCredentials,
    IamTokenCredentials,
)
from speechkit_operator.models.stream_results import (
    StreamAlternative,
    StreamChunk,
    StreamResponse,
    StreamWord,
)
from speechkit_operator.stream_cli import (
    EXIT_USAGE,
    StreamOptions,
    UsageError,
    check_options,
    open_input,
    pace,
    speech_credentials,
    stream,
)
from tests.support.audio import audio_dir

# --- Builders -------------------------------------------------------------------------------------------


def wav_bytes(
    samples: bytes,
    *,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    tag: int = 1,
    data_size: int | None = None,
    extra_before: bytes = b"",
    extra_after: bytes = b"",
) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    size = len(samples) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_before
    body += b"data" + struct.pack("<I", size) + samples + extra_after
    return b"RIFF" + struct.pack("<I", len(body)) + body


def pcm(values: Iterable[int]) -> bytes:
    values = list(values)
    return struct.pack(f"<{len(values)}h", *values)


def ogg_page(body: bytes, granule: int, *, serial: int = 1, sequence: int = 0) -> bytes:
    segments = [255] * (len(body) // 255) + [len(body) % 255]
    header = b"OggS" + bytes([0, 0]) + struct.pack("<qIII", granule, serial, sequence, 0)
    return header + bytes([len(segments)]) + bytes(segments) + body


OPUS_HEAD = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)


def ogg_stream(page_seconds: Sequence[float], *, body: int = 1000, pre_skip: int = 312) -> bytes:
    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", pre_skip, 48000, 0, 0)
    data = ogg_page(head, 0) + ogg_page(b"OpusTags" + bytes(8), 0, sequence=1)
    granule = pre_skip
    for index, seconds in enumerate(page_seconds):
        granule += round(seconds * 48000)
        data += ogg_page(bytes([index % 256]) * body, granule, sequence=index + 2)
    return data


def feed_all(framer: WavFramer | OggFramer | PcmFramer, data: bytes, piece: int = 4096) -> list[AudioChunk]:
    chunks: list[AudioChunk] = []
    for offset in range(0, len(data), piece):
        chunks += framer.feed(data[offset : offset + piece])
    return chunks + framer.finish()


# --- Formats --------------------------------------------------------------------------------------------


def test_detect_format_knows_wav_and_ogg_and_names_what_cannot_be_streamed() -> None:
    assert detect_format(wav_bytes(pcm([0]))) == "wav"
    assert detect_format(b"OggS" + bytes(20)) == "ogg"
    assert detect_format(bytes(16)) is None  # headerless PCM, perhaps
    for head, name in (
        (b"ID3\x04" + bytes(8), "MP3"),
        (b"fLaC" + bytes(8), "FLAC"),
        (bytes(4) + b"ftypM4A ", "MP4"),
    ):
        with pytest.raises(StreamAudioError, match=name) as caught:
            detect_format(head)
        assert "ffmpeg" in str(caught.value)


def test_wav_header_of_the_shared_corpus() -> None:
    data = (audio_dir() / "librivox-0880.wav").read_bytes()
    header = parse_wav_header(data[:4096])
    assert header is not None
    assert (header.channels, header.sample_rate, header.data_offset) == (1, 16000, 44)
    assert header.data_size == len(data) - 44


def test_wav_header_needs_more_bytes_until_the_data_chunk() -> None:
    data = wav_bytes(pcm(range(10)), extra_before=b"LIST" + struct.pack("<I", 7) + b"abcdefg" + b"\0")
    assert parse_wav_header(data[:40]) is None
    header = parse_wav_header(data)
    assert header is not None
    assert header.data_offset == data.index(b"data") + 8
    with pytest.raises(StreamAudioError, match="cut short"):
        parse_wav_header(data[:40], complete=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 24}, "24-bit PCM WAV cannot be streamed"),
        ({"bits": 32, "tag": 3}, "32-bit float WAV cannot be streamed"),
        ({"bits": 8, "tag": 7}, "mu-law WAV"),
        ({"bits": 8}, "8-bit PCM"),
    ],
)
def test_wav_that_is_not_16_bit_pcm_is_refused_naming_its_format(
    kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(StreamAudioError, match=message):
        parse_wav_header(wav_bytes(bytes(12), bits=kwargs["bits"], tag=kwargs.get("tag", 1)))


def test_wav_extensible_pcm_is_accepted() -> None:
    fmt = struct.pack("<HHIIHH", 0xFFFE, 2, 44100, 44100 * 4, 4, 16)
    fmt += (
        struct.pack("<HHI", 22, 16, 3) + struct.pack("<H", 1) + bytes.fromhex("000000001000800000aa00389b71")
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 8) + bytes(8)
    header = parse_wav_header(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert header is not None
    assert (header.channels, header.sample_rate) == (2, 44100)


def test_mono_wav_at_a_speechkit_rate_is_sent_as_is_in_400_ms_chunks_without_what_follows_its_data() -> None:
    samples = pcm(range(-20000, 20000, 3))  # 13334 samples: 0.83 s at 16 kHz
    data = wav_bytes(samples, extra_after=b"LIST" + struct.pack("<I", 4) + b"junk")
    header = parse_wav_header(data)
    assert header is not None
    framer = WavFramer(header)
    assert (framer.format.encoding, framer.format.sample_rate) == ("LINEAR16_PCM", 16000)
    assert not framer.complete
    chunks = feed_all(framer, data, piece=1000)
    assert framer.complete
    assert b"".join(chunk.data for chunk in chunks) == samples
    assert [len(chunk.data) for chunk in chunks] == [12800, 12800, len(samples) - 25600]
    assert [chunk.start for chunk in chunks] == pytest.approx([0.0, 0.4, 0.8])
    assert chunks[-1].end == pytest.approx(len(samples) / 32000)


def test_wav_written_to_a_pipe_runs_to_the_end() -> None:
    samples = pcm(range(1000))
    header = parse_wav_header(wav_bytes(samples, data_size=0xFFFFFFFF))
    assert header is not None
    assert header.data_size is None
    chunks = feed_all(WavFramer(header), wav_bytes(samples, data_size=0xFFFFFFFF))
    assert b"".join(chunk.data for chunk in chunks) == samples


def test_stereo_wav_is_mixed_down_and_8_khz_stays_8_khz() -> None:
    frames = [(1000, 3000), (-2000, 0), (32767, 32767), (-32768, -32768)]
    data = wav_bytes(pcm(value for frame in frames for value in frame), channels=2, rate=8000)
    header = parse_wav_header(data)
    assert header is not None
    framer = WavFramer(header)
    assert framer.format.sample_rate == 8000
    out = b"".join(chunk.data for chunk in feed_all(framer, data, piece=3))
    assert out == pcm([2000, -1000, 32767, -32768])


def sine(rate: int, seconds: float, frequency: float = 440.0, amplitude: int = 12000) -> list[int]:
    return [
        round(amplitude * math.sin(2 * math.pi * frequency * n / rate)) for n in range(round(rate * seconds))
    ]


@pytest.mark.parametrize("rate", [44100, 22050, 11025, 96000, 12000])
def test_other_rates_are_resampled_to_16_khz_keeping_the_signal(rate: int) -> None:
    converter = PcmConverter(1, rate, 16000)
    source = pcm(sine(rate, 0.5))
    out = converter.feed(source[:777]) + converter.feed(source[777:]) + converter.finish()
    values = struct.unpack(f"<{len(out) // 2}h", out)
    assert abs(len(values) - 8000) <= 1
    expected = sine(16000, 0.5)
    # The box filter dampens a little; the phase stays put.
    error = max(abs(a - b) for a, b in zip(values[10:-10], expected[10:-10], strict=False))
    assert error < 1200, error


@settings(max_examples=40, deadline=None)
@given(
    rate=st.sampled_from([44100, 22050, 32000, 11025, 24000]),
    channels=st.integers(1, 3),
    cuts=st.lists(st.integers(0, 4000), max_size=8),
)
def test_conversion_does_not_depend_on_how_the_input_is_split(
    rate: int, channels: int, cuts: list[int]
) -> None:
    frames = 1500
    source = pcm(((n * 7919) % 65536) - 32768 for n in range(frames * channels))
    whole = PcmConverter(channels, rate, 16000)
    expected = whole.feed(source) + whole.finish()
    pieces = PcmConverter(channels, rate, 16000)
    out = b""
    previous = 0
    for cut in sorted(cuts):
        out += pieces.feed(source[previous:cut])
        previous = max(previous, cut)
    out += pieces.feed(source[previous:]) + pieces.finish()
    assert out == expected
    assert abs(len(out) // 2 - frames * 16000 // rate) <= 1


# --- Ogg Opus -------------------------------------------------------------------------------------------


def test_ogg_pages_are_spread_over_the_time_they_cover() -> None:
    data = ogg_stream([1.0, 1.0, 0.5])  # pages of 1 s, as ffmpeg writes them
    chunks = feed_all(OggFramer(), data, piece=500)
    assert b"".join(chunk.data for chunk in chunks) == data
    assert [chunk.start for chunk in chunks] == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.4])
    assert chunks[-1].end == pytest.approx(2.5)
    headers = len(ogg_page(OPUS_HEAD, 0)) + len(ogg_page(b"OpusTags" + bytes(8), 0))
    page = len(ogg_page(bytes(1000), 0))
    # The first chunk: both header pages and 40% of the first audio page.
    assert len(chunks[0].data) == headers + math.floor(page * 0.4)
    assert all(abs(len(chunk.data) - page * 0.4) <= 2 for chunk in chunks[1:5])  # within the 1 s pages
    assert abs(len(chunks[5].data) - page * 0.8) <= 2  # 0.4 s of the last page, of 0.5 s
    assert ogg_duration(data) == pytest.approx(2.5)


def test_ogg_pages_without_a_granule_go_with_the_next_page_and_corrupt_granules_are_capped() -> None:
    head = ogg_stream([])
    page_a = ogg_page(bytes(500), -1, sequence=2)  # no packet ends here
    page_b = ogg_page(bytes(500), 312 + 48000, sequence=3)
    crafted = ogg_page(bytes(10), 312 + 48000 * 3600, sequence=4)  # an hour in 10 bytes
    framer = OggFramer()
    chunks = feed_all(framer, head + page_a + page_b + crafted)
    assert b"".join(chunk.data for chunk in chunks) == head + page_a + page_b + crafted
    assert framer.duration == pytest.approx(1.0 + 10 * 0.12)


def test_the_shared_ogg_file_is_cut_into_400_ms_chunks() -> None:
    data = (audio_dir() / "librivox-0870.ogg").read_bytes()
    chunks = feed_all(OggFramer(), data, piece=8192)
    assert b"".join(chunk.data for chunk in chunks) == data
    assert ogg_duration(data) == pytest.approx(7.1, abs=0.05)
    assert len(chunks) == math.ceil(ogg_duration(data) / CHUNK_SECONDS)
    assert all(chunk.data for chunk in chunks)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (ogg_page(b"\x01vorbis" + bytes(30), 0), "Ogg Vorbis cannot be streamed"),
        (ogg_page(b"\x7fFLAC" + bytes(30), 0), "Ogg FLAC"),
        (ogg_page(b"something else", 0), "does not hold Opus"),
        (ogg_stream([1.0]) + b"garbage that is not a page at all..", "corrupt at byte"),
        (ogg_stream([1.0])[:-10], "cut short"),
    ],
)
def test_ogg_that_is_not_opus_or_is_broken_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(StreamAudioError, match=message):
        feed_all(OggFramer(), data)


# --- Limits -----------------------------------------------------------------------------------------------


def test_known_sizes_past_a_session_limit_are_refused_naming_the_limit() -> None:
    assert known_size_problem(299.9, 9_000_000) is None
    problem = known_size_problem(301.0, 1000)
    assert problem is not None
    assert "5 min 1 s of audio" in problem
    assert "at most 5 min" in problem
    problem = known_size_problem(120.0, MAX_SESSION_BYTES + 1)
    assert problem is not None
    assert "10.0 MB" in problem


def test_session_limits_cut_the_chunk_that_crosses_them_on_whole_samples() -> None:
    limits = SessionLimits(max_seconds=1.0, align=2)
    assert limits.admit(AudioChunk(bytes(12800), 0.0, 0.4)) is not None
    assert limits.admit(AudioChunk(bytes(12800), 0.4, 0.8)) is not None
    cut = limits.admit(AudioChunk(bytes(12801), 0.8, 1.2))
    assert cut is not None
    assert len(cut.data) == 6400  # half the chunk, even
    assert cut.end == pytest.approx(1.0)
    assert limits.stopped is not None
    assert "1 s of audio" in limits.stopped
    assert limits.admit(AudioChunk(bytes(10), 1.2, 1.3)) is None

    limits = SessionLimits(max_bytes=30000, align=2)
    sizes = []
    for index in range(3):
        admitted = limits.admit(AudioChunk(bytes(12801), index * 0.4, index * 0.4 + 0.4))
        sizes.append(len(admitted.data) if admitted else 0)
    assert sizes == [12801 - 1, 12800, 30000 - 12800 - 12800 - 0]  # cut to whole samples
    assert limits.sent_bytes <= 30000
    assert limits.stopped is not None
    assert "MB of audio" in limits.stopped


# --- Pacing (a fake clock) ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += seconds
        return False


async def _aiter(chunks: Iterable[AudioChunk]) -> AsyncIterator[AudioChunk]:
    for chunk in chunks:
        yield chunk


async def paced(
    chunks: Iterable[AudioChunk], clock: FakeClock, *, realtime: bool = True
) -> list[tuple[float, int]]:
    return [
        (clock.now - 100.0, len(chunk.data))
        async for chunk in pace(_aiter(chunks), realtime=realtime, clock=clock, wait=clock.wait)
    ]


async def test_lpcm_goes_400_ms_every_400_ms() -> None:
    framer = PcmFramer(16000)
    chunks = framer.feed(bytes(16000 * 2 * 2 + 1000)) + framer.finish()  # 2 s and a bit
    sent = await paced(chunks, FakeClock())
    assert [size for _, size in sent] == [12800] * 5 + [1000]
    assert [when for when, _ in sent] == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6, 2.0])


async def test_8_khz_and_48_khz_chunks_are_400_ms_too() -> None:
    for rate, size in ((8000, 6400), (48000, 38400)):
        framer = PcmFramer(rate)
        assert [len(chunk.data) for chunk in framer.feed(bytes(size * 3))] == [size] * 3


async def test_ogg_goes_by_its_granule_positions() -> None:
    chunks = feed_all(OggFramer(), ogg_stream([1.0, 1.0]))
    sent = await paced(chunks, FakeClock())
    assert [when for when, _ in sent] == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6])


async def test_fast_sends_at_once_and_late_input_is_not_made_to_wait_more() -> None:
    framer = PcmFramer(16000)
    chunks = framer.feed(bytes(12800 * 4))
    clock = FakeClock()
    assert [when for when, _ in await paced(chunks, clock, realtime=False)] == [0.0] * 4
    assert clock.waits == []

    class LateClock(FakeClock):
        async def wait(self, seconds: float) -> bool:
            raise AssertionError("no wait: the input is late already")

    late = LateClock()

    async def slow() -> AsyncIterator[AudioChunk]:
        for chunk in chunks:
            late.now += 1.0  # the input comes slower than real time
            yield chunk

    got = [chunk async for chunk in pace(slow(), realtime=True, clock=late, wait=late.wait)]
    assert len(got) == 4


async def test_a_stop_during_the_wait_ends_the_audio() -> None:
    framer = PcmFramer(16000)
    chunks = framer.feed(bytes(12800 * 5))
    clock = FakeClock()
    calls = 0

    async def wait(seconds: float) -> bool:
        nonlocal calls
        calls += 1
        return calls == 2  # Ctrl-C during the second wait

    got = [chunk async for chunk in pace(_aiter(chunks), realtime=True, clock=clock, wait=wait)]
    assert len(got) == 2


def test_send_time() -> None:
    chunk = AudioChunk(b"x", 1.2, 1.6)
    assert send_time(10.0, chunk, realtime=True) == pytest.approx(11.2)
    assert send_time(10.0, chunk, realtime=False) == 10.0


async def test_real_pacing_with_a_real_clock_for_a_short_file() -> None:
    loop = asyncio.get_running_loop()
    framer = PcmFramer(8000)
    chunks = framer.feed(bytes(6400 * 3))

    async def wait(seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return False

    times = [loop.time() async for _ in pace(_aiter(chunks), realtime=True, clock=loop.time, wait=wait)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps == pytest.approx([0.4, 0.4], abs=0.08)


# --- Rendering -------------------------------------------------------------------------------------------


def response(*chunks: tuple[str, bool]) -> StreamResponse:
    return StreamResponse(
        chunks=tuple(
            StreamChunk(alternatives=(StreamAlternative(text, 1.0),), final=final, end_of_utterance=final)
            for text, final in chunks
        )
    )


def test_terminal_rewrites_the_partial_in_place_and_ends_the_line_with_the_final() -> None:
    renderer = StreamRenderer("terminal", width=80)
    out = "".join(
        renderer.render(item)
        for item in (
            response(("hello", False)),
            response(("hello", False)),  # the same text again: nothing to redraw
            response(("hello wor", False)),
            response(("hello world", True)),
            response(("next", False)),
        )
    )
    out += renderer.close()
    assert out == f"{CLEAR_LINE}hello{CLEAR_LINE}hello wor{CLEAR_LINE}hello world\n{CLEAR_LINE}next\n"
    assert renderer.finals == 1


def test_terminal_partials_are_cut_from_the_left_to_the_width() -> None:
    renderer = StreamRenderer("terminal", width=12)
    out = renderer.render(response(("one two three four", False)))
    assert out == CLEAR_LINE + "…three four"
    assert len(fit("one two three four", 12)) == 11
    assert fit("short", 12) == "short"


def test_an_empty_final_clears_the_partial_and_prints_no_empty_line() -> None:
    renderer = StreamRenderer("terminal")
    assert renderer.render(response(("uh", False))) == CLEAR_LINE + "uh"
    assert renderer.render(response(("", True))) == CLEAR_LINE
    assert renderer.close() == ""
    plain = StreamRenderer("plain")
    assert plain.render(response(("", True))) == ""


def test_plain_output_has_finals_only_unless_partials_are_asked_for() -> None:
    items = [response(("a", False)), response(("a b", False), ("a b c", True)), response(("d", True))]
    plain = StreamRenderer("plain", partials=False)
    assert "".join(plain.render(item) for item in items) + plain.close() == "a b c\nd\n"
    plain = StreamRenderer("plain", partials=True)
    assert "".join(plain.render(item) for item in items) == (
        f"{PARTIAL_PREFIX}a\n{PARTIAL_PREFIX}a b\na b c\nd\n"
    )


def test_control_characters_from_the_service_never_reach_the_terminal() -> None:
    assert printable("a\x1b[2Jb\rc\nd\u202ee") == "a [2Jb c d e"
    renderer = StreamRenderer("terminal")
    assert "\x1b[2J" not in renderer.render(response(("evil\x1b[2J", True)))


def test_json_lines_carry_every_response_in_speechkits_field_names() -> None:
    item = StreamResponse(
        chunks=(
            StreamChunk(
                alternatives=(
                    StreamAlternative(
                        "привет",
                        1.0,
                        (StreamWord("привет", 0.5, 0.88, 1.0), StreamWord("x", None, None, 0.5)),
                    ),
                ),
                final=True,
                end_of_utterance=True,
            ),
        )
    )
    renderer = StreamRenderer("json")
    line = renderer.render(item)
    assert line.endswith("\n")
    assert "привет" in line  # not escaped
    assert json.loads(line) == response_json(item)
    assert json.loads(line) == {
        "chunks": [
            {
                "alternatives": [
                    {
                        "text": "привет",
                        "confidence": 1.0,
                        "words": [
                            {"startTime": "0.500s", "endTime": "0.880s", "word": "привет", "confidence": 1.0},
                            {"word": "x", "confidence": 0.5},
                        ],
                    }
                ],
                "final": True,
                "endOfUtterance": True,
            }
        ]
    }
    assert renderer.finals == 1


# --- The wire messages -------------------------------------------------------------------------------------


def test_the_config_message_carries_the_specification_and_folder() -> None:
    config = StreamingConfig(
        audio_encoding="LINEAR16_PCM",
        sample_rate_hertz=8000,
        language_code="en-US",
        model="general:rc",
        profanity_filter=True,
        partial_results=False,
        folder_id="b1gfolder",
    )
    message = config_request(config)
    assert message.WhichOneof("streaming_request") == "config"
    spec = message.config.specification
    assert spec.audio_encoding == pb.RecognitionSpec.LINEAR16_PCM
    assert (spec.sample_rate_hertz, spec.language_code, spec.model) == (8000, "en-US", "general:rc")
    assert (spec.profanity_filter, spec.partial_results) == (True, False)
    assert message.config.folder_id == "b1gfolder"
    ogg = config_request(StreamingConfig(audio_encoding="OGG_OPUS")).config.specification
    assert ogg.audio_encoding == pb.RecognitionSpec.OGG_OPUS
    assert ogg.sample_rate_hertz == 0


def test_responses_become_typed_results() -> None:
    message = pb.StreamingRecognitionResponse(
        chunks=[
            pb.SpeechRecognitionChunk(
                alternatives=[
                    pb.SpeechRecognitionAlternative(
                        text="hello",
                        confidence=1.0,
                        words=[pb.WordInfo(word="hello", start_time=Duration(seconds=1, nanos=500_000_000))],
                    )
                ],
                final=True,
                end_of_utterance=True,
            )
        ]
    )
    typed = response_from_message(message)
    assert typed.chunks[0].text == "hello"
    assert typed.chunks[0].final and typed.chunks[0].end_of_utterance
    assert typed.chunks[0].alternatives[0].words == (StreamWord("hello", 1.5, None, 0.0),)
    assert StreamChunk(alternatives=(), final=False, end_of_utterance=False).text == ""


# --- Arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tls", "expected"),
    [
        (None, None, Endpoint("localhost", DEFAULT_PORT, tls=False)),
        ("stt.api.cloud.yandex.net:443", None, Endpoint("stt.api.cloud.yandex.net", 443, tls=True)),
        ("stt.api.cloud.yandex.net", None, Endpoint("stt.api.cloud.yandex.net", 443, tls=True)),
        ("speech.example:443", None, Endpoint("speech.example", 443, tls=True)),
        ("speech.example:443", False, Endpoint("speech.example", 443, tls=False)),
        ("speech.example:9000", True, Endpoint("speech.example", 9000, tls=True)),
        ("speech.example", True, Endpoint("speech.example", 443, tls=True)),
        ("10.0.0.5", None, Endpoint("10.0.0.5", DEFAULT_PORT, tls=False)),
        ("[::1]:8089", None, Endpoint("::1", 8089, tls=False)),
    ],
)
def test_endpoints_and_when_they_use_tls(text: str | None, tls: bool | None, expected: Endpoint) -> None:
    assert resolve_endpoint(text, tls=tls) == expected


def test_endpoint_targets() -> None:
    assert Endpoint("::1", 8089, tls=False).target == "[::1]:8089"
    assert Endpoint("127.0.0.1", 1, tls=False).loopback
    assert not Endpoint("speech.example", 1, tls=False).loopback


@pytest.mark.parametrize(
    "text", ["https://stt.api.cloud.yandex.net:443", "host:port", "host:0", "::1", "a b:1", "[::1"]
)
def test_bad_endpoints_are_refused(text: str) -> None:
    with pytest.raises(EndpointError):
        resolve_endpoint(text)


def test_option_checks() -> None:
    assert check_options(StreamOptions("-", sample_rate=8000)).encoding == "lpcm"
    with pytest.raises(UsageError, match="needs --sample-rate"):
        check_options(StreamOptions("-", encoding="lpcm"))
    with pytest.raises(UsageError, match="8000, 16000, 48000"):
        check_options(StreamOptions("-", encoding="lpcm", sample_rate=44100))
    with pytest.raises(UsageError, match="Ogg Opus carries its own"):
        check_options(StreamOptions("-", encoding="oggopus", sample_rate=48000))
    with pytest.raises(UsageError, match="name of an environment variable"):
        check_options(StreamOptions("-", api_key_env=" "))


def test_the_parser_takes_the_documented_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = "stream - --endpoint h:1 --tls --api-key-env K --language en-US --model m --profanity-filter"
    argv += " --no-partial --encoding lpcm --sample-rate 8000 --fast --partials --json --folder-id f"
    args = cli._parser().parse_args(argv.split())
    assert (args.source, args.endpoint, args.tls, args.api_key_env) == ("-", "h:1", True, "K")
    assert (args.language, args.model, args.profanity_filter, args.partial_results) == (
        "en-US",
        "m",
        True,
        False,
    )
    assert (args.encoding, args.sample_rate, args.fast, args.partials, args.json) == (
        "lpcm",
        8000,
        True,
        True,
        True,
    )
    defaults = cli._parser().parse_args(["stream", "x.wav"])
    assert (defaults.tls, defaults.language, defaults.model, defaults.partial_results) == (
        None,
        "ru-RU",
        "general",
        True,
    )
    assert cli._parser().parse_args(["stream", "x", "--insecure"]).tls is False
    assert cli._parser().parse_args(["stream", "x", "--plaintext"]).tls is False
    with pytest.raises(SystemExit) as exited:
        cli._parser().parse_args(["stream", "x", "--tls", "--insecure"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["stream", "x", "--encoding", "mp3"])
    capsys.readouterr()


def run_stream(
    options: StreamOptions, environ: dict[str, str] | None = None, stdin: bytes = b""
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = stream(options, stdin=io.BytesIO(stdin), stdout=out, stderr=err, environ=environ or {})
    return status, out.getvalue(), err.getvalue()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (StreamOptions("/nonexistent/a.wav"), "no such file"),
        (StreamOptions("-"), "stdin is empty"),
        (StreamOptions("-", sample_rate=22050), "--sample-rate 22050"),
        (StreamOptions("-", endpoint="http://x:1"), "without a scheme"),
        (
            StreamOptions("-", endpoint="stt.api.cloud.yandex.net:443"),
            "SpeechKit needs credentials: set API_SECRET",
        ),
        (StreamOptions("-", api_key_env="MY_KEY"), "--api-key-env MY_KEY: that variable is not set"),
    ],
)
def test_usage_errors_exit_2_with_a_message(options: StreamOptions, message: str) -> None:
    status, out, err = run_stream(options)
    assert status == EXIT_USAGE
    assert out == ""
    assert message in err
    assert err.startswith("speechkit-operator stream: ")


def test_inputs_that_cannot_be_streamed_exit_2(tmp_path: Path) -> None:
    mp3 = tmp_path / "a.mp3"
    mp3.write_bytes(b"ID3\x04" + bytes(100))
    assert run_stream(StreamOptions(str(mp3)))[0] == EXIT_USAGE
    raw = tmp_path / "a.pcm"
    raw.write_bytes(bytes(100))
    status, _, err = run_stream(StreamOptions(str(raw)))
    assert status == EXIT_USAGE
    assert "--encoding lpcm --sample-rate" in err
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes(pcm([0] * 100)))
    status, _, err = run_stream(StreamOptions(str(wav), sample_rate=16000))
    assert status == EXIT_USAGE
    assert "is a WAV file" in err
    ogg = tmp_path / "a.ogg"
    ogg.write_bytes(ogg_stream([1.0]))
    status, _, err = run_stream(StreamOptions(str(ogg), encoding="lpcm", sample_rate=8000))
    assert (status, "is an Ogg file" in err) == (EXIT_USAGE, True)
    audio = open_input(StreamOptions(str(ogg), encoding="oggopus"), io.BytesIO())  # says what it is: fine
    audio.stream.close()
    assert audio.format.encoding == "OGG_OPUS"
    status, _, err = run_stream(StreamOptions(str(raw), encoding="oggopus"))
    assert (status, "not an Ogg file" in err) == (EXIT_USAGE, True)
    status, _, err = run_stream(StreamOptions(str(tmp_path)))
    assert (status, "is a folder" in err) == (EXIT_USAGE, True)
    empty_wav = tmp_path / "empty.wav"
    empty_wav.write_bytes(wav_bytes(b""))
    status, _, err = run_stream(StreamOptions(str(empty_wav)))
    assert (status, "holds no samples" in err) == (EXIT_USAGE, True)


def test_headerless_pcm_that_starts_like_an_mp3_frame_is_pcm_when_declared(tmp_path: Path) -> None:
    """``ff fb`` is MP3's frame sync and also the sample -1025: with ``--encoding lpcm`` the input is what
    the user said (it was refused as MP3); undeclared, it is still told to be MP3."""
    raw = tmp_path / "a.pcm"
    raw.write_bytes(b"\xff\xfb" + bytes(15998))  # 0.5 s at 16 kHz
    audio = open_input(check_options(StreamOptions(str(raw), sample_rate=16000)), io.BytesIO())
    audio.stream.close()
    assert (audio.format.encoding, audio.format.sample_rate) == ("LINEAR16_PCM", 16000)
    status, _, err = run_stream(StreamOptions(str(raw)))
    assert (status, "MP3 audio cannot be streamed" in err) == (EXIT_USAGE, True)
    # Longer magics are no sample: FLAC stays refused with --encoding lpcm too.
    flac = tmp_path / "a.flac"
    flac.write_bytes(b"fLaC" + bytes(15996))
    status, _, err = run_stream(StreamOptions(str(flac), sample_rate=16000))
    assert (status, "FLAC audio cannot be streamed" in err) == (EXIT_USAGE, True)


def test_files_past_the_session_limits_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    long_wav = tmp_path / "long.wav"
    long_wav.write_bytes(wav_bytes(bytes(8000 * 2 * 301), rate=8000))  # 5 min 1 s
    status, _, err = run_stream(StreamOptions(str(long_wav)))
    assert status == EXIT_USAGE
    assert "5 min 1 s of audio" in err
    big_raw = tmp_path / "big.pcm"
    big_raw.write_bytes(bytes(48000 * 2 * 110))  # 110 s at 48 kHz: 10.1 MiB
    status, _, err = run_stream(StreamOptions(str(big_raw), sample_rate=48000))
    assert status == EXIT_USAGE
    assert "at most 10.0 MB" in err


def test_a_wav_that_would_be_too_big_at_48_khz_fits_once_converted(tmp_path: Path) -> None:
    stereo = tmp_path / "stereo.wav"
    stereo.write_bytes(wav_bytes(bytes(48000 * 4 * 110), channels=2, rate=48000))  # 110 s, 21 MB
    audio = open_input(StreamOptions(str(stereo)), io.BytesIO())
    audio.stream.close()
    assert (audio.format.encoding, audio.format.sample_rate) == ("LINEAR16_PCM", 16000)
    # Mono 48 kHz goes as is while it fits in the session's 10 MB, and at 16 kHz when it does not.
    short = tmp_path / "short.wav"
    short.write_bytes(wav_bytes(bytes(48000 * 2 * 100), rate=48000))  # 100 s: 9.2 MiB
    audio = open_input(StreamOptions(str(short)), io.BytesIO())
    audio.stream.close()
    assert audio.format.sample_rate == 48000
    long = tmp_path / "long.wav"
    long.write_bytes(wav_bytes(bytes(48000 * 2 * 110), rate=48000))  # 110 s: 10.1 MiB
    audio = open_input(StreamOptions(str(long)), io.BytesIO())
    audio.stream.close()
    assert audio.format.sample_rate == 16000
    assert isinstance(audio.framer, WavFramer)
    assert audio.framer.format.sample_rate == 16000


def test_ogg_files_are_checked_whole_up_front(tmp_path: Path) -> None:
    broken = tmp_path / "broken.ogg"
    broken.write_bytes(ogg_stream([1.0])[:-5])
    status, _, err = run_stream(StreamOptions(str(broken)))
    assert (status, "cut short" in err) == (EXIT_USAGE, True)
    long_ogg = tmp_path / "long.ogg"
    long_ogg.write_bytes(ogg_stream([1.0] * 301, body=20))
    status, _, err = run_stream(StreamOptions(str(long_ogg)))
    assert (status, "5 min 1 s of audio" in err) == (EXIT_USAGE, True)


# --- Credentials ------------------------------------------------------------------------------------------


def test_credentials_follow_transcribes_variables_and_the_folder_option() -> None:
    settings = Settings()
    options = StreamOptions("-")
    assert speech_credentials(options, {}, settings) == AnonymousCredentials()
    assert speech_credentials(options, {"SPEECHKIT_FOLDER_ID": "b1g"}, settings) == AnonymousCredentials(
        "b1g"
    )
    assert speech_credentials(options, {"API_SECRET": "k1", "SPEECHKIT_API_KEY": "k2"}, settings) == (
        ApiKeyCredentials("k1")
    )
    assert speech_credentials(
        options, {"SPEECHKIT_IAM_TOKEN": "t1.x", "SPEECHKIT_FOLDER_ID": "b1g"}, settings
    ) == (IamTokenCredentials("t1.x", "b1g"))
    with_folder = StreamOptions("-", folder_id="b1other")
    assert speech_credentials(
        with_folder, {"SPEECHKIT_API_KEY": "k", "SPEECHKIT_FOLDER_ID": "b1g"}, settings
    ) == (ApiKeyCredentials("k", "b1other"))
    by_name = StreamOptions("-", api_key_env="MY_KEY")
    assert speech_credentials(
        by_name, {"MY_KEY": " k3 ", "SPEECHKIT_API_KEY": "k2"}, settings
    ) == ApiKeyCredentials("k3")


def test_a_broken_authorized_key_file_is_a_usage_error_that_shows_no_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text('{"id": "aje", "private_key": "-----BEGIN PRIVATE KEY-----\\nSECRETSTUFF"')
    with pytest.raises(UsageError) as caught:
        speech_credentials(StreamOptions("-"), {"SPEECHKIT_AUTHORIZED_KEY_FILE": str(key_file)}, Settings())
    assert "SECRETSTUFF" not in str(caught.value)
    assert "SPEECHKIT_AUTHORIZED_KEY_FILE" in str(caught.value)
    status, _, err = run_stream(
        StreamOptions("-"), {"SPEECHKIT_AUTHORIZED_KEY_FILE": str(tmp_path / "missing")}
    )
    assert status == EXIT_USAGE
    assert "cannot be read" in err
