"""Work out an audio object's format and duration from its first bytes (and, for Ogg, its last bytes).

The caller fetches the first :data:`HEAD_BYTES` of the object with a ranged GET, asks :func:`needs_tail`
whether the last :data:`TAIL_BYTES` are needed too, and hands everything to :func:`probe_audio` together with
what the user declared in ``spec.recognition``. The answer is an :class:`AudioInfo` ready for
``status.audio``, or an :class:`AudioProbeError` whose ``reason`` goes into a condition and whose
``message`` tells the user what to change.

What SpeechKit v2 accepts, and so what passes here:

* ``LINEAR16_PCM``: 16-bit little-endian PCM at 8000, 16000 or 48000 Hz, either in a WAV (RIFF/RF64)
  file or headerless. Headerless audio has no header to read, so the user must declare the encoding and
  the sample rate.
* ``OGG_OPUS``: Opus in an Ogg container; its duration is the last page's granule position.
* ``MP3``: MPEG-1, -2 or -2.5 Layer III, optionally behind an ID3v2 tag.

For Ogg and MP3 the declared ``sampleRateHertz`` and ``audioChannelCount`` are not compared with the
bytes: the API takes both from the stream itself and ignores them for these encodings.

The bytes are untrusted: whatever they hold, :func:`probe_audio` returns an :class:`AudioInfo` whose
duration is finite and non-negative, or raises :class:`AudioProbeError`, never anything else. A
duration far beyond what the object's size can hold at the codec's least possible bitrate (an Ogg
granule position, or an MP3 Xing/VBRI frame count more than ten times too large: a cut upload keeps
the header of the whole file) is corrupt or crafted: ``CorruptAudio``. Parsing takes time linear in
the bytes at hand.

Everything here is a pure function of its arguments: no I/O, no clock, no kopf.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Literal

from speechkit_operator.contracts.stt_v2 import SUPPORTED_PCM_RATES, AudioEncoding
from speechkit_operator.models.audio import AudioInfo, ContainerFormat
from speechkit_operator.models.job import Reason

#: How many leading bytes the caller fetches with a ranged GET.
HEAD_BYTES: int = 64 * 1024
#: How many trailing bytes the caller fetches, only when :func:`needs_tail` says so.
#: An Ogg page is at most 65,307 bytes long, so the last page always fits.
TAIL_BYTES: int = 64 * 1024
#: Larger objects than this are not audio anyone stores (S3 objects end at 5 TiB); their size is
#: refused rather than computed with.
MAX_OBJECT_BYTES: int = 1 << 53

#: The reasons an object is refused for.
ProbeFailure = Literal[
    Reason.EMPTY_AUDIO,
    Reason.UNKNOWN_AUDIO_FORMAT,
    Reason.UNSUPPORTED_AUDIO,
    Reason.AUDIO_ENCODING_MISMATCH,
    Reason.CORRUPT_AUDIO,
]

EMPTY_AUDIO: ProbeFailure = Reason.EMPTY_AUDIO
UNKNOWN_AUDIO_FORMAT: ProbeFailure = Reason.UNKNOWN_AUDIO_FORMAT
UNSUPPORTED_AUDIO: ProbeFailure = Reason.UNSUPPORTED_AUDIO
AUDIO_ENCODING_MISMATCH: ProbeFailure = Reason.AUDIO_ENCODING_MISMATCH
CORRUPT_AUDIO: ProbeFailure = Reason.CORRUPT_AUDIO

_RATES_TEXT = ", ".join(str(rate) for rate in SUPPORTED_PCM_RATES[:-1]) + f" or {SUPPORTED_PCM_RATES[-1]}"
_CONVERT_HINT = (
    "SpeechKit accepts 16-bit PCM (WAV or headerless) at "
    f"{_RATES_TEXT} Hz, Ogg Opus and MP3: convert the file, "
    "e.g. `ffmpeg -i INPUT -c:a libopus OUTPUT.ogg`"
)


class AudioProbeError(Exception):
    """The object cannot be sent to SpeechKit as it is (or as declared).

    ``reason`` is a CamelCase word for conditions and events; ``message`` says what is wrong and what to
    change in the spec (or in the file).
    """

    def __init__(self, reason: ProbeFailure, message: str) -> None:
        super().__init__(message)
        self.reason: ProbeFailure = reason
        self.message: str = message

    def __repr__(self) -> str:
        return f"AudioProbeError({self.reason.value!r}, {self.message!r})"


@dataclass(frozen=True)
class DeclaredAudio:
    """What ``spec.recognition`` says about the audio; ``None`` means "not set"."""

    encoding: AudioEncoding | None = None
    sample_rate_hertz: int | None = None
    channel_count: int | None = None


class _Truncated(Exception):
    """A read past the end of the bytes at hand; turned into ``CorruptAudio`` by the format prober."""


def _uint(buf: bytes, offset: int, length: int, order: Literal["little", "big"] = "little") -> int:
    end = offset + length
    if offset < 0 or end > len(buf):
        raise _Truncated
    return int.from_bytes(buf[offset:end], order)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# --------------------------------------------------------------------------------------------------------
# Container detection
# --------------------------------------------------------------------------------------------------------

_RIFF_IDS = (b"RIFF", b"RF64", b"BW64")
_OGG_MAGIC = b"OggS"
_ID3_MAGIC = b"ID3"


def detect_container(head: bytes) -> ContainerFormat:
    """The container the leading bytes announce; :attr:`ContainerFormat.RAW` when no known magic."""
    if head[:4] in _RIFF_IDS and head[8:12] == b"WAVE":
        return ContainerFormat.WAV
    if head[:4] == _OGG_MAGIC:
        return ContainerFormat.OGG
    if head[:3] == _ID3_MAGIC or _find_mpeg_stream(head, 0, scan=False) is not None:
        return ContainerFormat.MP3
    return ContainerFormat.RAW


def needs_tail(head: bytes) -> bool:
    """Whether :func:`probe_audio` needs the object's last :data:`TAIL_BYTES` to find the duration.

    True for Ogg: its duration is the granule position of the last page.
    """
    return detect_container(head) is ContainerFormat.OGG


def probe_audio(head: bytes, size: int, declared: DeclaredAudio, tail: bytes | None = None) -> AudioInfo:
    """Describe the audio object whose first bytes are ``head`` and whose full size is ``size``.

    ``tail`` is the object's last bytes; it is only used for Ogg, where its absence leaves the duration
    unknown (``None``). Raises :class:`AudioProbeError` when the object cannot be recognised as declared.
    """
    if size <= 0:
        raise AudioProbeError(EMPTY_AUDIO, "The audio object is empty (0 bytes): upload the audio again.")
    if size > MAX_OBJECT_BYTES:
        raise AudioProbeError(
            CORRUPT_AUDIO, f"The audio object's size ({size} bytes) is beyond that of any real audio file."
        )
    if not head:
        raise AudioProbeError(
            CORRUPT_AUDIO, f"The audio object is {size} bytes long but none of its bytes could be read."
        )
    container = detect_container(head)
    try:
        if container is ContainerFormat.WAV:
            info = _probe_wav(head, size, declared)
        elif container is ContainerFormat.OGG:
            info = _probe_ogg(head, size, declared, tail)
        elif container is ContainerFormat.MP3:
            info = _probe_mp3(head, size, declared)
        else:
            info = _probe_raw(head, size, declared)
    except (_Truncated, IndexError, ValueError, OverflowError, ZeroDivisionError):
        # Bytes that do not hold what their header announces: never a crash of the caller.
        raise AudioProbeError(
            CORRUPT_AUDIO,
            f"The {container.value.upper()} header is truncated or garbled; "
            "check that the upload completed and the file plays.",
        ) from None
    duration = info.duration_seconds
    if duration is not None and not (math.isfinite(duration) and duration >= 0):
        raise AudioProbeError(
            CORRUPT_AUDIO, f"The {container.value.upper()} headers give no valid duration ({duration})."
        )
    return info


def _seconds_text(seconds: float) -> str:
    if seconds < 2 * 3600:
        return f"{seconds:.0f} s"
    if seconds < 2 * 86400:
        return f"{seconds:.0f} s ({seconds / 3600:.1f} hours)"
    return f"{seconds:.0f} s ({seconds / 86400:.0f} days)"


def _implausible(what: str, claimed: float, size: int, limit: float, why: str) -> AudioProbeError:
    return AudioProbeError(
        CORRUPT_AUDIO,
        f"{what} says the audio lasts {_seconds_text(claimed)}, but {size} bytes can hold at most "
        f"{_seconds_text(limit)} of it ({why}): the file is corrupt or crafted. Check that it plays "
        "and encode it again.",
    )


def _check_encoding(declared: DeclaredAudio, actual: AudioEncoding, what: str) -> None:
    if declared.encoding is not None and declared.encoding is not actual:
        raise AudioProbeError(
            AUDIO_ENCODING_MISMATCH,
            f"spec.recognition.audioEncoding is {declared.encoding.value} but the object is {what} "
            f"({actual.value}): set spec.recognition.audioEncoding to {actual.value} or remove it.",
        )


def _check_pcm_rate(rate: int, where: str) -> None:
    if rate not in SUPPORTED_PCM_RATES:
        raise AudioProbeError(
            UNSUPPORTED_AUDIO,
            f"{where} is {rate} Hz, but SpeechKit accepts LINEAR16_PCM only at {_RATES_TEXT} Hz: "
            "resample the audio (16000 Hz suits speech), "
            "e.g. `ffmpeg -i INPUT -ar 16000 -c:a pcm_s16le OUTPUT.wav`.",
        )


# --------------------------------------------------------------------------------------------------------
# WAV
# --------------------------------------------------------------------------------------------------------

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# Bytes 2..15 of every KSDATAFORMAT_SUBTYPE_* GUID; the first two bytes are the format tag.
_KSDATAFORMAT_TAIL = bytes.fromhex("000000001000800000aa00389b71")
_WAVE_FORMAT_NAMES = {
    0x0002: "Microsoft ADPCM",
    0x0003: "IEEE float",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0011: "IMA ADPCM",
    0x0031: "GSM 6.10",
    0x0050: "MPEG",
    0x0055: "MP3",
}
_UNKNOWN_SIZE = 0xFFFFFFFF


@dataclass(frozen=True)
class _WavFormat:
    tag: int
    channels: int
    sample_rate: int
    bits: int


def _parse_fmt(head: bytes, body: int, chunk_size: int) -> _WavFormat:
    if chunk_size < 16:
        raise AudioProbeError(
            CORRUPT_AUDIO, f"The WAV fmt chunk is {chunk_size} bytes long; it must hold at least 16."
        )
    tag = _uint(head, body, 2)
    channels = _uint(head, body + 2, 2)
    sample_rate = _uint(head, body + 4, 4)
    bits = _uint(head, body + 14, 2)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if chunk_size < 40:
            raise AudioProbeError(
                CORRUPT_AUDIO,
                f"The WAV fmt chunk says WAVE_FORMAT_EXTENSIBLE but is only {chunk_size} bytes long.",
            )
        subformat = head[body + 24 : body + 40]
        if len(subformat) < 16:
            raise _Truncated
        if subformat[2:] != _KSDATAFORMAT_TAIL:
            raise AudioProbeError(
                UNSUPPORTED_AUDIO,
                f"The WAV file uses WAVE_FORMAT_EXTENSIBLE with an unknown subformat {subformat.hex()}; "
                f"only 16-bit PCM WAV is accepted. {_CONVERT_HINT}.",
            )
        tag = int.from_bytes(subformat[:2], "little")
    return _WavFormat(tag=tag, channels=channels, sample_rate=sample_rate, bits=bits)


def _probe_wav(head: bytes, size: int, declared: DeclaredAudio) -> AudioInfo:
    fmt: _WavFormat | None = None
    ds64_data_size: int | None = None
    pos = 12
    while True:
        if pos + 8 > len(head):
            if pos + 8 > size:
                raise AudioProbeError(
                    CORRUPT_AUDIO,
                    "The WAV file ends before its data chunk: check that the upload completed.",
                )
            raise AudioProbeError(
                CORRUPT_AUDIO,
                f"The WAV file's header chunks do not fit in its first {len(head)} bytes, so its fmt and "
                f"data chunks cannot be found; remove large metadata chunks or convert the file. "
                f"{_CONVERT_HINT}.",
            )
        chunk_id = head[pos : pos + 4]
        chunk_size = _uint(head, pos + 4, 4)
        body = pos + 8
        if chunk_id == b"data":
            break
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(head, body, chunk_size)
        elif chunk_id == b"ds64":
            ds64_data_size = _uint(head, body + 8, 8)
        pos = body + chunk_size + (chunk_size & 1)

    data_offset = body
    data_size = chunk_size
    if fmt is None:
        raise AudioProbeError(
            CORRUPT_AUDIO, "The WAV file has no fmt chunk before its data chunk, so its format is unknown."
        )
    if fmt.tag != _WAVE_FORMAT_PCM:
        name = _WAVE_FORMAT_NAMES.get(fmt.tag, "non-PCM")
        raise AudioProbeError(
            UNSUPPORTED_AUDIO,
            f"The WAV file holds {name} audio (format tag 0x{fmt.tag:04X}); only 16-bit PCM WAV is "
            f"accepted. {_CONVERT_HINT}.",
        )
    if fmt.bits != 16:
        raise AudioProbeError(
            UNSUPPORTED_AUDIO,
            f"The WAV file is {fmt.bits}-bit PCM; SpeechKit accepts 16-bit PCM only: convert it, "
            "e.g. `ffmpeg -i INPUT -c:a pcm_s16le OUTPUT.wav`.",
        )
    if fmt.channels == 0 or fmt.sample_rate == 0:
        raise AudioProbeError(
            CORRUPT_AUDIO,
            f"The WAV header says {fmt.channels} channels at {fmt.sample_rate} Hz, which is not audio.",
        )
    _check_pcm_rate(fmt.sample_rate, "The WAV file's sample rate")
    _check_encoding(declared, AudioEncoding.LINEAR16_PCM, "a WAV file")
    if declared.sample_rate_hertz is not None and declared.sample_rate_hertz != fmt.sample_rate:
        raise AudioProbeError(
            AUDIO_ENCODING_MISMATCH,
            f"spec.recognition.sampleRateHertz is {declared.sample_rate_hertz} but the WAV header says "
            f"{fmt.sample_rate} Hz: set spec.recognition.sampleRateHertz to {fmt.sample_rate} or remove it.",
        )
    if declared.channel_count is not None and declared.channel_count != fmt.channels:
        raise AudioProbeError(
            AUDIO_ENCODING_MISMATCH,
            f"spec.recognition.audioChannelCount is {declared.channel_count} but the WAV header says "
            f"{_plural(fmt.channels, 'channel')}: set spec.recognition.audioChannelCount to "
            f"{fmt.channels} or remove it.",
        )

    available = max(size - data_offset, 0)
    if data_size == _UNKNOWN_SIZE and ds64_data_size is not None and head[:4] != b"RIFF":
        data_size = ds64_data_size
    if data_size == _UNKNOWN_SIZE or data_size > available or (data_size == 0 and available > 0):
        # Streaming writers leave the size unknown (0xFFFFFFFF or 0); a cut object holds less than it says.
        data_size = available
    if data_size == 0:
        raise AudioProbeError(EMPTY_AUDIO, "The WAV file has a header but no audio samples.")
    seconds = data_size / (fmt.sample_rate * fmt.channels * 2)
    return AudioInfo(
        encoding=AudioEncoding.LINEAR16_PCM,
        container=ContainerFormat.WAV,
        sample_rate_hertz=fmt.sample_rate,
        channels=fmt.channels,
        duration_seconds=round(seconds, 3),
        size_bytes=size,
    )


# --------------------------------------------------------------------------------------------------------
# Ogg
# --------------------------------------------------------------------------------------------------------

_OGG_HEADER_SIZE = 27
_OPUS_RATE = 48000
_NO_GRANULE = 0xFFFFFFFFFFFFFFFF
_OGG_CODECS = (
    (b"\x01vorbis", "Vorbis"),
    (b"Speex   ", "Speex"),
    (b"\x7fFLAC", "FLAC"),
    (b"\x80theora", "Theora video"),
    (b"OggFLAC", "FLAC"),
)


#: An Opus packet lasts at most 120 ms and takes at least one byte of an Ogg page (its lacing value),
#: so no Ogg Opus stream holds more than this many seconds per byte.
_OPUS_MAX_SECONDS_PER_BYTE = 0.12
_BIT_REVERSED = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def ogg_crc(*parts: bytes) -> int:
    """The Ogg page checksum of the concatenated ``parts``: CRC-32 with the polynomial 0x04C11DB7, not
    reflected, no initial value or final XOR. It is zlib's reflected CRC-32 over bit-reversed bytes,
    bit-reversed: C speed, so that a tail crowded with fake pages costs milliseconds, not seconds."""
    crc = 0xFFFFFFFF  # zlib's running value for an initial CRC of 0
    for part in parts:
        crc = zlib.crc32(part.translate(_BIT_REVERSED), crc)
    return int(f"{crc ^ 0xFFFFFFFF:032b}"[::-1], 2)


def _probe_ogg(head: bytes, size: int, declared: DeclaredAudio, tail: bytes | None) -> AudioInfo:
    version = _uint(head, 4, 1)
    if version != 0:
        raise AudioProbeError(CORRUPT_AUDIO, f"The Ogg page header has unknown version {version}.")
    serial = _uint(head, 14, 4)
    segments = _uint(head, 26, 1)
    table = head[_OGG_HEADER_SIZE : _OGG_HEADER_SIZE + segments]
    if len(table) < segments:
        raise _Truncated
    packet_length = 0
    for lacing in table:
        packet_length += lacing
        if lacing < 255:
            break
    start = _OGG_HEADER_SIZE + segments
    packet = head[start : start + packet_length]
    if packet.startswith(b"OpusHead"):
        if len(packet) < 19:
            raise _Truncated
        opus_version = packet[8]
        channels = packet[9]
        pre_skip = _uint(packet, 10, 2)
        if opus_version >> 4:
            raise AudioProbeError(
                UNSUPPORTED_AUDIO, f"The Ogg Opus stream has unsupported OpusHead version {opus_version}."
            )
        if channels == 0:
            raise AudioProbeError(CORRUPT_AUDIO, "The Ogg Opus header says the stream has 0 channels.")
    else:
        if len(packet) < 8:
            raise _Truncated
        codec = next((name for magic, name in _OGG_CODECS if packet.startswith(magic)), None)
        found = f"Ogg {codec}" if codec else "an Ogg stream that is not Opus"
        raise AudioProbeError(
            UNSUPPORTED_AUDIO,
            f"The object is {found}; SpeechKit accepts Ogg only with Opus. {_CONVERT_HINT}.",
        )
    _check_encoding(declared, AudioEncoding.OGG_OPUS, "an Ogg Opus file")

    duration: float | None = None
    if tail is not None:
        granule = _last_granule(tail, serial)
        if granule is not None:
            duration = round(max(granule - pre_skip, 0) / _OPUS_RATE, 3)
            limit = size * _OPUS_MAX_SECONDS_PER_BYTE
            if duration > limit:
                raise _implausible(
                    f"The Ogg Opus file's last page (granule position {granule})",
                    duration,
                    size,
                    limit,
                    "an Opus packet lasts at most 120 ms and takes at least one byte",
                )
    return AudioInfo(
        encoding=AudioEncoding.OGG_OPUS,
        container=ContainerFormat.OGG,
        sample_rate_hertz=_OPUS_RATE,
        channels=channels,
        duration_seconds=duration,
        size_bytes=size,
    )


def _last_granule(tail: bytes, serial: int) -> int | None:
    """The granule position of the last intact page of stream ``serial`` in ``tail``, if any."""
    end = len(tail)
    while (pos := tail.rfind(_OGG_MAGIC, 0, end)) >= 0:
        end = pos
        header = tail[pos : pos + _OGG_HEADER_SIZE]
        if len(header) < _OGG_HEADER_SIZE or header[4] != 0:
            continue
        segments = header[26]
        table = tail[pos + _OGG_HEADER_SIZE : pos + _OGG_HEADER_SIZE + segments]
        page_end = pos + _OGG_HEADER_SIZE + segments + sum(table)
        if len(table) < segments or page_end > len(tail):
            continue
        page = tail[pos:page_end]
        granule = int.from_bytes(page[6:14], "little")
        if int.from_bytes(page[14:18], "little") != serial or granule == _NO_GRANULE or granule >> 63:
            continue
        stored_crc = int.from_bytes(page[22:26], "little")
        if ogg_crc(page[:22], b"\x00\x00\x00\x00", page[26:]) != stored_crc:
            continue
        return granule
    return None


# --------------------------------------------------------------------------------------------------------
# MPEG audio (MP3)
# --------------------------------------------------------------------------------------------------------

_MPEG_RATES = {1: (44100, 48000, 32000), 2: (22050, 24000, 16000), 25: (11025, 12000, 8000)}
_MPEG_VERSION_NAMES = {1: "MPEG-1", 2: "MPEG-2", 25: "MPEG-2.5"}
_LAYER_NAMES = {1: "I", 2: "II", 3: "III"}
_BITRATES_KBPS = {
    (1, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (1, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (1, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (2, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (2, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (2, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_LAME_TAGS = (b"LAME", b"Lavc", b"Lavf")


@dataclass(frozen=True)
class _MpegHeader:
    version: int  # 1, 2 or 25 (MPEG-2.5)
    layer: int  # 1, 2 or 3
    protected: bool  # a 16-bit CRC follows the header
    bitrate_kbps: int  # 0 for free format
    sample_rate: int
    padding: int
    mono: bool

    @property
    def samples_per_frame(self) -> int:
        if self.layer == 1:
            return 384
        if self.layer == 3 and self.version != 1:
            return 576
        return 1152

    @property
    def frame_length(self) -> int | None:
        if not self.bitrate_kbps:
            return None
        bits_per_second = self.bitrate_kbps * 1000
        if self.layer == 1:
            return (12 * bits_per_second // self.sample_rate + self.padding) * 4
        return self.samples_per_frame // 8 * bits_per_second // self.sample_rate + self.padding

    @property
    def side_info_length(self) -> int:
        if self.version == 1:
            return 17 if self.mono else 32
        return 9 if self.mono else 17

    def describe(self) -> str:
        return f"{_MPEG_VERSION_NAMES[self.version]} Layer {_LAYER_NAMES[self.layer]}"


def _parse_mpeg_header(buf: bytes, pos: int) -> _MpegHeader | None:
    if pos < 0 or pos + 4 > len(buf):
        return None
    word = int.from_bytes(buf[pos : pos + 4], "big")
    if word >> 21 != 0x7FF:
        return None
    version = {0: 25, 2: 2, 3: 1}.get((word >> 19) & 3)
    layer = {1: 3, 2: 2, 3: 1}.get((word >> 17) & 3)
    bitrate_index = (word >> 12) & 0xF
    rate_index = (word >> 10) & 3
    if version is None or layer is None or bitrate_index == 0xF or rate_index == 3:
        return None
    return _MpegHeader(
        version=version,
        layer=layer,
        protected=not (word >> 16) & 1,
        bitrate_kbps=_BITRATES_KBPS[(min(version, 2), layer)][bitrate_index],
        sample_rate=_MPEG_RATES[version][rate_index],
        padding=(word >> 9) & 1,
        mono=(word >> 6) & 3 == 3,
    )


def _is_stream_at(buf: bytes, pos: int) -> _MpegHeader | None:
    """A frame header at ``pos`` whose successor, when it lies within ``buf``, agrees with it (for a
    free-format header, see :func:`_free_format_follows`)."""
    header = _parse_mpeg_header(buf, pos)
    if header is None:
        return None
    length = header.frame_length
    if length is None:
        return header if _free_format_follows(buf, pos, header) else None
    if pos + length + 4 <= len(buf):
        following = _parse_mpeg_header(buf, pos + length)
        if following is None or (following.version, following.layer, following.sample_rate) != (
            header.version,
            header.layer,
            header.sample_rate,
        ):
            return None
    return header


#: The longest free-format frame looked for: Layer III at 640 kbit/s and 32 kHz is 2,880 bytes.
_FREE_FORMAT_MAX_FRAME = 2881


def _free_format_follows(buf: bytes, pos: int, header: _MpegHeader) -> bool:
    """Whether a free-format header (bitrate index 0: it says nothing of its frame's length) at ``pos``
    begins a stream: Layer III only, whose next free-format header of the same version and rate must
    follow past the frame's side information (or the buffer ends before the longest frame could). A
    free-format MPEG-1 Layer I header is also headerless PCM's samples -1, 0 (``ff ff 00 00``)."""
    if header.layer != 3:
        return False
    limit = pos + _FREE_FORMAT_MAX_FRAME
    candidate = buf.find(b"\xff", pos + 4 + header.side_info_length + 1)
    while 0 <= candidate <= min(limit, len(buf) - 4):
        following = _parse_mpeg_header(buf, candidate)
        if following is not None and (
            following.version,
            following.layer,
            following.sample_rate,
            following.bitrate_kbps,
        ) == (header.version, header.layer, header.sample_rate, 0):
            return True
        candidate = buf.find(b"\xff", candidate + 1)
    return len(buf) - 4 < limit


def _find_mpeg_stream(buf: bytes, start: int, *, scan: bool) -> tuple[int, _MpegHeader] | None:
    """The first frame at ``start`` (or, with ``scan``, at or after it) that begins an MPEG audio stream."""
    last = len(buf) - 4 if scan else start
    pos = start
    while pos <= last:
        header = _is_stream_at(buf, pos)
        if header is not None:
            return pos, header
        pos = buf.find(b"\xff", pos + 1)
        if pos < 0:
            break
    return None


def _probe_mp3(head: bytes, size: int, declared: DeclaredAudio) -> AudioInfo:
    start = 0
    if head[:3] == _ID3_MAGIC:
        flags = _uint(head, 5, 1)
        size_bytes = head[6:10]
        if len(size_bytes) < 4:
            raise _Truncated
        if any(byte & 0x80 for byte in size_bytes):
            raise AudioProbeError(CORRUPT_AUDIO, "The MP3 file's ID3v2 tag has a malformed size.")
        tag_size = 0
        for byte in size_bytes:
            tag_size = (tag_size << 7) | byte
        start = 10 + tag_size + (10 if flags & 0x10 else 0)
        if start >= size:
            raise AudioProbeError(CORRUPT_AUDIO, "The MP3 file holds an ID3 tag but no audio after it.")
        if start + 4 > len(head):
            # The tag (cover art, usually) is longer than the bytes at hand: the file looks like MP3,
            # but its stream parameters stay unknown.
            _check_encoding(declared, AudioEncoding.MP3, "an MP3 file (ID3 tag)")
            return AudioInfo(encoding=AudioEncoding.MP3, container=ContainerFormat.MP3, size_bytes=size)
    found = _find_mpeg_stream(head, start, scan=start > 0)
    if found is None:
        raise AudioProbeError(
            CORRUPT_AUDIO,
            "The MP3 file has an ID3 tag but no MPEG audio frame follows it; check that the file plays.",
        )
    pos, header = found
    if header.layer != 3:
        raise AudioProbeError(
            UNSUPPORTED_AUDIO,
            f"The object is {header.describe()} audio; SpeechKit accepts MPEG audio only as Layer III "
            f"(MP3). {_CONVERT_HINT}.",
        )
    _check_encoding(declared, AudioEncoding.MP3, "an MP3 file")
    return AudioInfo(
        encoding=AudioEncoding.MP3,
        container=ContainerFormat.MP3,
        sample_rate_hertz=header.sample_rate,
        channels=1 if header.mono else 2,
        duration_seconds=_mp3_duration(head, size, pos, header),
        size_bytes=size,
    )


#: An MP3 header's frame count may exceed what the bytes hold (a cut upload keeps the header of the
#: whole file), but not by more than this factor.
_MP3_FRAME_SLACK = 10


def _check_frame_count(frames: int, size: int, pos: int, header: _MpegHeader, tag: str) -> None:
    """``frames`` frames of ``header``'s kind would fit, at their smallest (a header and mono side
    information), in ten times the bytes from ``pos`` on; else the count is corrupt."""
    smallest = 4 + (17 if header.version == 1 else 9)
    fitting = max(size - pos, 0) // smallest
    if frames > fitting * _MP3_FRAME_SLACK:
        seconds = frames * header.samples_per_frame / header.sample_rate
        raise AudioProbeError(
            CORRUPT_AUDIO,
            f"The MP3 file's {tag} header says it has {frames} frames ({_seconds_text(seconds)}), more "
            f"than ten times what its {size} bytes can hold ({fitting} {header.describe()} frames of at "
            f"least {smallest} bytes): the file is corrupt or crafted. Check that it plays and encode "
            "it again.",
        )


def _mp3_duration(head: bytes, size: int, pos: int, header: _MpegHeader) -> float | None:
    samples_per_frame = header.samples_per_frame
    xing = pos + 4 + (2 if header.protected else 0) + header.side_info_length
    if head[xing : xing + 4] in (b"Xing", b"Info"):
        flags = _uint(head, xing + 4, 4, "big")
        if flags & 1:
            frames = _uint(head, xing + 8, 4, "big")
            _check_frame_count(frames, size, pos, header, head[xing : xing + 4].decode("latin-1"))
            samples = frames * samples_per_frame
            # Xing fields present per flag: frames (4), bytes (4), TOC (100), quality (4); then LAME's tag.
            lame = (
                xing
                + 8
                + 4 * (flags & 1)
                + 4 * (flags >> 1 & 1)
                + 100 * (flags >> 2 & 1)
                + 4 * (flags >> 3 & 1)
            )
            if head[lame : lame + 4] in _LAME_TAGS and len(head) >= lame + 24:
                delay = (head[lame + 21] << 4) | (head[lame + 22] >> 4)
                padding = ((head[lame + 22] & 0x0F) << 8) | head[lame + 23]
                if delay + padding < samples:
                    samples -= delay + padding
            return round(samples / header.sample_rate, 3)
    vbri = pos + 4 + 32
    if head[vbri : vbri + 4] == b"VBRI":
        frames = _uint(head, vbri + 14, 4, "big")
        _check_frame_count(frames, size, pos, header, "VBRI")
        return round(frames * samples_per_frame / header.sample_rate, 3)
    if not header.bitrate_kbps:
        return None
    return round(max(size - pos, 0) * 8 / (header.bitrate_kbps * 1000), 3)


# --------------------------------------------------------------------------------------------------------
# Headerless audio, and formats SpeechKit does not take
# --------------------------------------------------------------------------------------------------------


def _foreign_format(head: bytes) -> str | None:
    """The name of a recognisable audio format SpeechKit does not accept, if ``head`` starts one."""
    if head[:4] in _RIFF_IDS and len(head) >= 12:
        kind = head[8:12].decode("latin-1")
        return f"a RIFF {kind.strip()!r} file, not WAVE"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[:5] == b"#!AMR":
        return "AMR"
    if head[:4] == b".snd":
        return "Sun/NeXT AU"
    if head[:8] == bytes.fromhex("3026b2758e66cf11"):
        return "WMA/ASF"
    if _is_adts(head):
        return "AAC (ADTS)"
    return None


def _is_adts(head: bytes) -> bool:
    def header_at(pos: int) -> int | None:
        if pos + 7 > len(head) or head[pos] != 0xFF or head[pos + 1] & 0xF6 != 0xF0:
            return None
        return ((head[pos + 3] & 0x03) << 11) | (head[pos + 4] << 3) | (head[pos + 5] >> 5)

    length = header_at(0)
    if length is None or length < 7:
        return False
    return length + 7 > len(head) or header_at(length) is not None


def _is_prefix_of_magic(head: bytes, encoding: AudioEncoding) -> bool:
    """Whether ``head`` is too short to hold the magic of ``encoding`` but starts like it."""
    if encoding is AudioEncoding.OGG_OPUS:
        return len(head) < 4 and _OGG_MAGIC.startswith(head)
    return (len(head) < 3 and _ID3_MAGIC.startswith(head)) or (len(head) < 4 and head[:1] == b"\xff")


def _probe_raw(head: bytes, size: int, declared: DeclaredAudio) -> AudioInfo:
    if head[:4] in _RIFF_IDS and len(head) < 12:
        raise AudioProbeError(
            CORRUPT_AUDIO, f"The object starts like a WAV file but is cut off after {len(head)} bytes."
        )
    foreign = _foreign_format(head)
    if foreign is not None:
        raise AudioProbeError(UNSUPPORTED_AUDIO, f"The object looks like {foreign}. {_CONVERT_HINT}.")
    encoding = declared.encoding
    if encoding is None:
        raise AudioProbeError(
            UNKNOWN_AUDIO_FORMAT,
            "The object has no WAV, Ogg or MP3 header, so its format is unknown. If it is headerless "
            "16-bit little-endian PCM, set spec.recognition.audioEncoding to LINEAR16_PCM and "
            f"spec.recognition.sampleRateHertz to its rate ({_RATES_TEXT}). Otherwise: {_CONVERT_HINT}.",
        )
    if encoding is not AudioEncoding.LINEAR16_PCM:
        if _is_prefix_of_magic(head, encoding) or (
            encoding is AudioEncoding.MP3 and _parse_mpeg_header(head, 0) is not None
        ):
            raise AudioProbeError(
                CORRUPT_AUDIO,
                f"The object starts like {encoding.value} but its header is truncated or garbled; "
                "check that the upload completed and the file plays.",
            )
        expected = "an Ogg (OggS) header" if encoding is AudioEncoding.OGG_OPUS else "an ID3 tag or MP3 frame"
        raise AudioProbeError(
            AUDIO_ENCODING_MISMATCH,
            f"spec.recognition.audioEncoding is {encoding.value} but the object does not start with "
            f"{expected} (it has no recognisable header, like headerless LINEAR16_PCM): "
            "fix spec.recognition.audioEncoding (LINEAR16_PCM needs sampleRateHertz too) or the file.",
        )
    rate = declared.sample_rate_hertz
    if rate is None:
        raise AudioProbeError(
            UNKNOWN_AUDIO_FORMAT,
            "Headerless LINEAR16_PCM audio carries no sample rate: set spec.recognition.sampleRateHertz "
            f"to {_RATES_TEXT}.",
        )
    _check_pcm_rate(rate, "spec.recognition.sampleRateHertz")
    channels = declared.channel_count or 1
    if channels < 1:
        raise AudioProbeError(
            UNSUPPORTED_AUDIO, f"spec.recognition.audioChannelCount is {channels}; it must be at least 1."
        )
    return AudioInfo(
        encoding=AudioEncoding.LINEAR16_PCM,
        container=ContainerFormat.RAW,
        sample_rate_hertz=rate,
        channels=channels,
        duration_seconds=round(size / (rate * channels * 2), 3),
        size_bytes=size,
    )
