"""Format and duration detection, against the real recordings in ../shared/audio and synthesized headers."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.logic.audio_probe import (
    HEAD_BYTES,
    TAIL_BYTES,
    AudioProbeError,
    DeclaredAudio,
    detect_container,
    needs_tail,
    probe_audio,
)
from speechkit_operator.models.audio import AudioInfo, ContainerFormat
from speechkit_operator.models.job import Reason

AUDIO_DIR = Path(__file__).parents[2].parent / "shared" / "audio"
MISSING_AUDIO = (
    f"SHARED AUDIO MISSING: {AUDIO_DIR} does not exist, so the probe is NOT being checked against real "
    "recordings; run the tests from a checkout that has ../shared next to the repository"
)


def _manifest() -> dict[str, dict[str, Any]]:
    path = AUDIO_DIR / "manifest.json"
    if not path.is_file():
        return {}
    files: dict[str, dict[str, Any]] = json.loads(path.read_text())["files"]
    return files


MANIFEST = _manifest()
requires_audio = pytest.mark.skipif(not AUDIO_DIR.is_dir(), reason=MISSING_AUDIO)
MANIFEST_CASES = [pytest.param(name, entry, id=name) for name, entry in MANIFEST.items()] or [
    pytest.param("", {}, id="no-shared-audio", marks=pytest.mark.skip(reason=MISSING_AUDIO))
]
TOLERANCE = {"mp3": 0.1}  # seconds; 0.05 for everything else
FLOAT_SLACK = 1e-9


def probe_file(data: bytes, declared: DeclaredAudio | None = None) -> AudioInfo:
    """Probe ``data`` the way the operator does: a ranged head, and the tail only when asked for."""
    head = data[:HEAD_BYTES]
    tail = data[-TAIL_BYTES:] if needs_tail(head) else None
    return probe_audio(head, len(data), declared or DeclaredAudio(), tail)


def probe_error(
    data: bytes, declared: DeclaredAudio | None = None, size: int | None = None
) -> AudioProbeError:
    with pytest.raises(AudioProbeError) as caught:
        head = data[:HEAD_BYTES]
        tail = data[-TAIL_BYTES:] if needs_tail(head) else None
        probe_audio(head, len(data) if size is None else size, declared or DeclaredAudio(), tail)
    return caught.value


def real(name: str) -> bytes:
    if not AUDIO_DIR.is_dir():
        pytest.skip(MISSING_AUDIO)
    return (AUDIO_DIR / name).read_bytes()


# --------------------------------------------------------------------------------------------------------
# Every real recording
# --------------------------------------------------------------------------------------------------------


def _declared_for(entry: dict[str, Any]) -> DeclaredAudio:
    if entry["format"] == "raw":
        return DeclaredAudio(AudioEncoding.LINEAR16_PCM, entry["sampleRateHertz"], None)
    return DeclaredAudio()


@pytest.mark.parametrize(("name", "entry"), MANIFEST_CASES)
def test_manifest_file_is_probed_as_recorded(name: str, entry: dict[str, Any]) -> None:
    data = real(name)
    info = probe_file(data, _declared_for(entry))

    assert info.encoding is AudioEncoding(entry["encoding"])
    assert info.container is ContainerFormat(entry["format"])
    assert info.sample_rate_hertz == entry["sampleRateHertz"]
    assert info.channels == entry["channels"]
    assert info.size_bytes == len(data)
    assert info.duration_seconds is not None
    tolerance = TOLERANCE.get(entry["format"], 0.05)
    assert abs(info.duration_seconds - entry["seconds"]) <= tolerance + FLOAT_SLACK, (
        info.duration_seconds,
        entry["seconds"],
    )
    assert info.duration_seconds == round(info.duration_seconds, 3)


@pytest.mark.parametrize(("name", "entry"), MANIFEST_CASES)
def test_manifest_file_probes_the_same_with_its_encoding_declared(name: str, entry: dict[str, Any]) -> None:
    data = real(name)
    encoding = AudioEncoding(entry["encoding"])
    if encoding is AudioEncoding.LINEAR16_PCM:
        declared = DeclaredAudio(encoding, entry["sampleRateHertz"], entry["channels"])
    else:
        declared = DeclaredAudio(encoding, None, None)
    assert probe_file(data, declared) == probe_file(data, _declared_for(entry))


@pytest.mark.parametrize(("name", "entry"), MANIFEST_CASES)
def test_manifest_file_container_and_tail_need(name: str, entry: dict[str, Any]) -> None:
    head = real(name)[:HEAD_BYTES]
    assert detect_container(head) is ContainerFormat(entry["format"])
    assert needs_tail(head) is (entry["format"] == "ogg")


@pytest.mark.parametrize(("name", "entry"), MANIFEST_CASES)
def test_manifest_file_declared_as_something_else_is_a_mismatch(name: str, entry: dict[str, Any]) -> None:
    data = real(name)
    actual = AudioEncoding(entry["encoding"])
    for other in AudioEncoding:
        if other is actual:
            continue
        error = probe_error(data, DeclaredAudio(other, 16000, None))
        assert error.reason == Reason.AUDIO_ENCODING_MISMATCH, (other, error.message)
        assert other.value in error.message
        if entry["format"] != "raw":
            assert actual.value in error.message


@requires_audio
@pytest.mark.parametrize("name", ["librivox-0870.ogg", "librivox-all.ogg"])
def test_ogg_without_tail_has_unknown_duration(name: str) -> None:
    data = real(name)
    info = probe_audio(data[:HEAD_BYTES], len(data), DeclaredAudio(), None)
    assert info.encoding is AudioEncoding.OGG_OPUS
    assert info.channels == 1
    assert info.sample_rate_hertz == 48000
    assert info.duration_seconds is None


@requires_audio
def test_ogg_tail_ignores_trailing_garbage_that_looks_like_a_page() -> None:
    data = real("librivox-0870.ogg")
    expected = probe_file(data).duration_seconds
    fake_page = b"OggS\x00\x04" + (10**9).to_bytes(8, "little") + data[14:18] + bytes(9) + b"junk"
    tail = (data + fake_page)[-TAIL_BYTES:]
    info = probe_audio(data[:HEAD_BYTES], len(data) + len(fake_page), DeclaredAudio(), tail)
    assert info.duration_seconds == expected


@requires_audio
def test_ogg_tail_skips_a_damaged_last_page() -> None:
    data = bytearray(real("librivox-0870.ogg"))
    data[-1] ^= 0xFF  # the last page's checksum no longer matches: fall back to the page before it
    info = probe_file(bytes(data))
    assert info.duration_seconds is not None
    assert 6.5 < info.duration_seconds < 7.1 - 0.05


@requires_audio
def test_ogg_tail_without_any_page_gives_unknown_duration() -> None:
    data = real("librivox-all.ogg")
    info = probe_audio(data[:HEAD_BYTES], len(data), DeclaredAudio(), bytes(1000))
    assert info.duration_seconds is None


@requires_audio
@pytest.mark.parametrize("name", ["librivox-0870.ogg", "librivox-0870.wav", "librivox-0870.mp3"])
def test_truncated_real_headers_are_corrupt_never_a_crash(name: str) -> None:
    data = real(name)
    header_end = {"ogg": 47, "wav": 44, "mp3": 4}[name.rsplit(".", 1)[1]]
    for length in range(4, header_end):
        error = probe_error(data[:length])
        assert error.reason == Reason.CORRUPT_AUDIO, (length, error.message)


@requires_audio
@pytest.mark.parametrize("name", sorted(MANIFEST) or ["librivox-0870.wav"])
def test_prefixes_and_byte_flips_never_crash(name: str) -> None:
    data = real(name)[:4096]
    rng = random.Random(name)
    samples = [data[:length] for length in range(1, 200)]
    for _ in range(300):
        garbled = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            garbled[rng.randrange(0, 120)] = rng.randrange(256)
        samples.append(bytes(garbled))
    for sample in samples:
        for declared in (DeclaredAudio(), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 16000, 1)):
            try:
                info = probe_audio(sample, len(sample), declared, sample)
            except AudioProbeError as error:
                assert error.reason in {
                    "EmptyAudio",
                    "UnknownAudioFormat",
                    "UnsupportedAudio",
                    "AudioEncodingMismatch",
                    "CorruptAudio",
                }
                assert error.message
            else:
                assert info.size_bytes == len(sample)


# --------------------------------------------------------------------------------------------------------
# Synthesized WAV
# --------------------------------------------------------------------------------------------------------

PCM_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def chunk(chunk_id: bytes, body: bytes, size: int | None = None) -> bytes:
    declared = len(body) if size is None else size
    return chunk_id + declared.to_bytes(4, "little") + body + (b"\x00" if len(body) % 2 else b"")


def fmt_body(
    *, tag: int = 1, channels: int = 1, rate: int = 16000, bits: int = 16, sub_tag: int | None = None
) -> bytes:
    block = channels * bits // 8
    body = (
        tag.to_bytes(2, "little")
        + channels.to_bytes(2, "little")
        + rate.to_bytes(4, "little")
        + (rate * block).to_bytes(4, "little")
        + block.to_bytes(2, "little")
        + bits.to_bytes(2, "little")
    )
    if sub_tag is not None:
        body += (22).to_bytes(2, "little") + bits.to_bytes(2, "little") + (4).to_bytes(4, "little")
        body += sub_tag.to_bytes(2, "little") + PCM_GUID_TAIL
    return body


def make_wav(
    *,
    fmt: bytes | None = None,
    samples: bytes = bytes(32000),
    before: bytes = b"",
    between: bytes = b"",
    data_size: int | None = None,
    riff: bytes = b"RIFF",
) -> bytes:
    body = b"WAVE" + before + chunk(b"fmt ", fmt if fmt is not None else fmt_body()) + between
    body += chunk(b"data", samples, data_size)
    return riff + len(body).to_bytes(4, "little") + body


def test_plain_wav() -> None:
    info = probe_file(make_wav(samples=bytes(48000)))
    assert (info.encoding, info.container) == (AudioEncoding.LINEAR16_PCM, ContainerFormat.WAV)
    assert (info.sample_rate_hertz, info.channels, info.duration_seconds) == (16000, 1, 1.5)


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_wav_at_every_supported_rate(rate: int) -> None:
    info = probe_file(make_wav(fmt=fmt_body(rate=rate, channels=2), samples=bytes(rate * 4)))
    assert (info.sample_rate_hertz, info.channels, info.duration_seconds) == (rate, 2, 1.0)


def test_wav_24_bit_is_unsupported() -> None:
    error = probe_error(make_wav(fmt=fmt_body(bits=24), samples=bytes(48000)))
    assert error.reason == Reason.UNSUPPORTED_AUDIO
    assert "24-bit" in error.message
    assert "16-bit" in error.message


@pytest.mark.parametrize("rate", [44100, 22050, 32000, 11025])
def test_wav_at_unsupported_rate_asks_for_resampling(rate: int) -> None:
    error = probe_error(make_wav(fmt=fmt_body(rate=rate)))
    assert error.reason == Reason.UNSUPPORTED_AUDIO
    assert str(rate) in error.message
    for supported in ("8000", "16000", "48000"):
        assert supported in error.message
    assert "resample" in error.message


def test_wav_at_unsupported_rate_is_refused_even_when_48k_is_declared() -> None:
    error = probe_error(
        make_wav(fmt=fmt_body(rate=44100)), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 48000, None)
    )
    assert error.reason == Reason.UNSUPPORTED_AUDIO


@pytest.mark.parametrize(
    ("tag", "name"), [(3, "IEEE float"), (6, "A-law"), (7, "mu-law"), (0x11, "IMA ADPCM")]
)
def test_wav_with_compressed_or_float_samples_names_the_format(tag: int, name: str) -> None:
    error = probe_error(make_wav(fmt=fmt_body(tag=tag, bits=8 if tag in (6, 7) else 32)))
    assert error.reason == Reason.UNSUPPORTED_AUDIO
    assert name in error.message


def test_wav_extensible_pcm_is_accepted() -> None:
    fmt = fmt_body(tag=0xFFFE, channels=2, rate=48000, sub_tag=1)
    info = probe_file(make_wav(fmt=fmt, samples=bytes(48000 * 4 * 2)))
    assert (info.encoding, info.sample_rate_hertz, info.channels, info.duration_seconds) == (
        AudioEncoding.LINEAR16_PCM,
        48000,
        2,
        2.0,
    )


def test_wav_extensible_float_is_unsupported() -> None:
    error = probe_error(make_wav(fmt=fmt_body(tag=0xFFFE, bits=32, sub_tag=3)))
    assert error.reason == Reason.UNSUPPORTED_AUDIO
    assert "IEEE float" in error.message


def test_wav_extensible_with_unknown_guid_is_unsupported() -> None:
    fmt = fmt_body(tag=0xFFFE, sub_tag=1)[:-14] + bytes(14)
    assert probe_error(make_wav(fmt=fmt)).reason == Reason.UNSUPPORTED_AUDIO


def test_wav_extensible_with_short_fmt_chunk_is_corrupt() -> None:
    assert probe_error(make_wav(fmt=fmt_body(tag=0xFFFE))).reason == Reason.CORRUPT_AUDIO


def test_wav_with_list_chunk_before_fmt_and_odd_sized_chunks() -> None:
    listing = chunk(b"LIST", b"INFOISFT" + (7).to_bytes(4, "little") + b"Lavf58\x00")  # odd: padded
    junk = chunk(b"junk", b"abc")  # odd, between fmt and data
    data = make_wav(before=listing, between=junk, samples=bytes(16000))
    assert len(listing) % 2 == 0 and b"fmt " not in data[:20]
    info = probe_file(data)
    assert (info.sample_rate_hertz, info.channels, info.duration_seconds) == (16000, 1, 0.5)


def test_wav_with_unknown_data_size_uses_the_object_size() -> None:
    data = make_wav(samples=bytes(64000), data_size=0xFFFFFFFF)
    assert probe_file(data).duration_seconds == 2.0


def test_wav_with_oversized_data_size_uses_the_object_size() -> None:
    data = make_wav(samples=bytes(64000), data_size=10**9)
    assert probe_file(data).duration_seconds == 2.0


def test_wav_with_zero_data_size_from_a_streaming_writer_uses_the_object_size() -> None:
    assert probe_file(make_wav(samples=bytes(16000), data_size=0)).duration_seconds == 0.5


def test_wav_without_samples_is_empty() -> None:
    assert probe_error(make_wav(samples=b"")).reason == Reason.EMPTY_AUDIO


def test_rf64_takes_the_data_size_from_ds64() -> None:
    samples = bytes(96000)
    ds64 = chunk(b"ds64", (0).to_bytes(8, "little") + len(samples).to_bytes(8, "little") + bytes(12))
    data = make_wav(riff=b"RF64", before=ds64, samples=samples, data_size=0xFFFFFFFF)
    data += bytes(100)  # trailing bytes that are not audio
    assert detect_container(data) is ContainerFormat.WAV
    assert probe_file(data).duration_seconds == 3.0


def test_wav_header_larger_than_the_head_is_corrupt_with_a_reason() -> None:
    data = make_wav(before=chunk(b"LIST", bytes(HEAD_BYTES + 10)))
    error = probe_error(data)
    assert error.reason == Reason.CORRUPT_AUDIO
    assert "first 65536 bytes" in error.message


def test_wav_without_fmt_chunk_is_corrupt() -> None:
    body = b"WAVE" + chunk(b"data", bytes(100))
    error = probe_error(b"RIFF" + len(body).to_bytes(4, "little") + body)
    assert error.reason == Reason.CORRUPT_AUDIO
    assert "fmt" in error.message


def test_wav_with_zero_channels_is_corrupt() -> None:
    assert probe_error(make_wav(fmt=fmt_body(channels=0))).reason == Reason.CORRUPT_AUDIO


def test_every_truncation_of_a_wav_header_is_corrupt() -> None:
    data = make_wav()
    header_length = data.index(b"data") + 8
    for length in range(4, header_length):
        error = probe_error(data[:length])
        assert error.reason == Reason.CORRUPT_AUDIO, length
    # the same bytes as the head of a much larger object
    assert probe_error(data[:30], size=len(data)).reason == Reason.CORRUPT_AUDIO


def test_riff_that_is_not_wave_is_unsupported() -> None:
    data = b"RIFF" + (100).to_bytes(4, "little") + b"AVI LIST" + bytes(100)
    assert detect_container(data) is ContainerFormat.RAW
    error = probe_error(data, DeclaredAudio(AudioEncoding.LINEAR16_PCM, 16000, None))
    assert error.reason == Reason.UNSUPPORTED_AUDIO
    assert "AVI" in error.message


def test_wav_declared_as_mp3_is_a_mismatch_naming_both() -> None:
    error = probe_error(make_wav(), DeclaredAudio(AudioEncoding.MP3, None, None))
    assert error.reason == Reason.AUDIO_ENCODING_MISMATCH
    assert "MP3" in error.message
    assert "LINEAR16_PCM" in error.message
    assert "audioEncoding" in error.message


def test_wav_declared_at_another_rate_is_a_mismatch_naming_both() -> None:
    error = probe_error(make_wav(), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 8000, None))
    assert error.reason == Reason.AUDIO_ENCODING_MISMATCH
    assert "8000" in error.message
    assert "16000" in error.message
    assert "sampleRateHertz" in error.message


def test_wav_declared_with_another_channel_count_is_a_mismatch_naming_both() -> None:
    error = probe_error(make_wav(fmt=fmt_body(channels=2)), DeclaredAudio(None, None, 1))
    assert error.reason == Reason.AUDIO_ENCODING_MISMATCH
    assert "audioChannelCount is 1" in error.message
    assert "2 channels" in error.message


def test_wav_declared_consistently_is_accepted() -> None:
    info = probe_file(make_wav(fmt=fmt_body(channels=2)), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 16000, 2))
    assert (info.sample_rate_hertz, info.channels, info.duration_seconds) == (16000, 2, 0.5)


# --------------------------------------------------------------------------------------------------------
# Empty, headerless, unknown and foreign
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "declared",
    [DeclaredAudio(), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 16000, 1), DeclaredAudio(AudioEncoding.MP3)],
)
def test_empty_object(declared: DeclaredAudio) -> None:
    with pytest.raises(AudioProbeError) as caught:
        probe_audio(b"", 0, declared)
    assert caught.value.reason == Reason.EMPTY_AUDIO


def test_raw_pcm_with_declared_encoding_and_rate() -> None:
    info = probe_file(bytes(32000), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 8000, None))
    assert (info.encoding, info.container) == (AudioEncoding.LINEAR16_PCM, ContainerFormat.RAW)
    assert (info.sample_rate_hertz, info.channels, info.duration_seconds, info.size_bytes) == (
        8000,
        1,
        2.0,
        32000,
    )


def test_raw_pcm_uses_the_declared_channel_count() -> None:
    info = probe_file(bytes(32000), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 8000, 2))
    assert (info.channels, info.duration_seconds) == (2, 1.0)


def test_raw_duration_is_rounded_to_milliseconds() -> None:
    info = probe_file(bytes(2 * 12345), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 48000, None))
    assert info.duration_seconds == 0.257


def test_raw_without_declared_encoding_is_unknown() -> None:
    error = probe_error(bytes(1000))
    assert error.reason == Reason.UNKNOWN_AUDIO_FORMAT
    assert "audioEncoding" in error.message
    assert "sampleRateHertz" in error.message


def test_raw_without_declared_rate_is_unknown() -> None:
    error = probe_error(bytes(1000), DeclaredAudio(AudioEncoding.LINEAR16_PCM, None, None))
    assert error.reason == Reason.UNKNOWN_AUDIO_FORMAT
    assert "sampleRateHertz" in error.message


def test_raw_at_unsupported_declared_rate() -> None:
    error = probe_error(bytes(1000), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 44100, None))
    assert error.reason == Reason.UNSUPPORTED_AUDIO
    assert "44100" in error.message


@pytest.mark.parametrize("encoding", [AudioEncoding.OGG_OPUS, AudioEncoding.MP3])
def test_declared_container_encoding_without_its_magic_is_a_mismatch(encoding: AudioEncoding) -> None:
    error = probe_error(bytes(range(256)) * 4, DeclaredAudio(encoding, None, None))
    assert error.reason == Reason.AUDIO_ENCODING_MISMATCH
    assert encoding.value in error.message


@pytest.mark.parametrize(
    ("data", "encoding"),
    [(b"Og", AudioEncoding.OGG_OPUS), (b"ID", AudioEncoding.MP3), (b"\xff\xfb", AudioEncoding.MP3)],
)
def test_declared_container_encoding_with_cut_off_magic_is_corrupt(
    data: bytes, encoding: AudioEncoding
) -> None:
    assert probe_error(data, DeclaredAudio(encoding, None, None)).reason == Reason.CORRUPT_AUDIO


def test_pcm_that_starts_like_an_mp3_frame_stays_raw() -> None:
    data = bytes.fromhex("fff338c4") + bytes(4000)  # a valid frame header, but no frame follows it
    assert detect_container(data) is ContainerFormat.RAW
    info = probe_file(data, DeclaredAudio(AudioEncoding.LINEAR16_PCM, 16000, None))
    assert info.container is ContainerFormat.RAW
    assert probe_error(data, DeclaredAudio(AudioEncoding.MP3)).reason == Reason.CORRUPT_AUDIO


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"fLaC\x00\x00\x00\x22" + bytes(100), "FLAC"),
        (b"\x00\x00\x00\x20ftypM4A " + bytes(100), "MP4/M4A"),
        (b"\x1aE\xdf\xa3" + bytes(100), "Matroska/WebM"),
        (b"FORM\x00\x00\x00\x64AIFF" + bytes(100), "AIFF"),
        (b"#!AMR\n" + bytes(100), "AMR"),
    ],
)
def test_known_unsupported_formats_are_named(data: bytes, name: str) -> None:
    for declared in (DeclaredAudio(), DeclaredAudio(AudioEncoding.LINEAR16_PCM, 16000, None)):
        error = probe_error(data, declared)
        assert error.reason == Reason.UNSUPPORTED_AUDIO
        assert name in error.message


# --------------------------------------------------------------------------------------------------------
# Synthesized Ogg
# --------------------------------------------------------------------------------------------------------


def ogg_first_page(packet: bytes) -> bytes:
    assert len(packet) < 255
    header = b"OggS\x00\x02" + bytes(8) + (1234).to_bytes(4, "little") + bytes(8) + b"\x01"
    return header + bytes([len(packet)]) + packet


def opus_head(channels: int = 2, pre_skip: int = 312, version: int = 1) -> bytes:
    return (
        b"OpusHead"
        + bytes([version, channels])
        + pre_skip.to_bytes(2, "little")
        + (44100).to_bytes(4, "little")
        + bytes(3)
    )


def test_ogg_opus_stereo_header() -> None:
    data = ogg_first_page(opus_head(channels=2)) + bytes(500)
    info = probe_audio(data, len(data), DeclaredAudio(), None)
    assert (info.encoding, info.container, info.channels, info.sample_rate_hertz) == (
        AudioEncoding.OGG_OPUS,
        ContainerFormat.OGG,
        2,
        48000,
    )
    assert needs_tail(data)


def test_ogg_declared_as_linear16_is_a_mismatch() -> None:
    data = ogg_first_page(opus_head()) + bytes(500)
    error = probe_error(data, DeclaredAudio(AudioEncoding.LINEAR16_PCM, 48000, None))
    assert error.reason == Reason.AUDIO_ENCODING_MISMATCH
    assert "OGG_OPUS" in error.message
    assert "LINEAR16_PCM" in error.message


@pytest.mark.parametrize(
    ("packet", "name"),
    [
        (b"\x01vorbis" + bytes(22), "Vorbis"),
        (b"Speex   " + bytes(72), "Speex"),
        (b"\x7fFLAC" + bytes(40), "FLAC"),
        (b"something else entirely", "not Opus"),
    ],
)
def test_ogg_with_another_codec_is_unsupported(packet: bytes, name: str) -> None:
    error = probe_error(ogg_first_page(packet) + bytes(100))
    assert error.reason == Reason.UNSUPPORTED_AUDIO
    assert name in error.message


def test_ogg_opus_with_zero_channels_is_corrupt() -> None:
    assert probe_error(ogg_first_page(opus_head(channels=0))).reason == Reason.CORRUPT_AUDIO


def test_ogg_opus_with_incompatible_version_is_unsupported() -> None:
    assert probe_error(ogg_first_page(opus_head(version=0x10))).reason == Reason.UNSUPPORTED_AUDIO


# --------------------------------------------------------------------------------------------------------
# Synthesized MP3
# --------------------------------------------------------------------------------------------------------

VERSION_BITS = {1: 3, 2: 2, 25: 0}
LAYER_BITS = {3: 1, 2: 2, 1: 3}


def mpeg_frame(
    *,
    version: int = 1,
    layer: int = 3,
    bitrate_index: int = 9,
    rate_index: int = 0,
    mode: int = 0,
    length: int | None = None,
    payload: bytes = b"",
) -> bytes:
    word = (
        (0x7FF << 21)
        | (VERSION_BITS[version] << 19)
        | (LAYER_BITS[layer] << 17)
        | (1 << 16)  # no CRC
        | (bitrate_index << 12)
        | (rate_index << 10)
        | (mode << 6)
    )
    frame = word.to_bytes(4, "big") + payload
    return frame + bytes((length or 417) - len(frame))


def id3_tag(body_size: int) -> bytes:
    syncsafe = bytes((body_size >> shift) & 0x7F for shift in (21, 14, 7, 0))
    return b"ID3\x04\x00\x00" + syncsafe + bytes(body_size)


def test_cbr_mp3_duration_comes_from_the_bitrate() -> None:
    # MPEG-1 Layer III, 128 kbit/s, 44100 Hz, stereo: 417-byte frames
    data = mpeg_frame() * 300
    info = probe_file(data)
    assert (info.encoding, info.container) == (AudioEncoding.MP3, ContainerFormat.MP3)
    assert (info.sample_rate_hertz, info.channels) == (44100, 2)
    assert info.duration_seconds == round(len(data) * 8 / 128000, 3)


def test_mp3_behind_an_id3v2_tag_with_syncsafe_size() -> None:
    frames = mpeg_frame(mode=3) * 100
    data = id3_tag(300) + frames  # 300 needs two syncsafe bytes: 0x02 0x2C
    assert detect_container(data) is ContainerFormat.MP3
    info = probe_file(data)
    assert (info.sample_rate_hertz, info.channels) == (44100, 1)
    assert info.duration_seconds == round(len(frames) * 8 / 128000, 3)


def test_mp3_behind_an_id3_tag_with_padding_before_the_first_frame() -> None:
    data = id3_tag(50) + bytes(37) + mpeg_frame() * 10
    assert probe_file(data).sample_rate_hertz == 44100


def test_mp3_whose_id3_tag_is_longer_than_the_head() -> None:
    data = id3_tag(HEAD_BYTES * 2) + mpeg_frame() * 10
    info = probe_file(data)
    assert info.encoding is AudioEncoding.MP3
    assert info.sample_rate_hertz is None
    assert info.duration_seconds is None
    assert info.size_bytes == len(data)


def test_mp3_id3_tag_with_nothing_after_it_is_corrupt() -> None:
    assert probe_error(id3_tag(100)).reason == Reason.CORRUPT_AUDIO


def test_mp3_id3_tag_with_malformed_size_is_corrupt() -> None:
    data = b"ID3\x04\x00\x00\x00\x00\x80\x00" + mpeg_frame() * 3
    assert probe_error(data).reason == Reason.CORRUPT_AUDIO


def test_xing_frame_count_gives_the_duration() -> None:
    # MPEG-1 stereo: the Xing tag follows 32 bytes of side information
    xing = bytes(32) + b"Xing" + (1).to_bytes(4, "big") + (1000).to_bytes(4, "big")
    data = mpeg_frame(payload=xing) + mpeg_frame() * 50
    assert probe_file(data).duration_seconds == round(1000 * 1152 / 44100, 3)


def test_info_tag_with_lame_delay_and_padding() -> None:
    lame = b"LAME3.100" + bytes(12) + bytes([576 >> 4, ((576 & 0xF) << 4) | (1000 >> 8), 1000 & 0xFF])
    info_tag = b"Info" + (0xF).to_bytes(4, "big") + (1000).to_bytes(4, "big") + bytes(4 + 100 + 4)
    data = mpeg_frame(payload=bytes(32) + info_tag + lame) + mpeg_frame() * 50
    assert probe_file(data).duration_seconds == round((1000 * 1152 - 576 - 1000) / 44100, 3)


def test_vbri_frame_count_gives_the_duration() -> None:
    # MPEG-2 Layer III, 16000 Hz, mono, 64 kbit/s: 288-byte frames of 576 samples; VBRI sits at byte 36
    vbri = bytes(32) + b"VBRI" + bytes(10) + (500).to_bytes(4, "big")

    def frame(payload: bytes = b"") -> bytes:
        return mpeg_frame(version=2, rate_index=2, mode=3, bitrate_index=8, length=288, payload=payload)

    data = frame(vbri) + frame() * 20
    info = probe_file(data)
    assert (info.sample_rate_hertz, info.channels, info.duration_seconds) == (16000, 1, 18.0)


def test_mpeg_2_5_at_8000_hz() -> None:
    # MPEG-2.5 Layer III, 8000 Hz, 16 kbit/s, joint stereo: 72 * 16000 / 8000 = 144-byte frames
    data = mpeg_frame(version=25, rate_index=2, bitrate_index=2, mode=1, length=144) * 100
    info = probe_file(data)
    assert (info.sample_rate_hertz, info.channels) == (8000, 2)
    assert info.duration_seconds == 7.2


def test_headerless_pcm_that_starts_like_a_free_format_mpeg_header_is_pcm() -> None:
    """Samples -1, 0, ... (``ff ff 00 00``: a free-format MPEG-1 Layer I header, which says nothing of
    where its next frame is) were taken for MP3 and refused as Layer I audio."""
    pcm = (b"\xff\xff\x00\x00" + bytes(4)) * 4000  # 16000 samples of near-silence: 1 s at 16 kHz
    assert detect_container(pcm) is ContainerFormat.RAW
    info = probe_file(pcm, DeclaredAudio(AudioEncoding.LINEAR16_PCM, 16000, None))
    assert (info.encoding, info.container) == (AudioEncoding.LINEAR16_PCM, ContainerFormat.RAW)
    assert info.duration_seconds == 1.0
    # Free-format Layer I frames neither (SpeechKit takes Layer III only, and they look like that PCM) ...
    assert detect_container(mpeg_frame(layer=1, bitrate_index=0, length=1000) * 10) is ContainerFormat.RAW
    # ... but a free-format MP3 (Layer III) is one: each header is followed by the next.
    free = mpeg_frame(bitrate_index=0, length=1000) * 10
    assert detect_container(free) is ContainerFormat.MP3
    assert detect_container(id3_tag(100) + free) is ContainerFormat.MP3
    assert probe_file(free).encoding is AudioEncoding.MP3


def test_mpeg_layer_2_is_unsupported() -> None:
    data = mpeg_frame(layer=2, bitrate_index=8, length=417) * 20  # 128 kbit/s at 44100 Hz: 417 bytes
    assert detect_container(data) is ContainerFormat.MP3
    error = probe_error(data)
    assert error.reason == Reason.UNSUPPORTED_AUDIO
    assert "Layer II" in error.message


def test_mp3_declared_as_ogg_is_a_mismatch() -> None:
    error = probe_error(mpeg_frame() * 20, DeclaredAudio(AudioEncoding.OGG_OPUS))
    assert error.reason == Reason.AUDIO_ENCODING_MISMATCH
    assert "OGG_OPUS" in error.message
    assert "MP3" in error.message
