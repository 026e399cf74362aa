"""Decode the bytes of an audio object into 16-bit PCM, one array per channel, at the engines' rate.

:func:`decode_audio` takes what SpeechKit v2 takes, and checks it the way the operator does:

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
from dataclasses import dataclass
from typing import Final

import av
import numpy as np
from numpy.typing import NDArray

from speechkit_operator.logic.audio_probe import (
    CORRUPT_AUDIO,
    EMPTY_AUDIO,
    UNSUPPORTED_AUDIO,
    AudioProbeError,
    DeclaredAudio,
    ProbeFailure,
    probe_audio,
)
from speechkit_operator.models.audio import AudioEncoding, ContainerFormat

__all__ = [
    "DEFAULT_TARGET_RATE",
    "MAX_CHANNELS",
    "MAX_SECONDS",
    "AudioDecodeError",
    "DecodeFailure",
    "DecodedAudio",
    "PcmArray",
    "decode_audio",
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

#: How many leading bytes the prober reads; large enough for cover art in ID3 tags and WAV metadata.
_PROBE_BYTES: Final = 1 << 20
#: Samples per frame fed to the resampler when resampling headerless PCM.
_CHUNK_SAMPLES: Final = 1 << 16
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


def decode_audio(
    data: bytes,
    *,
    encoding: AudioEncoding | None,
    sample_rate_hertz: int | None,
    channel_count: int | None,
    target_rate: int = DEFAULT_TARGET_RATE,
    max_seconds: float = MAX_SECONDS,
) -> DecodedAudio:
    """Decode ``data`` into one int16 array per channel at ``target_rate``.

    ``encoding``, ``sample_rate_hertz`` and ``channel_count`` are what the request declared (``None``
    when not set). Raises :class:`AudioDecodeError` when the bytes are empty, undecodable, not what was
    declared, or headerless without a declared rate; never anything else for bad bytes.
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

    max_samples = int(max_seconds * target_rate)
    if info.container is ContainerFormat.RAW:
        rate = info.sample_rate_hertz
        assert rate is not None  # the prober insists on a declared rate for headerless audio
        channels = _decode_headerless(data, rate, info.channels, target_rate, max_seconds)
        source_rate, skipped = rate, 0
    else:
        channels, source_rate, skipped = _decode_container(data, info.container, target_rate, max_samples)
    return DecodedAudio(
        channels=channels,
        sample_rate=target_rate,
        source_rate=source_rate,
        duration_seconds=len(channels[0]) / target_rate,
        encoding=info.encoding,
        container=info.container,
        skipped_packets=skipped,
    )


# --------------------------------------------------------------------------------------------------------
# Headerless PCM
# --------------------------------------------------------------------------------------------------------


def _too_long(seconds: float, max_seconds: float) -> AudioDecodeError:
    return AudioDecodeError(
        UNSUPPORTED_AUDIO,
        f"The audio is longer than the limit of {_span(max_seconds)} (it lasts at least {_span(seconds)}): "
        "split it into shorter files.",
    )


def _span(seconds: float) -> str:
    return f"{seconds / 3600:.4g} h" if seconds >= 3600 else f"{seconds:.4g} s"


def _decode_headerless(
    data: bytes, rate: int, channel_count: int, target_rate: int, max_seconds: float
) -> list[PcmArray]:
    frame_bytes = 2 * channel_count
    frames = len(data) // frame_bytes
    if frames == 0:
        raise AudioDecodeError(
            CORRUPT_AUDIO,
            f"The audio is {len(data)} bytes long, less than one sample of 16-bit PCM with "
            f"{channel_count} channel(s): check the upload and {_API_FIELD_PREFIX}audioChannelCount.",
        )
    if frames / rate > max_seconds:
        raise _too_long(frames / rate, max_seconds)
    # A trailing partial frame (a cut upload) is dropped rather than shifting every later sample.
    interleaved = np.frombuffer(data, dtype="<i2", count=frames * channel_count).reshape(
        frames, channel_count
    )
    return [
        _resample_mono(np.ascontiguousarray(interleaved[:, index], dtype=np.int16), rate, target_rate)
        for index in range(channel_count)
    ]


def _resample_mono(samples: PcmArray, rate: int, target_rate: int) -> PcmArray:
    if rate == target_rate:
        return samples
    resampler = av.AudioResampler(format="s16", layout="mono", rate=target_rate)
    pieces: list[PcmArray] = []
    for start in range(0, len(samples), _CHUNK_SAMPLES):
        frame = av.AudioFrame.from_ndarray(
            samples[start : start + _CHUNK_SAMPLES].reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = rate
        pieces.extend(_as_int16(out.to_ndarray())[0] for out in resampler.resample(frame))
    pieces.extend(_as_int16(out.to_ndarray())[0] for out in resampler.resample(None))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def _as_int16(array: NDArray[np.generic]) -> NDArray[np.int16]:
    if array.dtype != np.int16:  # pragma: no cover - the resamplers are set up to produce s16
        raise AssertionError(f"expected int16 samples from the resampler, got {array.dtype}")
    return array.astype(np.int16, copy=False)


# --------------------------------------------------------------------------------------------------------
# Containers (WAV, Ogg Opus, MP3) through FFmpeg
# --------------------------------------------------------------------------------------------------------


class _Collector:
    """Resamples decoded frames to interleaved s16 at the target rate and keeps them.

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
        self._pieces: list[NDArray[np.int16]] = []  # (samples, channels) blocks

    def add(self, frame: av.AudioFrame | None) -> None:
        """Take one decoded frame; ``None`` flushes the resampler at the end of the stream."""
        if frame is None:
            if self._resampler is not None:
                self._keep(self._resampler.resample(None))
            return
        shape = (frame.sample_rate, frame.layout.nb_channels, frame.format.name)
        if self.shape is None:
            if frame.sample_rate <= 0 or not 1 <= frame.layout.nb_channels <= MAX_CHANNELS:
                self.skipped += 1
                return
            self.shape = shape
            self._resampler = av.AudioResampler(format="s16", layout=frame.layout, rate=self.target_rate)
        elif shape != self.shape:
            # A damaged MP3 can claim another rate or channel count midway; such frames are noise.
            self.skipped += 1
            return
        assert self._resampler is not None
        frame.pts = None  # timestamps in damaged streams may jump; the samples are all we want
        try:
            self._keep(self._resampler.resample(frame))
        except (av.FFmpegError, ValueError):
            self.skipped += 1

    def _keep(self, frames: list[av.AudioFrame]) -> None:
        assert self.shape is not None
        channel_count = self.shape[1]
        for out in frames:
            array = _as_int16(out.to_ndarray()).reshape(-1, channel_count)
            self._pieces.append(array)
            self.samples += array.shape[0]
            if self.samples > self.max_samples:
                raise _too_long(self.samples / self.target_rate, self.max_samples / self.target_rate)

    def channels(self) -> list[PcmArray]:
        if not self._pieces:
            return []
        joined = np.concatenate(self._pieces, axis=0)
        return [np.ascontiguousarray(joined[:, index]) for index in range(joined.shape[1])]


def _decode_container(
    data: bytes, container: ContainerFormat, target_rate: int, max_samples: int
) -> tuple[list[PcmArray], int, int]:
    demuxer, decoders = _DEMUXERS[container]
    what = container.value.upper()
    collector = _Collector(target_rate, max_samples)
    damaged = False
    try:
        with av.open(io.BytesIO(data), mode="r", format=demuxer) as box:
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
            source_rate = stream.codec_context.sample_rate
            if stream.codec_context.channels > MAX_CHANNELS:
                raise AudioDecodeError(
                    UNSUPPORTED_AUDIO,
                    f"The {what} file has {stream.codec_context.channels} channels; at most {MAX_CHANNELS} "
                    "are accepted: split the channels into separate files.",
                )
            try:
                for packet in box.demux(stream):
                    try:
                        frames = packet.decode()
                    except (av.FFmpegError, ValueError):
                        collector.skipped += 1
                        continue
                    for frame in frames:
                        collector.add(frame)
            except (av.FFmpegError, ValueError):
                damaged = True  # the demuxer gave up: keep what was decoded before that point
            collector.add(None)
    except av.error.EOFError:
        raise AudioDecodeError(
            CORRUPT_AUDIO,
            f"The {what} file ends before its first audio packet: the upload was cut short, or the file "
            "holds no audio. Check that the file plays.",
        ) from None
    except (av.FFmpegError, ValueError) as exc:
        raise AudioDecodeError(
            CORRUPT_AUDIO,
            f"The {what} data cannot be decoded ({_ffmpeg_reason(exc)}): check that the upload completed "
            "and the file plays.",
        ) from None
    channels = collector.channels()
    if not channels or channels[0].size == 0:
        if collector.skipped or damaged:
            raise AudioDecodeError(
                CORRUPT_AUDIO,
                f"No audio could be decoded from the {what} file: it is damaged or truncated; "
                "check that the upload completed and the file plays.",
            )
        raise AudioDecodeError(EMPTY_AUDIO, f"The {what} file has headers but no audio samples.")
    if collector.shape is not None:
        source_rate = collector.shape[0]
    return channels, source_rate or target_rate, collector.skipped + int(damaged)


def _ffmpeg_reason(exc: Exception) -> str:
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__
