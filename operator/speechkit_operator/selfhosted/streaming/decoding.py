"""Incremental decoding of streamed audio into 16 kHz mono 16-bit PCM, piece by piece as it arrives.

* ``LINEAR16_PCM`` at 8000, 16000 or 48000 Hz: samples as they are (a byte of a sample cut in two waits for
  the next piece); other rates than 16 kHz go through one libswresample resampler for the whole stream.
* ``OGG_OPUS``: Ogg pages are parsed here (capture pattern, version, CRC, lacing), their packets put
  together across pages, and the one Opus stream decoded with FFmpeg's decoder through PyAV, then
  resampled to 16 kHz mono (a stereo stream is mixed down). Its ``OpusHead`` gives the channels and the
  pre-skip (the decoder's warm-up samples, dropped).

Bytes that are not what the session declared raise :class:`StreamDecodeError`, whose message says what
is wrong (the session ends with INVALID_ARGUMENT): never anything else for bad input. No I/O: bytes in,
arrays out (the service runs :meth:`feed` off the event loop).

A decoder is given the most audio it may produce (``max_samples``, the session's 5 minutes): past it,
:meth:`feed` raises :class:`AudioLimitError` with the samples up to the limit, and decodes nothing more.
Ogg Opus is checked packet by packet *before* decoding, from the duration each packet's TOC byte
declares (RFC 6716, section 3.1), so a few bytes of tiny packets that would decode to hours of audio cost
only the packets within the limit; the packets of a message are taken one page at a time.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final, Protocol

import av
import numpy as np
from numpy.typing import NDArray

from speechkit_operator.logic.audio_probe import ogg_crc

__all__ = [
    "AudioLimitError",
    "LpcmDecoder",
    "OggOpusDecoder",
    "PcmArray",
    "StreamDecodeError",
    "StreamDecoder",
    "ogg_crc",
    "opus_packet_samples",
]

PcmArray = NDArray[np.int16]

#: The rate the engines work at.
TARGET_RATE: Final = 16000
#: Opus always decodes at 48 kHz.
OPUS_RATE: Final = 48000
_EMPTY: Final = np.zeros(0, dtype=np.int16)
#: An Ogg page's fixed header: "OggS", version, flags, granule, serial, sequence, CRC, segment count.
_PAGE_HEADER: Final = struct.Struct("<4sBBqIIIB")
_CAPTURE: Final = b"OggS"
#: The largest page: the header, 255 lacing values and 255 segments of 255 bytes.
MAX_PAGE_BYTES: Final = _PAGE_HEADER.size + 255 + 255 * 255
#: A packet longer than this is not Opus audio (nor sensible tags): refused rather than buffered.
MAX_PACKET_BYTES: Final = 1024 * 1024
_CONTINUED: Final = 0x01
_FIRST_PAGE: Final = 0x02


class StreamDecodeError(Exception):
    """The audio is not what the session declared; ``message`` is for the client, ``pcm`` the samples
    decoded from the same piece before the damage."""

    def __init__(self, message: str, pcm: PcmArray = _EMPTY) -> None:
        super().__init__(message)
        self.message = message
        self.pcm = pcm


class AudioLimitError(Exception):
    """The stream holds more audio than ``max_samples``; ``pcm``: the piece's samples up to the limit."""

    def __init__(self, pcm: PcmArray) -> None:
        super().__init__("the stream is longer than its limit")
        self.pcm = pcm


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> PcmArray:
        """The samples (16 kHz mono) that ``data`` completes; :class:`AudioLimitError` past the limit."""

    def finish(self) -> PcmArray:
        """The samples still held back at the end of the stream."""


class _Resampler:
    """Mono s16 at ``rate`` (or any layout and format, for decoded frames) -> mono s16 at 16 kHz."""

    def __init__(self) -> None:
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=TARGET_RATE)

    def frame(self, frame: av.AudioFrame | None) -> PcmArray:
        blocks = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        if not blocks:
            return _EMPTY
        return np.concatenate(blocks).astype(np.int16, copy=False)

    def samples(self, pcm: PcmArray, rate: int) -> PcmArray:
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        return self.frame(frame)


class LpcmDecoder:
    """Headerless little-endian 16-bit mono PCM at ``sample_rate`` (8000, 16000 or 48000)."""

    def __init__(self, sample_rate: int, max_samples: int | None = None) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, not {sample_rate}")
        self.sample_rate = sample_rate
        self._odd = b""
        self._resampler = _Resampler() if sample_rate != TARGET_RATE else None
        #: Input samples left within the limit.
        self._left = None if max_samples is None else max_samples * sample_rate // TARGET_RATE
        self._over = False

    def feed(self, data: bytes) -> PcmArray:
        if self._over:
            raise AudioLimitError(_EMPTY)
        data = self._odd + data
        whole = len(data) - len(data) % 2
        self._odd = data[whole:]
        count = whole // 2
        over = self._left is not None and count > self._left
        if self._left is not None:
            count = min(count, self._left)
            self._left -= count
        pcm = _EMPTY
        if count:
            pcm = np.frombuffer(data, dtype="<i2", count=count).astype(np.int16)
            if self._resampler is not None:
                pcm = self._resampler.samples(pcm, self.sample_rate)
        if over:
            self._over = True
            raise AudioLimitError(pcm)
        return pcm

    def finish(self) -> PcmArray:
        # A byte left over is half a sample: dropped, as the async API drops a cut sample.
        self._odd = b""
        return _EMPTY if self._resampler is None else self._resampler.frame(None)


# --- Ogg ------------------------------------------------------------------------------------------------


class _OggPages:
    """Puts the packets of one logical Ogg stream together from bytes that arrive in pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._packet = bytearray()
        self._serial: int | None = None
        self._sequence: int | None = None
        self._ended = False
        self.pages = 0

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The packets that ``data`` completes, one page at a time (a consumer that stops early leaves
        the rest unparsed)."""
        self._buffer += data
        while True:
            page = self._next_page()
            if page is None:
                return
            yield from page

    def finish(self) -> None:
        if self._buffer:
            raise StreamDecodeError(
                f"The Ogg stream ends inside a page ({len(self._buffer)} bytes left over): the audio was "
                "cut short"
            )

    def _next_page(self) -> list[bytes] | None:
        buffer = self._buffer
        if len(buffer) < _PAGE_HEADER.size:
            if buffer and not _CAPTURE.startswith(bytes(buffer[:4])):
                raise self._corrupt("expected an Ogg page (OggS)")
            return None
        capture, version, flags, _granule, serial, sequence, crc, segments = _PAGE_HEADER.unpack_from(buffer)
        if capture != _CAPTURE:
            raise self._corrupt("expected an Ogg page (OggS)")
        if version != 0:
            raise self._corrupt(f"unknown Ogg version {version}")
        header_size = _PAGE_HEADER.size + segments
        if len(buffer) < header_size:
            return None
        lacing = bytes(buffer[_PAGE_HEADER.size : header_size])
        size = header_size + sum(lacing)
        if len(buffer) < size:
            return None
        page = bytes(buffer[:size])
        del buffer[:size]
        if ogg_crc(page[:22], b"\0\0\0\0", page[26:]) != crc:
            raise self._corrupt("a page's checksum does not match its bytes")
        self._check_order(flags, serial, sequence)
        self.pages += 1
        return self._packets(page[header_size:], lacing, continued=bool(flags & _CONTINUED))

    def _check_order(self, flags: int, serial: int, sequence: int) -> None:
        if self._serial is None:
            if not flags & _FIRST_PAGE:
                raise self._corrupt("the first page does not begin a stream")
            self._serial = serial
        elif serial != self._serial:
            raise StreamDecodeError(
                "The Ogg data holds more than one stream: streaming takes one Opus stream per session"
            )
        elif self._sequence is not None and sequence != self._sequence + 1:
            raise self._corrupt(f"page {self._sequence + 1} is missing (page {sequence} came instead)")
        self._sequence = sequence

    def _packets(self, body: bytes, lacing: bytes, *, continued: bool) -> list[bytes]:
        if self._packet and not continued:
            raise self._corrupt("a packet that continues on the next page is not continued there")
        packets: list[bytes] = []
        offset = 0
        for value in lacing:
            self._packet += body[offset : offset + value]
            offset += value
            if len(self._packet) > MAX_PACKET_BYTES:
                raise StreamDecodeError(
                    f"An Ogg packet is longer than {MAX_PACKET_BYTES} bytes: not Opus audio"
                )
            if value < 255:
                packets.append(bytes(self._packet))
                self._packet.clear()
        return packets

    def _corrupt(self, what: str) -> StreamDecodeError:
        return StreamDecodeError(
            f"The audio is not a valid Ogg Opus stream ({what} after {self.pages} good page(s)): check "
            "config.specification.audioEncoding and send the Ogg pages in order"
        )


#: An Opus frame's duration at 48 kHz by the TOC byte's configuration (RFC 6716, 3.1): SILK-only 10, 20,
#: 40, 60 ms; hybrid 10, 20 ms; CELT-only 2.5, 5, 10, 20 ms.
_FRAME_SAMPLES: Final = (
    *(480, 960, 1920, 2880) * 3,
    *(480, 960) * 2,
    *(120, 240, 480, 960) * 4,
)
#: The longest Opus packet: 120 ms.
_MAX_PACKET_SAMPLES: Final = 5760


def opus_packet_samples(packet: bytes) -> int:
    """The samples (at 48 kHz) an Opus packet decodes to, from its TOC byte and frame count, without
    decoding it; :class:`ValueError` for a packet that cannot be valid (RFC 6716, 3.2: no frame count,
    zero frames, more than 120 ms)."""
    if not packet:
        return 0
    toc = packet[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        if len(packet) < 2 or not packet[1] & 0x3F:
            raise ValueError("a code 3 packet without its frame count")
        frames = packet[1] & 0x3F
    samples = _FRAME_SAMPLES[toc >> 3] * frames
    if samples > _MAX_PACKET_SAMPLES:
        raise ValueError(f"{samples // 48} ms of audio in one packet, more than 120 ms")
    return samples


class OggOpusDecoder:
    """One Opus stream in Ogg, as its pages arrive; at most ``max_samples`` (16 kHz) of audio."""

    def __init__(self, max_samples: int | None = None) -> None:
        self._pages = _OggPages()
        self._packets = 0
        self._codec: av.AudioCodecContext | None = None
        self._resampler = _Resampler()
        self._skip = 0
        #: Samples at 48 kHz the packets may still declare (their durations from the TOC, before they
        #: are decoded); the pre-skip is added to it.
        self._left = None if max_samples is None else max_samples * (OPUS_RATE // TARGET_RATE)
        #: Packets the stream may still hold: as many as the shortest packets (2.5 ms) would fill the
        #: limit with, so that packets that declare no audio (empty ones) cannot be sent by the million.
        self._packets_left = None if self._left is None else self._left // 120 + 16
        self._over = False

    def feed(self, data: bytes) -> PcmArray:
        if self._over:
            raise AudioLimitError(_EMPTY)
        blocks: list[PcmArray] = []
        try:
            for packet in self._pages.feed(data):
                self._charge(packet)
                block = self._decode(packet)
                if len(block):
                    blocks.append(block)
        except AudioLimitError:
            self._over = True
            raise AudioLimitError(_joined(blocks)) from None
        except StreamDecodeError as exc:
            raise StreamDecodeError(exc.message, _joined(blocks)) from None
        return _joined(blocks)

    def _charge(self, packet: bytes) -> None:
        """:class:`AudioLimitError` when ``packet`` would go past the limit (before it is decoded)."""
        if self._left is None or self._packets < 2:
            return
        assert self._packets_left is not None
        try:
            samples = opus_packet_samples(packet)
        except ValueError as exc:
            raise StreamDecodeError(
                f"Opus packet {self._packets - 1} is not valid ({exc}): the audio is damaged"
            ) from None
        self._packets_left -= 1
        if samples > self._left or self._packets_left < 0:
            raise AudioLimitError(_EMPTY)
        self._left -= samples

    def finish(self) -> PcmArray:
        self._pages.finish()
        if self._codec is None:
            return _EMPTY
        return self._trim(self._resampler.frame(None))

    def _decode(self, packet: bytes) -> PcmArray:
        self._packets += 1
        if self._packets == 1:
            self._open(packet)
            return _EMPTY
        if self._packets == 2:
            if not packet.startswith(b"OpusTags"):
                raise StreamDecodeError("The Ogg Opus stream's second packet is not OpusTags")
            return _EMPTY
        assert self._codec is not None
        if not packet:
            return _EMPTY
        try:
            frames = self._codec.decode(av.Packet(packet))
        except (av.FFmpegError, ValueError) as exc:
            raise StreamDecodeError(
                f"Opus packet {self._packets - 2} cannot be decoded ({_reason(exc)}): the audio is damaged"
            ) from None
        blocks = []
        for frame in frames:
            frame.pts = None
            blocks.append(self._trim(self._resampler.frame(frame)))
        return np.concatenate(blocks) if blocks else _EMPTY

    def _open(self, head: bytes) -> None:
        """The OpusHead packet: version, channels, pre-skip, input rate, gain, mapping family."""
        if len(head) < 19 or not head.startswith(b"OpusHead"):
            raise StreamDecodeError(
                "The Ogg stream does not hold Opus audio (its first packet is not OpusHead): check "
                "config.specification.audioEncoding"
            )
        version, channels, pre_skip = head[8], head[9], struct.unpack_from("<H", head, 10)[0]
        if version >> 4 != 0 or channels == 0:
            raise StreamDecodeError(f"Unsupported OpusHead (version {version}, {channels} channels)")
        if channels > 2:
            raise StreamDecodeError(
                f"The Opus stream has {channels} channels; streaming takes mono (or stereo, mixed down)"
            )
        codec = av.CodecContext.create("opus", "r")
        assert isinstance(codec, av.AudioCodecContext)
        codec.extradata = head
        codec.sample_rate = OPUS_RATE
        codec.layout = "stereo" if channels == 2 else "mono"
        self._codec = codec
        self._skip = round(pre_skip * TARGET_RATE / OPUS_RATE)
        if self._left is not None:
            self._left += pre_skip  # decoded, then dropped: not the stream's audio

    def _trim(self, pcm: PcmArray) -> PcmArray:
        if self._skip and len(pcm):
            dropped = min(self._skip, len(pcm))
            self._skip -= dropped
            return pcm[dropped:]
        return pcm


def _joined(blocks: list[PcmArray]) -> PcmArray:
    return np.concatenate(blocks) if blocks else _EMPTY


def _reason(exc: Exception) -> str:
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__
