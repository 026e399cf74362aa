"""Decode the bytes of an audio object into 16-bit PCM at the engines' rate, whole or in windows.

:func:`open_audio` takes what SpeechKit v2 takes, and checks it the way the operator does:

* WAV: 16-bit PCM behind a RIFF/RF64 header (``LINEAR16_PCM``); rate and channels come from the header.
* Headerless ``LINEAR16_PCM``: signed 16-bit little-endian samples, interleaved when there are several
  channels. Nothing in the bytes says how to read them, so the request must give the encoding and
  ``sample_rate_hertz`` (8000, 16000 or 48000); ``channel_count`` defaults to 1.
* ``OGG_OPUS``: Opus in an Ogg container. ``MP3``: MPEG Layer III, optionally behind an ID3v2 tag. Both
  carry their own rate and channel count, so the declared ones are ignored, as the API does.

The format is recognised from the bytes with the operator's own prober
(:func:`speechkit_operator.logic.audio_probe.probe_audio`), so the service accepts and rejects exactly
what the operator does, with the same reasons, before anything is decoded. Containers are then decoded
with FFmpeg through PyAV; every channel is resampled to ``target_rate`` (16 kHz by default) with
libswresample. Packets that FFmpeg cannot decode are skipped and counted (a damaged stretch in a long
recording should not lose the rest); a stream that yields no audio at all is ``CorruptAudio``.

The service decodes in windows (:meth:`AudioStream.segments`): FFmpeg's output is cut, channel by
channel, into pieces of 60 to 300 seconds (:data:`WINDOW_CHANNEL_SECONDS` shared by the channels) at the
quietest 300 ms of each piece's last third, and each piece is recognised before the next one is decoded.
Memory then depends on the window, not on the duration or the channel count: the whole of 4 hours of
8-channel audio at 16 kHz would be 3.7 GB of samples. Audio up to 5 minutes (mono) is one piece, as
before. :func:`decode_audio` still decodes everything at once (tests, benchmarks).

Failures raise :class:`AudioDecodeError`. Its ``code_name`` is one of the operator's reasons
(``EmptyAudio``, ``CorruptAudio``, ``AudioEncodingMismatch``, ``UnknownAudioFormat``,
``UnsupportedAudio``), all of which a SpeechKit-compatible API reports as ``INVALID_ARGUMENT``; its
``message`` names the request field to change (``config.specification.*``).

Pure: bytes in, arrays out; no files, no network, no clock. FFmpeg's own logging stays off (PyAV's
default), so garbage input does not spam stderr.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import av
import numpy as np
from numpy.typing import NDArray

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.logic.audio_probe import (
    CORRUPT_AUDIO,
    EMPTY_AUDIO,
    UNSUPPORTED_AUDIO,
    AudioProbeError,
    DeclaredAudio,
    ProbeFailure,
    probe_audio,
)
from speechkit_operator.models.audio import ContainerFormat

__all__ = [
    "DEFAULT_TARGET_RATE",
    "MAX_CHANNELS",
    "MAX_SECONDS",
    "WINDOW_CHANNEL_SECONDS",
    "AudioDecodeError",
    "AudioStream",
    "DecodeFailure",
    "DecodedAudio",
    "PcmArray",
    "PcmSegment",
    "decode_audio",
    "open_audio",
    "quiet_cut",
]

#: A channel of decoded audio: signed 16-bit samples.
PcmArray = NDArray[np.int16]
#: The reasons :class:`AudioDecodeError` uses; the operator's probe uses the same words.
DecodeFailure = ProbeFailure

#: The rate the bundled engines work at.
DEFAULT_TARGET_RATE: Final = 16000
#: Longest audio decoded (SpeechKit's asynchronous recognition takes up to 4 hours). Also bounds the
#: memory a small, hostile Ogg Opus file (a few bytes per 120 ms of audio) can make us allocate.
MAX_SECONDS: Final = 4 * 3600.0
#: Most channels accepted for headerless PCM; more is almost surely a wrong ``channel_count``.
MAX_CHANNELS: Final = 8
#: Seconds of audio, summed over the channels, that :meth:`AudioStream.segments` holds for the engine at
#: once: pieces of 300 s of mono, 240 s of stereo, 60 s of 8 channels (15 MB of samples at 16 kHz, plus
#: as much again while the next pieces are cut).
WINDOW_CHANNEL_SECONDS: Final = 480.0
#: The longest and the shortest piece of one channel.
MAX_WINDOW_SECONDS: Final = 300.0
MIN_WINDOW_SECONDS: Final = 60.0

#: How many leading bytes the prober reads; large enough for cover art in ID3 tags and WAV metadata.
_PROBE_BYTES: Final = 1 << 20
#: Samples per frame fed to the resampler when resampling headerless PCM.
_CHUNK_SAMPLES: Final = 1 << 16
#: A FFmpeg channel layout for each channel count of headerless PCM (the names do not matter: the
#: resampler keeps the layout, so it never mixes channels).
#: Hops (10 ms) of the stretch whose loudness decides where a window is cut.
_PAUSE_HOPS: Final = 30
_LAYOUTS: Final = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
#: The FFmpeg demuxer for each container, and the decoders that may legitimately come out of it.
_DEMUXERS: Final[dict[ContainerFormat, tuple[str, frozenset[str]]]] = {
    ContainerFormat.WAV: ("wav", frozenset({"pcm_s16le"})),
    ContainerFormat.OGG: ("ogg", frozenset({"opus", "libopus"})),
    ContainerFormat.MP3: ("mp3", frozenset({"mp3", "mp3float"})),
}
_SPEC_FIELD = re.compile(r"\bspec\.recognition\.")
_API_FIELD_PREFIX: Final = "config.specification."


class AudioDecodeError(Exception):
    """The bytes cannot be decoded as they are, or as declared.

    ``code_name`` is a CamelCase reason such as ``CorruptAudio`` (see the module docstring); ``message``
    says what is wrong and what to change.
    """

    def __init__(self, code_name: DecodeFailure, message: str) -> None:
        super().__init__(message)
        self.code_name: DecodeFailure = code_name
        self.message: str = message

    def __repr__(self) -> str:
        return f"AudioDecodeError({self.code_name!r}, {self.message!r})"


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded audio: one array per channel, all of the same length, at ``sample_rate``."""

    channels: list[PcmArray]
    sample_rate: int
    #: The rate the audio was stored at (48000 for Opus, whose decoder always runs at 48 kHz).
    source_rate: int
    duration_seconds: float
    encoding: AudioEncoding
    container: ContainerFormat
    #: Packets FFmpeg could not decode (or that changed the stream's format midway) and were left out.
    skipped_packets: int = 0

    @property
    def channel_count(self) -> int:
        return len(self.channels)


@dataclass(frozen=True)
class PcmSegment:
    """A piece of one channel: ``pcm`` starts ``start_seconds`` into the audio."""

    #: 1 for the first channel.
    channel: int
    start_seconds: float
    end_seconds: float
    pcm: PcmArray


def decode_audio(
    data: bytes,
    *,
    encoding: AudioEncoding | None,
    sample_rate_hertz: int | None,
    channel_count: int | None,
    target_rate: int = DEFAULT_TARGET_RATE,
    max_seconds: float = MAX_SECONDS,
) -> DecodedAudio:
    """Decode all of ``data`` into one int16 array per channel at ``target_rate``.

    See :func:`open_audio` for the arguments and errors. This holds every channel in memory at once:
    the service uses :meth:`AudioStream.segments` instead.
    """
    stream = open_audio(
        data,
        encoding=encoding,
        sample_rate_hertz=sample_rate_hertz,
        channel_count=channel_count,
        target_rate=target_rate,
        max_seconds=max_seconds,
    )
    blocks = list(stream.blocks())
    joined = np.concatenate(blocks, axis=0)
    channels = [np.ascontiguousarray(joined[:, index]) for index in range(joined.shape[1])]
    return DecodedAudio(
        channels=channels,
        sample_rate=target_rate,
        source_rate=stream.source_rate,
        duration_seconds=len(channels[0]) / target_rate,
        encoding=stream.encoding,
        container=stream.container,
        skipped_packets=stream.skipped_packets,
    )


def open_audio(
    data: bytes,
    *,
    encoding: AudioEncoding | None,
    sample_rate_hertz: int | None,
    channel_count: int | None,
    target_rate: int = DEFAULT_TARGET_RATE,
    max_seconds: float = MAX_SECONDS,
) -> AudioStream:
    """Check ``data`` and make it ready to decode, at ``target_rate``, in pieces.

    ``encoding``, ``sample_rate_hertz`` and ``channel_count`` are what the request declared (``None``
    when not set). Raises :class:`AudioDecodeError` when the bytes are empty, not what was declared, or
    headerless without a declared rate; decoding itself (:meth:`AudioStream.blocks`) raises it for bytes
    that turn out undecodable or too long. Never anything else for bad bytes.
    """
    if target_rate <= 0:
        raise ValueError(f"target_rate must be positive, not {target_rate}")
    if not data:
        raise AudioDecodeError(EMPTY_AUDIO, "The audio is empty (0 bytes): send the audio again.")
    if channel_count is not None and not 1 <= channel_count <= MAX_CHANNELS:
        raise AudioDecodeError(
            UNSUPPORTED_AUDIO,
            f"{_API_FIELD_PREFIX}audioChannelCount is {channel_count}; it must be between 1 and "
            f"{MAX_CHANNELS}.",
        )
    if encoding is not None:
        try:
            encoding = AudioEncoding(encoding)  # a plain "MP3" string works too
        except ValueError:
            raise AudioDecodeError(
                UNSUPPORTED_AUDIO,
                f"{_API_FIELD_PREFIX}audioEncoding is {encoding!r}; it must be one of "
                f"{', '.join(member.value for member in AudioEncoding)}.",
            ) from None
    declared = DeclaredAudio(
        encoding=encoding, sample_rate_hertz=sample_rate_hertz, channel_count=channel_count
    )
    try:
        info = probe_audio(data[:_PROBE_BYTES], len(data), declared)
    except AudioProbeError as exc:
        raise AudioDecodeError(exc.reason, _SPEC_FIELD.sub(_API_FIELD_PREFIX, exc.message)) from None
    stream = AudioStream(
        data,
        encoding=info.encoding,
        container=info.container,
        channel_count=info.channels,
        source_rate=info.sample_rate_hertz or target_rate,
        target_rate=target_rate,
        max_seconds=max_seconds,
    )
    if info.container is ContainerFormat.RAW:
        stream.check_headerless()
    return stream


class AudioStream:
    """Audio that :func:`open_audio` accepted, decoded as it is read: :meth:`blocks` or :meth:`segments`,
    once. ``duration_seconds`` and ``skipped_packets`` are final once that iteration has ended."""

    def __init__(
        self,
        data: bytes,
        *,
        encoding: AudioEncoding,
        container: ContainerFormat,
        channel_count: int,
        source_rate: int,
        target_rate: int,
        max_seconds: float,
    ) -> None:
        self.encoding = encoding
        self.container = container
        #: From the header; the first decoded frame has the last word (a damaged MP3 may disagree).
        self.channel_count = channel_count
        self.source_rate = source_rate
        self.sample_rate = target_rate
        self.max_seconds = max_seconds
        self.skipped_packets = 0
        #: Samples per channel decoded so far.
        self.samples = 0
        self._data = data
        self._finished = False
        self._started = False

    @property
    def duration_seconds(self) -> float | None:
        """The duration once decoding has finished; None before."""
        return self.samples / self.sample_rate if self._finished else None

    @property
    def decoded_seconds(self) -> float:
        return self.samples / self.sample_rate

    # --- whole blocks of every channel ---------------------------------------------------------------

    def blocks(self) -> Iterator[NDArray[np.int16]]:
        """Decoded audio as ``(samples, channels)`` int16 blocks, in order, at the target rate."""
        if self._started:
            raise RuntimeError("an AudioStream is decoded once")
        self._started = True
        if self.container is ContainerFormat.RAW:
            source = self._headerless_blocks()
        else:
            source = self._container_blocks()
        for block in source:
            self.samples += len(block)
            yield block
        self._finished = True

    def check_headerless(self) -> None:
        """Refuse headerless PCM shorter than one sample, or longer than the limit, before decoding."""
        frames = len(self._data) // (2 * self.channel_count)
        if frames == 0:
            raise AudioDecodeError(
                CORRUPT_AUDIO,
                f"The audio is {len(self._data)} bytes long, less than one sample of 16-bit PCM with "
                f"{self.channel_count} channel(s): check the upload and "
                f"{_API_FIELD_PREFIX}audioChannelCount.",
            )
        if frames / self.source_rate > self.max_seconds:
            raise _too_long(frames / self.source_rate, self.max_seconds)

    def _headerless_blocks(self) -> Iterator[NDArray[np.int16]]:
        channel_count, rate, target_rate = self.channel_count, self.source_rate, self.sample_rate
        frames = len(self._data) // (2 * channel_count)
        # A trailing partial frame (a cut upload) is dropped rather than shifting every later sample.
        interleaved = np.frombuffer(self._data, dtype="<i2", count=frames * channel_count).reshape(
            frames, channel_count
        )
        if rate == target_rate:
            for start in range(0, frames, _CHUNK_SAMPLES):
                yield interleaved[start : start + _CHUNK_SAMPLES].astype(np.int16)
            return
        # One resampler for all channels, with packed samples: it filters each channel on its own.
        layout = _LAYOUTS[channel_count]
        resampler = av.AudioResampler(format="s16", layout=layout, rate=target_rate)
        for start in range(0, frames, _CHUNK_SAMPLES):
            piece = np.ascontiguousarray(interleaved[start : start + _CHUNK_SAMPLES], dtype=np.int16)
            frame = av.AudioFrame.from_ndarray(piece.reshape(1, -1), format="s16", layout=layout)
            frame.sample_rate = rate
            for out in resampler.resample(frame):
                yield _as_int16(out.to_ndarray()).reshape(-1, channel_count)
        for out in resampler.resample(None):
            yield _as_int16(out.to_ndarray()).reshape(-1, channel_count)

    def _container_blocks(self) -> Iterator[NDArray[np.int16]]:
        demuxer, decoders = _DEMUXERS[self.container]
        what = self.container.value.upper()
        max_samples = int(self.max_seconds * self.sample_rate)
        collector = _Collector(self.sample_rate, max_samples)
        damaged = False
        try:
            with av.open(io.BytesIO(self._data), mode="r", format=demuxer) as box:
                if not box.streams.audio:
                    raise AudioDecodeError(
                        CORRUPT_AUDIO,
                        f"The {what} file holds no audio stream FFmpeg can read: check that it plays.",
                    )
                stream = box.streams.audio[0]
                decoder = stream.codec_context.name
                if decoder not in decoders:
                    raise AudioDecodeError(
                        UNSUPPORTED_AUDIO,
                        f"The {what} file holds {decoder} audio, which this service cannot take.",
                    )
                self.source_rate = stream.codec_context.sample_rate or self.source_rate
                if stream.codec_context.channels > MAX_CHANNELS:
                    raise AudioDecodeError(
                        UNSUPPORTED_AUDIO,
                        f"The {what} file has {stream.codec_context.channels} channels; at most "
                        f"{MAX_CHANNELS} are accepted: split the channels into separate files.",
                    )
                try:
                    for packet in box.demux(stream):
                        try:
                            frames = packet.decode()
                        except (av.FFmpegError, ValueError):
                            collector.skipped += 1
                            continue
                        for frame in frames:
                            yield from self._collected(collector, frame)
                except (av.FFmpegError, ValueError):
                    damaged = True  # the demuxer gave up: keep what was decoded before that point
                yield from self._collected(collector, None)
        except av.error.EOFError:
            raise AudioDecodeError(
                CORRUPT_AUDIO,
                f"The {what} file ends before its first audio packet: the upload was cut short, or the "
                "file holds no audio. Check that the file plays.",
            ) from None
        except (av.FFmpegError, ValueError) as exc:
            raise AudioDecodeError(
                CORRUPT_AUDIO,
                f"The {what} data cannot be decoded ({_ffmpeg_reason(exc)}): check that the upload "
                "completed and the file plays.",
            ) from None
        finally:
            self.skipped_packets = collector.skipped + int(damaged)
        if collector.samples == 0:
            if collector.skipped or damaged:
                raise AudioDecodeError(
                    CORRUPT_AUDIO,
                    f"No audio could be decoded from the {what} file: it is damaged or truncated; "
                    "check that the upload completed and the file plays.",
                )
            raise AudioDecodeError(EMPTY_AUDIO, f"The {what} file has headers but no audio samples.")
        if collector.shape is not None:
            self.source_rate = collector.shape[0]

    def _collected(self, collector: _Collector, frame: av.AudioFrame | None) -> Iterator[NDArray[np.int16]]:
        for block in collector.add(frame):
            if collector.shape is not None:
                self.channel_count = collector.shape[1]
            yield block

    # --- pieces of each channel, for the engine -------------------------------------------------------

    def segments(self, window_seconds: float | None = None) -> Iterator[PcmSegment]:
        """Each channel in pieces of at most ``window_seconds`` (by default from the channel count: see
        :data:`WINDOW_CHANNEL_SECONDS`), cut in a pause of each piece's last third; pieces of the same
        channel follow each other without a gap or an overlap.

        At most about two windows of every channel are held at once, whatever the duration.
        """
        if window_seconds is None:
            per_channel = WINDOW_CHANNEL_SECONDS / max(1, self.channel_count)
            window_seconds = min(MAX_WINDOW_SECONDS, max(MIN_WINDOW_SECONDS, per_channel))
        window = max(1, int(window_seconds * self.sample_rate))
        cutter = _Cutter(window, hop=max(1, self.sample_rate // 100), rate=self.sample_rate)
        pending: list[NDArray[np.int16]] = []
        pending_samples = 0
        for block in self.blocks():
            pending.append(block)
            pending_samples += len(block)
            if pending_samples >= window // 4:
                joined = np.concatenate(pending, axis=0)
                pending, pending_samples = [], 0
                yield from cutter.feed(joined)
                del joined
        if pending:
            yield from cutter.feed(np.concatenate(pending, axis=0))
        yield from cutter.finish()


class _Cutter:
    """Cuts interleaved blocks into per-channel pieces (see :meth:`AudioStream.segments`)."""

    def __init__(self, window: int, *, hop: int, rate: int) -> None:
        self.window = window
        self.hop = hop
        self.rate = rate
        self.carry: list[PcmArray] = []
        self.starts: list[int] = []

    def feed(self, block: NDArray[np.int16]) -> Iterator[PcmSegment]:
        channels = block.shape[1]
        while len(self.carry) < channels:
            self.carry.append(np.zeros(0, dtype=np.int16))
            self.starts.append(self.starts[0] if self.starts else 0)
        for index in range(channels):
            data = np.concatenate([self.carry[index], block[:, index]])
            offset = 0
            while len(data) - offset >= self.window:
                cut = offset + quiet_cut(data[offset : offset + self.window], self.hop)
                yield self._segment(index, data[offset:cut])
                offset = cut
            self.carry[index] = data[offset:].copy()

    def finish(self) -> Iterator[PcmSegment]:
        for index, rest in enumerate(self.carry):
            if len(rest):
                yield self._segment(index, rest)
            self.carry[index] = np.zeros(0, dtype=np.int16)

    def _segment(self, index: int, pcm: PcmArray) -> PcmSegment:
        start = self.starts[index]
        self.starts[index] = start + len(pcm)
        return PcmSegment(
            channel=index + 1,
            start_seconds=start / self.rate,
            end_seconds=(start + len(pcm)) / self.rate,
            pcm=np.ascontiguousarray(pcm),
        )


def quiet_cut(pcm: PcmArray, hop: int) -> int:
    """Where to end a piece of ``pcm``: in its last third, the middle of the quietest stretch of
    :data:`_PAUSE_HOPS` hops (a pause between words rather than a quiet instant inside one)."""
    low = 2 * len(pcm) // 3
    frames = (len(pcm) - low) // hop
    if frames == 0:
        return len(pcm)
    window = pcm[low : low + frames * hop].astype(np.int64)
    energy = np.square(window).reshape(frames, hop).sum(axis=1)
    span = min(_PAUSE_HOPS, frames)
    sums = np.convolve(energy, np.ones(span, dtype=np.int64), mode="valid")
    return low + (int(np.argmin(sums)) + span // 2) * hop + hop // 2


def _too_long(seconds: float, max_seconds: float) -> AudioDecodeError:
    return AudioDecodeError(
        UNSUPPORTED_AUDIO,
        f"The audio is longer than the limit of {_span(max_seconds)} (it lasts at least {_span(seconds)}): "
        "split it into shorter files.",
    )


def _span(seconds: float) -> str:
    return f"{seconds / 3600:.4g} h" if seconds >= 3600 else f"{seconds:.4g} s"


def _as_int16(array: NDArray[np.generic]) -> NDArray[np.int16]:
    if array.dtype != np.int16:  # pragma: no cover - the resamplers are set up to produce s16
        raise AssertionError(f"expected int16 samples from the resampler, got {array.dtype}")
    return array.astype(np.int16, copy=False)


# --------------------------------------------------------------------------------------------------------
# Containers (WAV, Ogg Opus, MP3) through FFmpeg
# --------------------------------------------------------------------------------------------------------


class _Collector:
    """Resamples decoded frames to interleaved s16 at the target rate and hands them on.

    Interleaved (packed) output has one data plane whatever the channel count: PyAV reads planar frames
    through ``AVFrame.data``, which holds only 8 planes, so planar output with more channels would read
    wild pointers.
    """

    def __init__(self, target_rate: int, max_samples: int) -> None:
        self.target_rate = target_rate
        self.max_samples = max_samples
        self.skipped = 0
        self.samples = 0
        self.shape: tuple[int, int, str] | None = None  # (rate, channels, sample format) of the stream
        self._resampler: av.AudioResampler | None = None

    def add(self, frame: av.AudioFrame | None) -> list[NDArray[np.int16]]:
        """Take one decoded frame; ``None`` flushes the resampler at the end of the stream. Answers the
        ``(samples, channels)`` blocks that came out."""
        if frame is None:
            return self._keep(self._resampler.resample(None)) if self._resampler is not None else []
        shape = (frame.sample_rate, frame.layout.nb_channels, frame.format.name)
        if self.shape is None:
            if frame.sample_rate <= 0 or not 1 <= frame.layout.nb_channels <= MAX_CHANNELS:
                self.skipped += 1
                return []
            self.shape = shape
            self._resampler = av.AudioResampler(format="s16", layout=frame.layout, rate=self.target_rate)
        elif shape != self.shape:
            # A damaged MP3 can claim another rate or channel count midway; such frames are noise.
            self.skipped += 1
            return []
        assert self._resampler is not None
        frame.pts = None  # timestamps in damaged streams may jump; the samples are all we want
        try:
            resampled = self._resampler.resample(frame)
        except (av.FFmpegError, ValueError):
            self.skipped += 1
            return []
        return self._keep(resampled)

    def _keep(self, frames: list[av.AudioFrame]) -> list[NDArray[np.int16]]:
        assert self.shape is not None
        channel_count = self.shape[1]
        blocks = []
        for out in frames:
            array = _as_int16(out.to_ndarray()).reshape(-1, channel_count)
            blocks.append(array)
            self.samples += array.shape[0]
            if self.samples > self.max_samples:
                raise _too_long(self.samples / self.target_rate, self.max_samples / self.target_rate)
        return blocks


def _ffmpeg_reason(exc: Exception) -> str:
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__
