"""Decoding for the self-hosted service, against the real recordings in ../shared/audio and damaged copies."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.audio import ContainerFormat
from speechkit_operator.models.job import Reason
from speechkit_operator.selfhosted.decoding import (
    AudioDecodeError,
    AudioStream,
    DecodedAudio,
    PcmSegment,
    decode_audio,
    open_audio,
)
from tests.support.audio import audio_dir, manifest

REPO = Path(__file__).resolve().parents[2]
#: An MP3 without a LAME/Xing tag cannot say how much encoder delay and padding it carries: the decoded
#: stream is 1105 samples (69 ms) longer at the start and padded to whole frames (7.20 s for 7.10 s here).
DURATION_TOLERANCE = 0.1 + 1e-6


def _read(name: str) -> bytes:
    return (audio_dir() / name).read_bytes()


def _declared(entry: dict[str, Any]) -> dict[str, Any]:
    """What a request declares for a manifest file: nothing for containers, encoding and rate for raw PCM."""
    if entry["format"] == "raw":
        return {
            "encoding": AudioEncoding(entry["encoding"]),
            "sample_rate_hertz": entry["sampleRateHertz"],
            "channel_count": entry["channels"],
        }
    return {"encoding": None, "sample_rate_hertz": None, "channel_count": None}


def _decode(data: bytes, **declared: Any) -> DecodedAudio:
    values: dict[str, Any] = {"encoding": None, "sample_rate_hertz": None, "channel_count": None}
    values.update(declared)
    return decode_audio(data, **values)


def _wav_samples(name: str) -> NDArray[np.int16]:
    with wave.open(str(audio_dir() / name)) as wav:
        frames = wav.readframes(wav.getnframes())
        return np.frombuffer(frames, dtype="<i2").reshape(-1, wav.getnchannels()).T.astype(np.int16)


def _correlation(a: NDArray[np.int16], b: NDArray[np.int16]) -> float:
    n = min(len(a), len(b))
    x, y = a[:n].astype(np.float64), b[:n].astype(np.float64)
    return float(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)))


def _manifest_cases() -> list[Any]:
    try:
        files = manifest()["files"]
    except pytest.skip.Exception:
        return [pytest.param("missing", {}, marks=pytest.mark.skip(reason="shared audio missing"))]
    return [pytest.param(name, entry, id=name) for name, entry in files.items()]


# --------------------------------------------------------------------------------------------------------
# Every file of the corpus
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "entry"), _manifest_cases())
def test_every_manifest_file_decodes_to_its_channels_and_duration(name: str, entry: dict[str, Any]) -> None:
    decoded = decode_audio(_read(name), **_declared(entry))

    assert decoded.channel_count == entry["channels"]
    assert decoded.duration_seconds == pytest.approx(entry["seconds"], abs=DURATION_TOLERANCE)
    assert decoded.sample_rate == 16000
    assert decoded.source_rate == entry["sampleRateHertz"]
    assert decoded.encoding is AudioEncoding(entry["encoding"])
    assert decoded.container is ContainerFormat(entry["format"])
    assert decoded.skipped_packets == 0
    for channel in decoded.channels:
        assert channel.dtype == np.int16
        assert channel.ndim == 1
        assert channel.flags.c_contiguous
        assert len(channel) == round(decoded.duration_seconds * 16000)
        assert np.abs(channel.astype(np.int32)).max() > 1000  # speech, not silence


def test_a_16k_wav_comes_out_sample_for_sample() -> None:
    decoded = _decode(_read("librivox-0880.wav"))

    np.testing.assert_array_equal(decoded.channels[0], _wav_samples("librivox-0880.wav")[0])


def test_the_stereo_wav_keeps_its_channels_apart() -> None:
    decoded = _decode(_read("librivox-stereo-0880L-0930R.wav"))
    left, right = _wav_samples("librivox-stereo-0880L-0930R.wav")

    np.testing.assert_array_equal(decoded.channels[0], left)
    np.testing.assert_array_equal(decoded.channels[1], right)
    assert abs(_correlation(decoded.channels[0], decoded.channels[1])) < 0.2


@pytest.mark.parametrize(
    ("name", "declared", "minimum"),
    [
        (
            "librivox-0870-48k.pcm",
            {"encoding": AudioEncoding.LINEAR16_PCM, "sample_rate_hertz": 48000},
            0.999,
        ),
        ("librivox-0870-8k.pcm", {"encoding": AudioEncoding.LINEAR16_PCM, "sample_rate_hertz": 8000}, 0.98),
        ("librivox-0870.ogg", {}, 0.98),
    ],
)
def test_resampled_and_decoded_copies_line_up_with_the_16k_original(
    name: str, declared: dict[str, Any], minimum: float
) -> None:
    original = _wav_samples("librivox-0870.wav")[0]
    decoded = _decode(_read(name), **declared)

    # Same length and no time shift: word times from these copies match the original's.
    assert len(decoded.channels[0]) == len(original)
    assert _correlation(decoded.channels[0], original) > minimum


def test_headerless_pcm_is_deinterleaved_per_declared_channel_count() -> None:
    left, right = _wav_samples("librivox-stereo-0880L-0930R.wav")
    interleaved = np.stack([left, right], axis=1).astype("<i2").tobytes()

    decoded = _decode(
        interleaved, encoding=AudioEncoding.LINEAR16_PCM, sample_rate_hertz=16000, channel_count=2
    )

    assert decoded.container is ContainerFormat.RAW
    np.testing.assert_array_equal(decoded.channels[0], left)
    np.testing.assert_array_equal(decoded.channels[1], right)


def test_headerless_multichannel_pcm_is_resampled_channel_by_channel() -> None:
    data = _read("librivox-0870-8k.pcm")
    mono = _decode(data, encoding=AudioEncoding.LINEAR16_PCM, sample_rate_hertz=8000).channels[0]
    samples = np.frombuffer(data, dtype="<i2")
    three = np.stack([samples, np.zeros_like(samples), -samples], axis=1).astype("<i2").tobytes()

    decoded = _decode(three, encoding="LINEAR16_PCM", sample_rate_hertz=8000, channel_count=3)

    assert decoded.channel_count == 3
    np.testing.assert_array_equal(decoded.channels[0], mono)
    assert not decoded.channels[1].any()
    assert np.abs(decoded.channels[2].astype(np.int32) + mono).max() <= 1


def test_a_cut_off_trailing_half_sample_is_dropped() -> None:
    data = _read("librivox-0870-48k.pcm")

    decoded = _decode(data + b"\x01", encoding=AudioEncoding.LINEAR16_PCM, sample_rate_hertz=48000)

    assert decoded.duration_seconds == pytest.approx(len(data) / 2 / 48000, abs=1e-3)


def test_a_wav_declared_as_linear16_pcm_is_read_from_its_header() -> None:
    decoded = _decode(
        _read("librivox-0880.wav"), encoding=AudioEncoding.LINEAR16_PCM, sample_rate_hertz=16000
    )

    # The 44-byte header is not decoded as 22 samples of noise.
    np.testing.assert_array_equal(decoded.channels[0], _wav_samples("librivox-0880.wav")[0])


def test_another_target_rate() -> None:
    decoded = decode_audio(
        _read("librivox-0870.ogg"),
        encoding=None,
        sample_rate_hertz=None,
        channel_count=None,
        target_rate=8000,
    )

    assert decoded.sample_rate == 8000
    assert len(decoded.channels[0]) == pytest.approx(7.10 * 8000, abs=80)


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------


def _error(data: bytes, **declared: Any) -> AudioDecodeError:
    with pytest.raises(AudioDecodeError) as caught:
        _decode(data, **declared)
    error = caught.value
    assert str(error) == error.message
    assert "spec.recognition" not in error.message  # request fields are named as the API names them
    return error


def test_empty_input() -> None:
    error = _error(b"", encoding=AudioEncoding.LINEAR16_PCM, sample_rate_hertz=16000)

    assert error.code_name == Reason.EMPTY_AUDIO
    assert "empty" in error.message


@pytest.mark.parametrize(
    ("name", "declared", "actual"),
    [
        ("librivox-0870.ogg", AudioEncoding.MP3, "OGG_OPUS"),
        ("librivox-0870.wav", AudioEncoding.OGG_OPUS, "LINEAR16_PCM"),
        ("librivox-0870.mp3", AudioEncoding.OGG_OPUS, "MP3"),
        ("librivox-0870.wav", AudioEncoding.MP3, "LINEAR16_PCM"),
        ("librivox-0870.ogg", AudioEncoding.LINEAR16_PCM, "OGG_OPUS"),
        ("librivox-0870.mp3", AudioEncoding.LINEAR16_PCM, "MP3"),
    ],
)
def test_a_declared_encoding_that_contradicts_the_bytes(
    name: str, declared: AudioEncoding, actual: str
) -> None:
    error = _error(_read(name), encoding=declared, sample_rate_hertz=16000)

    assert error.code_name == Reason.AUDIO_ENCODING_MISMATCH
    assert f"config.specification.audioEncoding is {declared.value}" in error.message
    assert f"to {actual}" in error.message


def test_headerless_pcm_declared_for_a_wav_with_another_rate() -> None:
    error = _error(_read("librivox-0870.wav"), encoding=AudioEncoding.LINEAR16_PCM, sample_rate_hertz=8000)

    assert error.code_name == Reason.AUDIO_ENCODING_MISMATCH
    assert "config.specification.sampleRateHertz is 8000" in error.message
    assert "16000" in error.message


def test_headerless_pcm_declared_for_a_wav_with_another_channel_count() -> None:
    error = _error(
        _read("librivox-stereo-0880L-0930R.wav"), encoding=AudioEncoding.LINEAR16_PCM, channel_count=1
    )

    assert error.code_name == Reason.AUDIO_ENCODING_MISMATCH
    assert "audioChannelCount" in error.message


def test_a_declared_encoding_for_bytes_with_no_header_at_all() -> None:
    error = _error(_read("librivox-0870-8k.pcm"), encoding=AudioEncoding.OGG_OPUS)

    assert error.code_name == Reason.AUDIO_ENCODING_MISMATCH
    assert "OggS" in error.message


def test_headerless_pcm_without_a_sample_rate() -> None:
    error = _error(_read("librivox-0870-8k.pcm"), encoding=AudioEncoding.LINEAR16_PCM)

    assert error.code_name == Reason.UNKNOWN_AUDIO_FORMAT
    assert "config.specification.sampleRateHertz" in error.message


def test_headerless_bytes_without_a_declared_encoding() -> None:
    error = _error(_read("librivox-0870-8k.pcm"))

    assert error.code_name == Reason.UNKNOWN_AUDIO_FORMAT
    assert "LINEAR16_PCM" in error.message


def test_headerless_pcm_at_a_rate_speechkit_does_not_take() -> None:
    error = _error(
        _read("librivox-0870-8k.pcm"), encoding=AudioEncoding.LINEAR16_PCM, sample_rate_hertz=44100
    )

    assert error.code_name == Reason.UNSUPPORTED_AUDIO
    assert "8000, 16000 or 48000" in error.message


@pytest.mark.parametrize("count", [0, -1, 9])
def test_an_impossible_channel_count(count: int) -> None:
    error = _error(
        _read("librivox-0870-8k.pcm"),
        encoding=AudioEncoding.LINEAR16_PCM,
        sample_rate_hertz=8000,
        channel_count=count,
    )

    assert error.code_name == Reason.UNSUPPORTED_AUDIO
    assert "audioChannelCount" in error.message


@pytest.mark.parametrize(
    ("description", "data", "declared"),
    [
        ("WAV header cut short", lambda: _read("librivox-0870.wav")[:30], {}),
        ("Ogg magic then zeros", lambda: b"OggS" + bytes(200), {}),
        ("first Ogg page only", lambda: _read("librivox-0870.ogg")[:120], {}),
        (
            "Ogg headers, then garbage",
            lambda: _read("librivox-0870.ogg")[:200] + random.Random(1).randbytes(4000),
            {},
        ),
        ("ID3 tag and no frames", lambda: b"ID3\x03\x00\x00\x00\x00\x00\x10" + bytes(400), {}),
        (
            "half a sample",
            lambda: b"\x01",
            {"encoding": AudioEncoding.LINEAR16_PCM, "sample_rate_hertz": 16000},
        ),
        (
            "two stereo bytes",
            lambda: b"\x01\x02",
            {"encoding": "LINEAR16_PCM", "sample_rate_hertz": 8000, "channel_count": 2},
        ),
    ],
)
def test_corrupt_input(description: str, data: Any, declared: dict[str, Any]) -> None:
    error = _error(data(), **declared)

    assert error.code_name == Reason.CORRUPT_AUDIO, description
    assert "upload" in error.message or "plays" in error.message


def test_more_channels_than_accepted_in_a_wav_header(tmp_path: Path) -> None:
    # Regression: PyAV reads planar frames of more than 8 channels through wild pointers (a crash).
    path = tmp_path / "ten.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(10)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(bytes(16000 * 10 * 2))

    error = _error(path.read_bytes())

    assert error.code_name == Reason.UNSUPPORTED_AUDIO
    assert "10 channels" in error.message


def test_an_ogg_that_ends_after_its_headers() -> None:
    ogg = _read("librivox-0870.ogg")
    # Keep the OpusHead and OpusTags pages only.
    pages: list[bytes] = []
    position = 0
    while len(pages) < 2:
        segments = ogg[position + 26]
        length = 27 + segments + sum(ogg[position + 27 : position + 27 + segments])
        pages.append(ogg[position : position + length])
        position += length

    error = _error(b"".join(pages))

    assert error.code_name == Reason.CORRUPT_AUDIO
    assert "ends before its first audio packet" in error.message


def test_audio_longer_than_the_limit() -> None:
    with pytest.raises(AudioDecodeError) as wav:
        decode_audio(
            _read("librivox-0870.ogg"),
            encoding=None,
            sample_rate_hertz=None,
            channel_count=None,
            max_seconds=5,
        )
    with pytest.raises(AudioDecodeError) as raw:
        decode_audio(
            _read("librivox-0870-8k.pcm"),
            encoding=AudioEncoding.LINEAR16_PCM,
            sample_rate_hertz=8000,
            channel_count=None,
            max_seconds=5,
        )

    assert wav.value.code_name == raw.value.code_name == Reason.UNSUPPORTED_AUDIO
    assert "limit of 5 s" in raw.value.message
    assert "split" in raw.value.message


def test_an_encoding_the_api_does_not_have() -> None:
    error = _error(_read("librivox-0870-8k.pcm"), encoding="FLAC", sample_rate_hertz=8000)

    assert error.code_name == Reason.UNSUPPORTED_AUDIO
    assert "LINEAR16_PCM, OGG_OPUS, MP3" in error.message


def test_a_truncated_ogg_keeps_what_it_has() -> None:
    ogg = _read("librivox-0870.ogg")

    decoded = _decode(ogg[: len(ogg) // 2])

    assert 2.5 < decoded.duration_seconds < 4.5


def test_a_damaged_mp3_skips_the_damage_and_keeps_the_rest() -> None:
    mp3 = bytearray(_read("librivox-0870.mp3"))
    rng = random.Random(7)
    for _ in range(40):
        index = rng.randrange(2000, len(mp3))
        mp3[index] ^= 0xFF

    decoded = _decode(bytes(mp3))

    assert decoded.duration_seconds > 5


# --------------------------------------------------------------------------------------------------------
# Fuzzing: garbage never crashes or hangs the process, and never raises anything but AudioDecodeError
# --------------------------------------------------------------------------------------------------------

FUZZ_FILES = (
    "librivox-0870.wav",
    "librivox-0870.ogg",
    "librivox-0870.mp3",
    "librivox-stereo-0880L-0930R.wav",
)
FUZZ_SECONDS = 120


def fuzz(audio: str, seed: int, cases_per_file: int) -> dict[str, int]:
    """Decode damaged copies of the corpus; any exception other than AudioDecodeError propagates."""
    rng = random.Random(seed)
    outcomes: dict[str, int] = {}
    declarations: list[dict[str, Any]] = [
        {},
        {"encoding": AudioEncoding.OGG_OPUS},
        {"encoding": AudioEncoding.MP3},
        {"encoding": AudioEncoding.LINEAR16_PCM, "sample_rate_hertz": 16000},
    ]
    for name in FUZZ_FILES:
        original = (Path(audio) / name).read_bytes()
        for case in range(cases_per_file):
            data = bytearray(original)
            kind = case % 3
            if kind == 0:  # truncated anywhere, including inside the headers
                data = data[: rng.randrange(len(data))]
            elif kind == 1:  # bit flips, from a few to many
                for _ in range(rng.choice((1, 4, 32, 512))):
                    index = rng.randrange(len(data))
                    data[index] ^= 1 << rng.randrange(8)
            else:  # a valid beginning followed by random bytes
                data = data[: rng.randrange(1, 400)] + bytearray(rng.randbytes(rng.randrange(8000)))
            outcome: str
            try:
                decoded = _decode(bytes(data), **rng.choice(declarations))
            except AudioDecodeError as error:
                outcome = error.code_name
            else:
                lengths = {len(channel) for channel in decoded.channels}
                assert len(lengths) == 1
                assert all(channel.dtype == np.int16 for channel in decoded.channels)
                assert decoded.duration_seconds < 60
                outcome = "decoded"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


def test_damaged_copies_of_every_container_fail_cleanly_or_decode() -> None:
    # In a child process, so that a crash in native code fails this test instead of killing pytest,
    # and a hang is caught by the timeout.
    code = (
        "import json, sys\n"
        "from tests.unit.test_selfhosted_decoding import fuzz\n"
        "print(json.dumps(fuzz(sys.argv[1], 20240521, 90)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(audio_dir())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    outcomes: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    assert sum(outcomes.values()) == 90 * len(FUZZ_FILES)
    assert outcomes.get("decoded", 0) > 0
    assert outcomes.get("CorruptAudio", 0) > 0
    assert set(outcomes) <= {
        "decoded",
        "EmptyAudio",
        "CorruptAudio",
        "AudioEncodingMismatch",
        "UnknownAudioFormat",
        "UnsupportedAudio",
    }


# --------------------------------------------------------------------------------------------------------
# Decoding in windows (what the service does)
# --------------------------------------------------------------------------------------------------------


def _open(data: bytes, **declared: Any) -> AudioStream:
    values: dict[str, Any] = {"encoding": None, "sample_rate_hertz": None, "channel_count": None}
    values.update(declared)
    return open_audio(data, **values)


@pytest.mark.parametrize(
    ("name", "declared"),
    [
        ("librivox-stereo-0880L-0930R.wav", {}),
        ("librivox-all.ogg", {}),
        ("librivox-0870.mp3", {}),
        ("librivox-0870-8k.pcm", {"encoding": AudioEncoding.LINEAR16_PCM, "sample_rate_hertz": 8000}),
    ],
)
def test_pieces_put_together_are_the_whole_decoded_audio(name: str, declared: dict[str, Any]) -> None:
    data = _read(name)
    whole = _decode(data, **declared)
    stream = _open(data, **declared)
    assert stream.duration_seconds is None

    pieces: dict[int, list[PcmSegment]] = {}
    for segment in stream.segments(window_seconds=1.0):
        pieces.setdefault(segment.channel, []).append(segment)

    assert stream.duration_seconds == whole.duration_seconds
    assert sorted(pieces) == list(range(1, whole.channel_count + 1))
    for channel, segments in pieces.items():
        joined = np.concatenate([segment.pcm for segment in segments])
        np.testing.assert_array_equal(joined, whole.channels[channel - 1])
        assert all(len(segment.pcm) <= 16000 for segment in segments)
        assert segments[0].start_seconds == 0
        for before, after in itertools.pairwise(segments):
            assert before.end_seconds == after.start_seconds  # no gap, no overlap
        assert segments[-1].end_seconds == pytest.approx(whole.duration_seconds)
    with pytest.raises(RuntimeError):
        next(iter(stream.blocks()))  # decoded once


def test_the_window_shrinks_with_the_channel_count() -> None:
    wav = _read("librivox-all.wav")  # 28 s of mono at 16 kHz
    mono = np.frombuffer(wav[44:], dtype="<i2")
    for channels, window in ((1, 300), (2, 240), (4, 120), (8, 60)):
        repeated = np.tile(mono, (channels, 12)).T.astype("<i2")  # 335 s of each channel
        stream = _open(
            repeated.tobytes(),
            encoding=AudioEncoding.LINEAR16_PCM,
            sample_rate_hertz=16000,
            channel_count=channels,
        )
        longest = max(len(segment.pcm) for segment in stream.segments())
        assert 2 / 3 * window * 16000 <= longest <= window * 16000, channels


def test_pieces_end_in_a_pause() -> None:
    rng = np.random.default_rng(3)
    loud = rng.integers(-8000, 8000, size=16000 * 10, dtype=np.int16)
    loud[16000 * 8 : 16000 * 8 + 8000] = 0  # half a second of silence at 8 s, in the last third
    stream = _open(loud.astype("<i2").tobytes(), encoding=AudioEncoding.LINEAR16_PCM, sample_rate_hertz=16000)

    first, *_ = stream.segments(window_seconds=10.0 - 1e-9)

    assert 8.0 <= first.end_seconds <= 8.5


def test_audio_too_long_for_the_limit_fails_while_decoding_in_pieces() -> None:
    stream = _open(_read("librivox-0870.ogg"), max_seconds=5)
    with pytest.raises(AudioDecodeError) as raised:
        for _ in stream.segments(window_seconds=1.0):
            pass
    assert raised.value.code_name == Reason.UNSUPPORTED_AUDIO
