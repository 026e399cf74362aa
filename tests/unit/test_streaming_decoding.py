"""Incremental decoding of streamed audio: LINEAR16_PCM at each accepted rate, Ogg Opus page by page, and
damaged input refused with a message (never another exception)."""

from __future__ import annotations

import re
import struct
import wave

import numpy as np
import pytest
from numpy.typing import NDArray

from speechkit_operator.selfhosted.decoding import decode_audio
from speechkit_operator.selfhosted.streaming.decoding import (
    AudioLimitError,
    LpcmDecoder,
    OggOpusDecoder,
    StreamDecodeError,
    StreamDecoder,
    ogg_crc,
    opus_packet_samples,
)
from tests.support.audio import audio_dir


def stream(decoder: StreamDecoder, data: bytes, piece: int) -> NDArray[np.int16]:
    blocks = [decoder.feed(data[start : start + piece]) for start in range(0, len(data), piece)]
    return np.concatenate([*blocks, decoder.finish()])


def wav_samples(name: str) -> NDArray[np.int16]:
    with wave.open(str(audio_dir() / name)) as recording:
        return np.frombuffer(recording.readframes(recording.getnframes()), dtype="<i2").copy()


def test_lpcm_at_16_khz_passes_through_whatever_the_pieces() -> None:
    pcm = wav_samples("librivox-0880.wav")
    data = pcm.tobytes()
    for piece in (1, 3, 12800, len(data)):
        assert np.array_equal(stream(LpcmDecoder(16000), data, piece), pcm)


@pytest.mark.parametrize(("name", "rate"), [("librivox-0870-8k.pcm", 8000), ("librivox-0870-48k.pcm", 48000)])
def test_lpcm_at_8_and_48_khz_is_resampled_to_16_khz(name: str, rate: int) -> None:
    data = (audio_dir() / name).read_bytes()
    decoded = stream(LpcmDecoder(rate), data, 3333)
    reference = wav_samples("librivox-0870.wav")
    assert abs(len(decoded) - len(reference)) <= 16
    if rate == 48000:  # the same speech, sample for sample (apart from the resampler's filter)
        n = min(len(decoded), len(reference))
        assert np.corrcoef(decoded[:n].astype(float), reference[:n].astype(float))[0, 1] > 0.99


def test_ogg_opus_decodes_page_by_page_like_the_whole_file() -> None:
    data = (audio_dir() / "librivox-all.ogg").read_bytes()
    whole = stream(OggOpusDecoder(), data, len(data))
    assert len(whole) / 16000 == pytest.approx(27.93, abs=0.02)
    for piece in (1000, 3400, 65536):
        assert np.array_equal(stream(OggOpusDecoder(), data, piece), whole)
    # The batch decoder's samples, less Opus's pre-skip (312 samples at 48 kHz: 104 at 16 kHz).
    batch = decode_audio(data, encoding=None, sample_rate_hertz=None, channel_count=None).channels[0]
    n = min(len(whole), len(batch) - 104)
    assert np.corrcoef(whole[:n].astype(float), batch[104 : 104 + n].astype(float))[0, 1] > 0.999


def test_the_ogg_checksum() -> None:
    # An empty page body with the CRC field zeroed, as Ogg computes it (from libogg's own pages).
    data = (audio_dir() / "librivox-all.ogg").read_bytes()
    size = 27 + data[26] + sum(data[27 : 27 + data[26]])
    page = data[:size]
    stored = struct.unpack_from("<I", page, 22)[0]
    assert ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) == stored


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: b"RIFF" + d[4:], "expected an Ogg page (OggS)"),
        (lambda d: d[:200] + bytes([d[200] ^ 0x55]) + d[201:], "checksum does not match"),
        (lambda d: b"Og" + b"\0" * 30, "expected an Ogg page"),
        (lambda d: d[:4] + b"\x01" + d[5:], "unknown Ogg version 1"),
    ],
)
def test_damaged_ogg_is_refused_with_a_reason(damage: object, message: str) -> None:
    data = (audio_dir() / "librivox-all.ogg").read_bytes()
    assert callable(damage)
    with pytest.raises(StreamDecodeError, match=re.escape(message)):
        stream(OggOpusDecoder(), damage(data), 3400)


def test_a_missing_page_and_a_cut_stream_are_refused() -> None:
    data = (audio_dir() / "librivox-all.ogg").read_bytes()
    pages = []
    offset = 0
    while offset < len(data):
        size = 27 + data[offset + 26] + sum(data[offset + 27 : offset + 27 + data[offset + 26]])
        pages.append(data[offset : offset + size])
        offset += size
    with pytest.raises(StreamDecodeError, match="page 3 is missing"):
        stream(OggOpusDecoder(), b"".join(pages[:3] + pages[4:]), 4096)
    with pytest.raises(StreamDecodeError, match="ends inside a page"):
        stream(OggOpusDecoder(), data[:-10], 4096)


def test_ogg_that_holds_no_opus_is_refused() -> None:
    def page(body: bytes, sequence: int, flags: int) -> bytes:
        header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, 0, 1, sequence, 0, 1) + bytes([len(body)])
        crc = ogg_crc(header + body)
        return header[:22] + struct.pack("<I", crc) + header[26:] + body

    vorbis = page(b"\x01vorbis" + b"\0" * 23, 0, 0x02)
    with pytest.raises(StreamDecodeError, match="not OpusHead"):
        stream(OggOpusDecoder(), vorbis, 100)
    head = b"OpusHead" + bytes([1, 6]) + b"\0" * 9
    with pytest.raises(StreamDecodeError, match="6 channels"):
        stream(OggOpusDecoder(), page(head, 0, 0x02), 100)
    not_first = page(b"OpusHead" + bytes([1, 1]) + b"\0" * 9, 0, 0)
    with pytest.raises(StreamDecodeError, match="does not begin a stream"):
        stream(OggOpusDecoder(), not_first, 100)
    garbage_packet = page(b"OpusHead" + bytes([1, 1]) + b"\0" * 9, 0, 0x02) + page(b"OpusTags", 1, 0)
    garbage_packet += page(b"\xff" * 200, 2, 0)
    with pytest.raises(StreamDecodeError, match="cannot be decoded"):
        stream(OggOpusDecoder(), garbage_packet, 100)


# --- Limits: audio that decodes to more than the session may hold -------------------------------------------


def opus_bomb(packet: bytes, pages: int) -> bytes:
    """A valid Ogg Opus stream of tiny packets (255 a page): a TOC byte declares up to 120 ms of audio."""

    def page(lacing: bytes, body: bytes, sequence: int, flags: int = 0) -> bytes:
        header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, 0, 1, sequence, 0, len(lacing)) + lacing
        crc = ogg_crc(header + body)
        return header[:22] + struct.pack("<I", crc) + header[26:] + body

    head = b"OpusHead" + bytes([1, 1]) + struct.pack("<HIhB", 312, 48000, 0, 0)
    out = [page(bytes([len(head)]), head, 0, 0x02), page(b"\x10", b"OpusTags" + b"\0" * 8, 1)]
    out += [page(bytes([len(packet)]) * 255, packet * 255, 2 + n) for n in range(pages)]
    return b"".join(out)


def test_opus_packet_durations_come_from_the_toc_byte() -> None:
    assert opus_packet_samples(bytes([0x18])) == 2880  # SILK 60 ms, one frame
    assert opus_packet_samples(bytes([0x19])) == 5760  # two frames of 60 ms
    assert opus_packet_samples(bytes([0x80])) == 120  # CELT 2.5 ms
    assert opus_packet_samples(bytes([0xFB, 0x03])) == 2880  # CELT 20 ms, code 3: three frames
    assert opus_packet_samples(b"") == 0
    for bad in (bytes([0x1B]), bytes([0x1B, 0x00]), bytes([0x1B, 0x03])):  # no count, 0 frames, 180 ms
        with pytest.raises(ValueError):
            opus_packet_samples(bad)


def test_tiny_opus_packets_stop_at_the_limit_before_they_are_decoded() -> None:
    """40 pages of 255 one-byte SILK 60 ms packets: 11 KB that decode to 612 s. With a limit of 10 s only
    the packets within it are decoded (the rest of the message is not even parsed)."""
    data = opus_bomb(bytes([0x18]), 40)
    decoder = OggOpusDecoder(max_samples=10 * 16000)
    with pytest.raises(AudioLimitError) as raised:
        decoder.feed(data)
    assert 9.9 * 16000 <= len(raised.value.pcm) <= 10 * 16000
    assert decoder._pages.pages < 5
    with pytest.raises(AudioLimitError):
        decoder.feed(b"")


def test_empty_opus_packets_count_toward_the_limit() -> None:
    """Packets that declare no audio cannot be sent by the million: each counts as the shortest (2.5 ms)."""
    with pytest.raises(AudioLimitError):
        OggOpusDecoder(max_samples=16000).feed(opus_bomb(b"", 10))


def test_lpcm_stops_at_the_limit_with_the_samples_up_to_it() -> None:
    decoder = LpcmDecoder(16000, max_samples=1000)
    assert len(decoder.feed(bytes(1600))) == 800
    with pytest.raises(AudioLimitError) as raised:
        decoder.feed(bytes(1600))
    assert len(raised.value.pcm) == 200
    at_8k = LpcmDecoder(8000, max_samples=16000)
    with pytest.raises(AudioLimitError) as raised:
        at_8k.feed(bytes(8000 * 2 * 3))
    assert abs(len(raised.value.pcm) - 16000) < 100
