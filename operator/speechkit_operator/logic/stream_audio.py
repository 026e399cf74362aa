"""Audio for a streaming recognition session: formats, 400 ms chunks, conversion, limits and pacing.

``speechkit-operator stream`` reads a WAV file, an Ogg Opus file or headerless PCM (from a file or
stdin) and sends it to ``StreamingRecognize`` in chunks of :data:`CHUNK_SECONDS` of audio. Everything
here is pure: bytes in, chunks out; the caller does the reading, the sleeping and the sending.

* **Formats** (:func:`detect_format`, :func:`parse_wav_header`): 16-bit PCM WAV (RIFF, RF64) is sent
  as ``LINEAR16_PCM``. Mono at 8000, 16000 or 48000 Hz goes as is; other WAVs are mixed down to mono
  and, unless they are at 8000 or 16000 Hz, resampled to 16000 Hz (:class:`PcmConverter`: box-filter
  decimation, linear interpolation upwards; the standard library only). Ogg Opus goes as is, as
  ``OGG_OPUS``. Headerless PCM needs its encoding and sample rate declared.
* **Chunks** (:class:`PcmFramer`, :class:`OggFramer`): PCM is cut every 400 ms of audio. Ogg pages are
  placed on the audio timeline by their granule positions (48 kHz units, less the OpusHead's
  pre-skip), and each page's bytes are spread evenly over the time the page covers, so that each chunk
  holds about 400 ms of audio however long the encoder's pages are (often 1 s).
* **Limits** (:class:`SessionLimits`, :func:`known_size_problem`): a session takes at most 5 minutes of
  audio and 10 MB; input known to exceed them is refused before anything is sent, and input of
  unknown length (stdin) is cut at the limit, with a message saying which.
* **Pacing** (:func:`send_time`): chunk *k* is sent when the audio before it has "played": at
  ``started + chunk.start`` seconds, so 400 ms of audio every 400 ms, as SpeechKit's docs do.

Every error is a :class:`StreamAudioError` whose message a person can act on.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from speechkit_operator.contracts.stt_streaming import (
    MAX_MESSAGE_INTERVAL_SECONDS,
    MAX_SESSION_AUDIO_SECONDS,
    RECOMMENDED_CHUNK_SECONDS,
    SUPPORTED_PCM_RATES,
)
from speechkit_operator.contracts.stt_streaming import MAX_SESSION_BYTES as _MAX_SESSION_BYTES

#: Seconds of audio per chunk (and, at real-time pacing, seconds between chunks).
CHUNK_SECONDS: Final = RECOMMENDED_CHUNK_SECONDS
#: The session limits of SpeechKit's streaming API.
MAX_SESSION_SECONDS: Final = MAX_SESSION_AUDIO_SECONDS
MAX_SESSION_BYTES: Final = _MAX_SESSION_BYTES
#: The longest pause between two messages that SpeechKit accepts.
MAX_MESSAGE_GAP_SECONDS: Final = MAX_MESSAGE_INTERVAL_SECONDS
#: The rate PCM is resampled to when its own rate is not one SpeechKit accepts.
TARGET_RATE: Final = 16000

Encoding = Literal["LINEAR16_PCM", "OGG_OPUS"]
Container = Literal["wav", "ogg", "raw"]

LINEAR16_PCM: Final[Encoding] = "LINEAR16_PCM"
OGG_OPUS: Final[Encoding] = "OGG_OPUS"

SUPPORTED_FORMATS_TEXT: Final = (
    "16-bit PCM WAV, Ogg Opus, or headerless 16-bit little-endian PCM with --encoding lpcm --sample-rate "
    "8000|16000|48000"
)
CONVERT_HINT: Final = (
    "convert it first, e.g. `ffmpeg -i INPUT -ac 1 -ar 16000 -c:a pcm_s16le OUTPUT.wav` or "
    "`ffmpeg -i INPUT -c:a libopus OUTPUT.ogg`"
)


class StreamAudioError(ValueError):
    """The input cannot be streamed; the message says why and what to do."""


@dataclass(frozen=True)
class AudioChunk:
    """Bytes to send in one ``audio_content`` message, and the audio time they cover (seconds)."""

    data: bytes
    start: float
    end: float


@dataclass(frozen=True)
class StreamFormat:
    """What the config message declares: the encoding, and for PCM the sample rate."""

    encoding: Encoding
    sample_rate: int | None = None

    def describe(self) -> str:
        if self.encoding == OGG_OPUS:
            return "Ogg Opus"
        return f"16-bit PCM at {self.sample_rate} Hz, mono"


# --- Format detection ------------------------------------------------------------------------------

_RIFF_IDS: Final = (b"RIFF", b"RF64", b"BW64")
_OGG_MAGIC: Final = b"OggS"
#: How many leading bytes :func:`detect_format` needs.
MAGIC_BYTES: Final = 12
_FOREIGN: Final = (
    (b"ID3", "MP3"),
    (b"\xff\xfb", "MP3"),
    (b"\xff\xf3", "MP3"),
    (b"\xff\xf2", "MP3"),
    (b"\xff\xf1", "AAC (ADTS)"),
    (b"\xff\xf9", "AAC (ADTS)"),
    (b"fLaC", "FLAC"),
    (b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (b"FORM", "AIFF"),
    (b"#!AMR", "AMR"),
    (b".snd", "Sun audio"),
)


def detect_format(head: bytes, *, headerless: bool = False) -> Container | None:
    """``wav`` or ``ogg`` by the first bytes (at least :data:`MAGIC_BYTES` unless the input is shorter),
    None when they are neither. A format SpeechKit streaming does not take is a StreamAudioError. For
    input declared ``headerless`` PCM the two-byte frame syncs (``ff fb``...) are not taken for MP3 or
    AAC: they are also a sample (-1025); the longer magics (ID3, fLaC, ...) still are."""
    if head[:4] in _RIFF_IDS and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == _OGG_MAGIC:
        return "ogg"
    if head[4:8] == b"ftyp":
        raise StreamAudioError(f"MP4/M4A audio cannot be streamed: {CONVERT_HINT}")
    for magic, name in _FOREIGN:
        if headerless and len(magic) == 2:
            continue
        if head.startswith(magic):
            raise StreamAudioError(f"{name} audio cannot be streamed: {CONVERT_HINT}")
    return None


# --- WAV -------------------------------------------------------------------------------------------

_WAVE_FORMAT_PCM: Final = 0x0001
_WAVE_FORMAT_EXTENSIBLE: Final = 0xFFFE
_PCM_SUBFORMAT_TAIL: Final = bytes.fromhex("000000001000800000aa00389b71")
_FORMAT_NAMES: Final = {
    0x0003: "32-bit float",
    0x0006: "A-law",
    0x0007: "mu-law",
    0x0002: "ADPCM",
    0x0011: "IMA ADPCM",
    0x0055: "MP3",
}
_UNKNOWN_SIZE: Final = 0xFFFFFFFF
#: A WAV header longer than this (chunks before ``data``) is not one anyone writes.
MAX_WAV_HEADER_BYTES: Final = 1024 * 1024


@dataclass(frozen=True)
class WavHeader:
    channels: int
    sample_rate: int
    #: Where the samples start.
    data_offset: int
    #: The bytes of samples, or None when the header does not say (a WAV written to a pipe).
    data_size: int | None

    @property
    def frame_bytes(self) -> int:
        return 2 * self.channels

    def duration(self, data_size: int) -> float:
        return (data_size // self.frame_bytes) / self.sample_rate


def _u16(buf: bytes, offset: int) -> int:
    return int.from_bytes(buf[offset : offset + 2], "little")


def _u32(buf: bytes, offset: int) -> int:
    return int.from_bytes(buf[offset : offset + 4], "little")


def parse_wav_header(head: bytes, *, complete: bool = False) -> WavHeader | None:
    """The WAV header at the start of ``head``, or None when more bytes are needed to find the
    ``data`` chunk (``complete``: ``head`` is the whole input, so none will come). Only 16-bit PCM
    is accepted."""
    if len(head) < 12:
        if complete:
            raise StreamAudioError("the WAV file is cut short: it has no header")
        return None
    rf64 = head[:4] != b"RIFF"
    rf64_data_size: int | None = None
    fmt: tuple[int, int, int] | None = None  # channels, rate, bits
    pos = 12
    while True:
        if pos + 8 > len(head):
            break
        chunk_id = head[pos : pos + 4]
        size = _u32(head, pos + 4)
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise StreamAudioError("the WAV file has no fmt chunk before its samples")
            channels, rate, _ = fmt
            data_size: int | None = size
            if rf64 and size == _UNKNOWN_SIZE:
                data_size = rf64_data_size
            if data_size in (0, _UNKNOWN_SIZE):
                data_size = None  # written to a pipe: the samples run to the end
            return WavHeader(channels=channels, sample_rate=rate, data_offset=body, data_size=data_size)
        if body + size > len(head):
            break  # this chunk's body is not all here yet
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(head[body : body + size])
        elif chunk_id == b"ds64" and size >= 16:
            rf64_data_size = int.from_bytes(head[body + 8 : body + 16], "little")
        pos = body + size + (size & 1)
        if pos > MAX_WAV_HEADER_BYTES:
            raise StreamAudioError("the WAV file has no data chunk within its first MiB")
    if complete or len(head) > MAX_WAV_HEADER_BYTES:
        raise StreamAudioError("the WAV file is cut short: it has no data chunk")
    return None


def _parse_fmt(body: bytes) -> tuple[int, int, int]:
    if len(body) < 16:
        raise StreamAudioError("the WAV file's fmt chunk is too short")
    tag = _u16(body, 0)
    channels = _u16(body, 2)
    rate = _u32(body, 4)
    bits = _u16(body, 14)
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 40 and body[26:40] == _PCM_SUBFORMAT_TAIL:
        tag = _u16(body, 24)
    if tag != _WAVE_FORMAT_PCM:
        name = _FORMAT_NAMES.get(tag, f"format 0x{tag:04x}")
        raise StreamAudioError(f"{name} WAV cannot be streamed, only 16-bit PCM: {CONVERT_HINT}")
    if bits != 16:
        raise StreamAudioError(f"{bits}-bit PCM WAV cannot be streamed, only 16-bit: {CONVERT_HINT}")
    if channels < 1:
        raise StreamAudioError("the WAV file declares no channels")
    if not 1000 <= rate <= 384000:
        raise StreamAudioError(f"the WAV file declares an implausible sample rate ({rate} Hz)")
    return channels, rate, bits


def wav_stream_format(header: WavHeader) -> StreamFormat:
    """What a WAV is sent as: as is when mono at a rate SpeechKit takes, else converted
    (:class:`PcmConverter`)."""
    return StreamFormat(LINEAR16_PCM, converted_rate(header.channels, header.sample_rate))


def converted_rate(channels: int, rate: int) -> int:
    if channels == 1 and rate in SUPPORTED_PCM_RATES:
        return rate
    return rate if rate in (8000, 16000) else TARGET_RATE


# --- PCM conversion -------------------------------------------------------------------------------


def _samples(data: bytes) -> array[int]:
    samples = array("h")
    samples.frombytes(data)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _pcm_bytes(samples: array[int]) -> bytes:
    if sys.byteorder == "big":
        samples = array("h", samples)
        samples.byteswap()
    return samples.tobytes()


class PcmConverter:
    """16-bit little-endian PCM of ``channels`` interleaved channels at ``rate`` Hz to mono at
    ``target_rate``, fed in pieces of any length (a partial frame waits for the rest).

    Channels are averaged. Downwards, each output sample is the mean of the input samples within half
    an output period of it (a box filter: crude, but it keeps what lies above the new Nyquist frequency from
    folding back in full); upwards, samples are interpolated linearly. Positions are exact rationals,
    so however the input is split, the output is the same.
    """

    def __init__(self, channels: int, rate: int, target_rate: int) -> None:
        if channels < 1 or rate < 1 or target_rate < 1:
            raise ValueError("channels and rates must be positive")
        self.channels = channels
        self.frame_bytes = 2 * channels
        gcd = math.gcd(rate, target_rate)
        self._down = rate // gcd  # output sample j sits at input position j * down / up
        self._up = target_rate // gcd
        self._pending = b""
        self._buffer: list[int] = []
        self._base = 0  # the input index of _buffer[0]
        self._next = 0  # the index of the next output sample

    @property
    def passthrough(self) -> bool:
        return self.channels == 1 and self._down == self._up

    def feed(self, data: bytes) -> bytes:
        data = self._pending + data
        usable = len(data) - len(data) % self.frame_bytes
        self._pending = data[usable:]
        if self.passthrough:
            return data[:usable]
        self._buffer.extend(self._mono(_samples(data[:usable])))
        return _pcm_bytes(self._produce(final=False))

    def finish(self) -> bytes:
        """The rest, at the end of the input (a trailing partial frame is dropped)."""
        self._pending = b""
        if self.passthrough:
            return b""
        return _pcm_bytes(self._produce(final=True))

    def _mono(self, samples: array[int]) -> list[int]:
        channels = self.channels
        if channels == 1:
            return list(samples)
        if channels == 2:
            return [(left + right) >> 1 for left, right in zip(samples[0::2], samples[1::2], strict=True)]
        columns = [samples[index::channels] for index in range(channels)]
        return [sum(frame) // channels for frame in zip(*columns, strict=True)]

    def _produce(self, *, final: bool) -> array[int]:
        out = array("h")
        buffer, base, down, up = self._buffer, self._base, self._down, self._up
        total = base + len(buffer)
        j = self._next
        if down > up:  # fewer samples out than in: the mean of the input around each output sample
            while True:
                first = max(0, -(-(2 * j - 1) * down // (2 * up)))
                last = -(-(2 * j + 1) * down // (2 * up))
                if last > total:
                    if not final or j * down >= total * up:  # past the end (its centre is)
                        break
                    first, last = min(first, total - 1), total
                window = buffer[first - base : last - base]
                out.append(sum(window) // len(window))
                j += 1
        else:  # as many or more: linear interpolation between neighbours
            while True:
                numerator = j * down
                index, fraction = divmod(numerator, up)
                if fraction == 0 and index < total:
                    out.append(buffer[index - base])
                    j += 1
                    continue
                if index + 1 >= total:
                    if not final or index >= total:
                        break
                    out.append(buffer[index - base])
                    j += 1
                    continue
                x0 = buffer[index - base]
                x1 = buffer[index + 1 - base]
                out.append(x0 + (x1 - x0) * fraction // up)
                j += 1
        self._next = j
        keep_from = min(max(0, (2 * j - 1) * down // (2 * up)) if down > up else j * down // up, total)
        del buffer[: keep_from - base]
        self._base = keep_from
        return out


# --- Chunks ---------------------------------------------------------------------------------------


class PcmFramer:
    """Mono 16-bit PCM at ``sample_rate``, cut into chunks of :data:`CHUNK_SECONDS` (the last one
    shorter)."""

    def __init__(self, sample_rate: int, chunk_seconds: float = CHUNK_SECONDS) -> None:
        self.sample_rate = sample_rate
        self.chunk_bytes = max(1, round(sample_rate * chunk_seconds)) * 2
        self._buffer = bytearray()
        self._offset = 0  # bytes already cut into chunks

    def _time(self, offset: int) -> float:
        return offset / (2 * self.sample_rate)

    def _cut(self, size: int) -> AudioChunk:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        start = self._offset
        self._offset += size
        return AudioChunk(data, self._time(start), self._time(self._offset))

    def feed(self, data: bytes) -> list[AudioChunk]:
        self._buffer += data
        chunks = []
        while len(self._buffer) >= self.chunk_bytes:
            chunks.append(self._cut(self.chunk_bytes))
        return chunks

    def finish(self) -> list[AudioChunk]:
        size = len(self._buffer) - len(self._buffer) % 2
        self._buffer = self._buffer[:size]
        return [self._cut(size)] if size else []


class WavFramer:
    """A WAV file's samples (after its header, up to the end of its ``data`` chunk), converted when
    needed (:func:`wav_stream_format`) and cut into chunks."""

    def __init__(
        self, header: WavHeader, chunk_seconds: float = CHUNK_SECONDS, *, rate: int | None = None
    ) -> None:
        self.header = header
        self.format = wav_stream_format(header) if rate is None else StreamFormat(LINEAR16_PCM, rate)
        assert self.format.sample_rate is not None
        self._converter = PcmConverter(header.channels, header.sample_rate, self.format.sample_rate)
        self._framer = PcmFramer(self.format.sample_rate, chunk_seconds)
        self._skip = header.data_offset  # header bytes still to drop
        self._left = header.data_size  # sample bytes still to take (None: to the end)

    @property
    def complete(self) -> bool:
        """All of the ``data`` chunk's samples are in (what follows it is not audio)."""
        return self._left == 0

    def feed(self, data: bytes) -> list[AudioChunk]:
        if self._skip:
            dropped = min(self._skip, len(data))
            self._skip -= dropped
            data = data[dropped:]
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
        return self._framer.feed(self._converter.feed(data)) if data else []

    def finish(self) -> list[AudioChunk]:
        return self._framer.feed(self._converter.finish()) + self._framer.finish()


def converted_size(header: WavHeader, data_size: int, rate: int | None = None) -> int:
    """The bytes a WAV's ``data_size`` bytes of samples are sent as (at ``rate``; default
    :func:`wav_stream_format`'s)."""
    frames = data_size // header.frame_bytes
    if rate is None:
        rate = converted_rate(header.channels, header.sample_rate)
    return 2 * (frames * rate // header.sample_rate)


def fitting_rate(header: WavHeader, data_size: int, max_bytes: int = MAX_SESSION_BYTES) -> int:
    """The rate a WAV is sent at: :func:`converted_rate`, unless that is above :data:`TARGET_RATE` and
    the session's bytes would not hold it while :data:`TARGET_RATE` would (a long 48 kHz recording)."""
    rate = converted_rate(header.channels, header.sample_rate)
    if rate > TARGET_RATE and converted_size(header, data_size, rate) > max_bytes:
        return TARGET_RATE
    return rate


# --- Ogg Opus -------------------------------------------------------------------------------------

_OGG_HEADER_SIZE: Final = 27
_OPUS_RATE: Final = 48000
_NO_GRANULE: Final = 0xFFFFFFFFFFFFFFFF
#: Opus needs at least a byte per 120 ms frame, so a page covers at most this many seconds per byte of
#: its body; a granule position further on is corrupt and is not waited for.
_OPUS_MAX_SECONDS_PER_BYTE: Final = 0.12
_OGG_CODECS: Final = (
    (b"\x01vorbis", "Ogg Vorbis"),
    (b"Speex   ", "Ogg Speex"),
    (b"\x7fFLAC", "Ogg FLAC"),
    (b"OpusHead", "Ogg Opus"),
)


@dataclass(frozen=True)
class OggPage:
    data: bytes
    granule: int | None  # None: no packet ends on this page
    serial: int
    body_size: int


def next_ogg_page(buffer: bytes | bytearray, offset: int = 0) -> OggPage | None:
    """The page at ``offset``, or None when it is not all there yet."""
    if len(buffer) - offset < _OGG_HEADER_SIZE:
        if buffer[offset : offset + 4] != _OGG_MAGIC[: len(buffer) - offset]:
            raise StreamAudioError(f"the Ogg stream is corrupt at byte {offset}: no page starts there")
        return None
    if buffer[offset : offset + 4] != _OGG_MAGIC:
        raise StreamAudioError(f"the Ogg stream is corrupt at byte {offset}: no page starts there")
    segments = buffer[offset + 26]
    table_end = offset + _OGG_HEADER_SIZE + segments
    if len(buffer) < table_end:
        return None
    body_size = sum(buffer[offset + _OGG_HEADER_SIZE : table_end])
    end = table_end + body_size
    if len(buffer) < end:
        return None
    granule = int.from_bytes(buffer[offset + 6 : offset + 14], "little")
    serial = int.from_bytes(buffer[offset + 14 : offset + 18], "little")
    return OggPage(
        data=bytes(buffer[offset:end]),
        granule=None if granule == _NO_GRANULE else granule,
        serial=serial,
        body_size=body_size,
    )


@dataclass
class _Span:
    """Bytes placed on the audio timeline, and how many of them are sent."""

    data: bytes
    start: float
    end: float
    sent: int = 0


class OggFramer:
    """Ogg Opus pages, placed on the audio timeline and cut into chunks of about
    :data:`CHUNK_SECONDS` (see the module's text). The first page must be Opus's ``OpusHead``."""

    format = StreamFormat(OGG_OPUS)

    def __init__(self, chunk_seconds: float = CHUNK_SECONDS) -> None:
        self.chunk_seconds = chunk_seconds
        self._buffer = bytearray()
        self._consumed = 0  # bytes of the input already parsed into pages
        self._serial: int | None = None
        self._pre_skip = 0
        self._timeline = 0.0  # the end of the last placed page
        self._waiting: list[OggPage] = []  # pages with no granule yet, placed with the next one
        #: Placed spans not yet (fully) sent.
        self._spans: deque[_Span] = deque()
        self._window = 0  # the index of the next chunk

    @property
    def duration(self) -> float:
        """The audio time of the pages parsed so far."""
        return self._timeline

    def feed(self, data: bytes) -> list[AudioChunk]:
        self._buffer += data
        while (page := next_ogg_page(self._buffer)) is not None:
            del self._buffer[: len(page.data)]
            self._consumed += len(page.data)
            self._place(page)
        if len(self._buffer) > 65307:  # the largest page there is
            raise StreamAudioError(f"the Ogg stream is corrupt near byte {self._consumed}")
        return self._ready(final=False)

    def finish(self) -> list[AudioChunk]:
        if self._buffer:
            raise StreamAudioError(
                f"the Ogg stream is cut short: its last page (at byte {self._consumed}) is incomplete"
            )
        if self._serial is None:
            raise StreamAudioError("the Ogg stream holds no pages")
        for page in self._waiting:  # no granule to place them by: they end where the audio ends
            self._spans.append(_Span(page.data, self._timeline, self._timeline))
        self._waiting = []
        return self._ready(final=True)

    def _place(self, page: OggPage) -> None:
        if self._serial is None:
            self._serial = page.serial
            self._check_head(page)
        if page.serial != self._serial:  # another logical stream: no time of its own
            self._spans.append(_Span(page.data, self._timeline, self._timeline))
            return
        if page.granule is None:
            self._waiting.append(page)
            return
        pages = [*self._waiting, page]
        self._waiting = []
        body = sum(item.body_size for item in pages)
        start = self._timeline
        end = max(start, (page.granule - self._pre_skip) / _OPUS_RATE)
        end = min(end, start + body * _OPUS_MAX_SECONDS_PER_BYTE)
        self._timeline = end
        self._spans.append(_Span(b"".join(item.data for item in pages), start, end))

    def _check_head(self, page: OggPage) -> None:
        body = page.data[-page.body_size :] if page.body_size else b""
        for magic, name in _OGG_CODECS:
            if body.startswith(magic):
                if magic != b"OpusHead":
                    raise StreamAudioError(f"{name} cannot be streamed, only Ogg Opus: {CONVERT_HINT}")
                if len(body) < 19:
                    raise StreamAudioError("the Ogg Opus stream's OpusHead is too short")
                self._pre_skip = _u16(body, 10)
                return
        raise StreamAudioError(f"the Ogg stream does not hold Opus audio: {CONVERT_HINT}")

    def _ready(self, *, final: bool) -> list[AudioChunk]:
        chunks = []
        while True:
            start = self._window * self.chunk_seconds
            end = start + self.chunk_seconds
            if not final and self._timeline < end:
                break
            if final and not self._spans:
                break
            data = self._take_until(end if not final or self._timeline > end else math.inf)
            self._window += 1
            if data:
                chunks.append(AudioChunk(data, start, min(end, max(start, self._timeline))))
        return chunks

    def _take_until(self, until: float) -> bytes:
        """The bytes of the spans placed before audio time ``until``."""
        taken = []
        while self._spans:
            span = self._spans[0]
            if span.start >= until and span.end > span.start:
                break
            size = len(span.data)
            share = (
                size
                if span.end <= until
                else math.floor(size * (until - span.start) / (span.end - span.start))
            )
            if share > span.sent:
                taken.append(span.data[span.sent : share])
                span.sent = share
            if share < size:
                break
            self._spans.popleft()
        return b"".join(taken)


def ogg_duration(data: bytes) -> float:
    """The audio time of a whole Ogg Opus file (checks every page; raises StreamAudioError)."""
    framer = OggFramer()
    framer.feed(data)
    framer.finish()
    return framer.duration


# --- Limits ---------------------------------------------------------------------------------------


def _minutes(seconds: float) -> str:
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def known_size_problem(
    seconds: float, size: int, *, max_seconds: float = MAX_SESSION_SECONDS, max_bytes: int = MAX_SESSION_BYTES
) -> str | None:
    """Why input of ``seconds`` of audio sent as ``size`` bytes cannot be streamed in one session, or
    None."""
    if seconds > max_seconds:
        return (
            f"it holds {_minutes(seconds)} of audio, and a streaming session takes at most "
            f"{_minutes(max_seconds)}: cut it, or use `speechkit-operator transcribe` (the async API)"
        )
    if size > max_bytes:
        return (
            f"it would be sent as {_megabytes(size)}, and a streaming session takes at most "
            f"{_megabytes(max_bytes)}: use a lower sample rate or Ogg Opus, "
            "or `speechkit-operator transcribe`"
        )
    return None


class SessionLimits:
    """Counts what a session has sent and cuts the chunk that would take it past a limit.

    :meth:`admit` answers the part of the chunk that fits (None when nothing does) and, once a limit is
    reached, a message that says which; nothing more may be sent after that. ``align`` keeps PCM cuts
    on whole samples.
    """

    def __init__(
        self,
        *,
        max_seconds: float = MAX_SESSION_SECONDS,
        max_bytes: int = MAX_SESSION_BYTES,
        align: int = 1,
    ) -> None:
        self.max_seconds = max_seconds
        self.max_bytes = max_bytes
        self.align = align
        self.sent_bytes = 0
        self.stopped: str | None = None

    def admit(self, chunk: AudioChunk) -> AudioChunk | None:
        if self.stopped is not None:
            return None
        size = len(chunk.data)
        end = chunk.end
        if chunk.end > self.max_seconds:
            span = chunk.end - chunk.start
            fraction = (self.max_seconds - chunk.start) / span if span > 0 else 0.0
            size = min(size, math.floor(len(chunk.data) * max(0.0, fraction)))
            end = self.max_seconds
            self.stopped = (
                f"stopped at {_minutes(self.max_seconds)} of audio, the most a streaming session takes"
            )
        if self.sent_bytes + size > self.max_bytes:
            size = self.max_bytes - self.sent_bytes
            if len(chunk.data):
                end = chunk.start + (chunk.end - chunk.start) * size / len(chunk.data)
            self.stopped = (
                f"stopped at {_megabytes(self.max_bytes)} of audio, the most a streaming session takes"
            )
        size -= size % self.align
        if size <= 0:
            return None
        self.sent_bytes += size
        if size == len(chunk.data):
            return chunk
        return AudioChunk(chunk.data[:size], chunk.start, end)


# --- Pacing ---------------------------------------------------------------------------------------


def send_time(started: float, chunk: AudioChunk, *, realtime: bool) -> float:
    """When (on the clock ``started`` was read from) ``chunk`` is due: once the audio before it has
    played, at real time; at once otherwise."""
    return started + chunk.start if realtime else started
