"""End-pointing: where the utterances of a stream of audio start and end, decided from loudness alone.

Pure logic: 16-bit PCM goes in (:meth:`Endpointer.feed`, in pieces of any size), events come out, with
positions in samples from the start of the stream. No I/O and no clock: the same audio gives the same
events however it is cut into pieces, so the decisions are tested by feeding samples.

How it decides, frame by frame (20 ms):

* A frame is **speech** when it is louder than ``floor_dbfs`` (-60 dBFS) and ``margin_db`` (12 dB) above
  the noise floor: the ``noise_percentile`` (10th) percentile of the loudness of the last
  ``noise_window_seconds`` (5 s), updated every ``noise_update_frames`` frames (every frame at first).
  The bar never rises above ``max_threshold_dbfs`` (-25 dBFS), so a loud room does not hide speech.
* ``start_seconds`` (100 ms) of speech frames in a row **start an utterance**; it begins
  ``preroll_seconds`` (300 ms) before them (never before the end of the previous one), so that a soft
  onset is not cut off.
* ``silence_seconds`` (400 ms) without a speech frame **end it**, ``tail_seconds`` (200 ms) after its
  last speech frame. 400 ms is the shortest that keeps the pauses inside the sentences of the corpus
  (``ru-courier``: about 350 ms) within one utterance; 300 ms also split ``librivox-0880``.
* ``speculate_seconds`` (150 ms) without a speech frame **pause it** (:class:`UtterancePaused`, with the
  audio so far): a session may start recognising the utterance then, to have its final result ready
  when the end is decided. Speech before the end **resumes it** (:class:`UtteranceResumed`).
* Frames of digital silence (at most ``digital_silence_dbfs``, -90 dBFS: zeros) are not noise: they
  are left out of the noise floor, which they would pull down to the absolute floor (then the room tone
  after speech counted as speech, and utterances ended up to 0.6 s late).
* An utterance never grows beyond ``max_utterance_seconds`` (20 s): it is cut at the quietest frame of
  its last third, and the next one starts right there (a recogniser's window is 30 s; a partial result
  recognises the utterance so far each time).
* :meth:`Endpointer.finish` ends an utterance that is still open when the stream ends.
"""

from __future__ import annotations

import collections
import enum
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "EndReason",
    "Endpointer",
    "EndpointerSettings",
    "Event",
    "UtteranceEnded",
    "UtterancePaused",
    "UtteranceResumed",
    "UtteranceStarted",
    "frame_loudness",
]

#: The loudness given to digital silence (log10 of 0 is minus infinity).
SILENCE_DBFS: Final = -120.0


@dataclass(frozen=True)
class EndpointerSettings:
    sample_rate: int = 16000
    frame_seconds: float = 0.02
    silence_seconds: float = 0.4
    #: 0: no UtterancePaused events.
    speculate_seconds: float = 0.15
    start_seconds: float = 0.1
    preroll_seconds: float = 0.3
    tail_seconds: float = 0.2
    max_utterance_seconds: float = 20.0
    floor_dbfs: float = -60.0
    max_threshold_dbfs: float = -25.0
    margin_db: float = 12.0
    noise_window_seconds: float = 5.0
    noise_percentile: float = 10.0
    noise_update_frames: int = 10
    digital_silence_dbfs: float = -90.0

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.frame_seconds <= 0:
            raise ValueError("sample_rate and frame_seconds must be positive")
        if self.frame_samples < 1:
            raise ValueError("a frame must hold at least one sample")
        if self.max_utterance_seconds < 3 * self.silence_seconds:
            raise ValueError("max_utterance_seconds must be at least three times silence_seconds")
        if not 0 <= self.speculate_seconds < self.silence_seconds:
            raise ValueError("speculate_seconds must be at least 0 and less than silence_seconds")

    @property
    def frame_samples(self) -> int:
        return round(self.sample_rate * self.frame_seconds)

    def frames(self, seconds: float) -> int:
        """``seconds`` in whole frames (at least one)."""
        return max(1, math.ceil(seconds / self.frame_seconds - 1e-9))

    def samples(self, seconds: float) -> int:
        return round(seconds * self.sample_rate)


class EndReason(enum.StrEnum):
    SILENCE = "silence"
    #: The utterance reached ``max_utterance_seconds``.
    LENGTH = "length"
    #: The stream ended (:meth:`Endpointer.finish`).
    END_OF_STREAM = "end of stream"


@dataclass(frozen=True)
class UtteranceStarted:
    #: The first sample of the utterance (pre-roll included).
    start: int


@dataclass(frozen=True)
class UtteranceEnded:
    start: int
    #: One past its last sample.
    end: int
    reason: EndReason


@dataclass(frozen=True)
class UtterancePaused:
    """``speculate_seconds`` of silence in the open utterance: unless :class:`UtteranceResumed` follows,
    its :class:`UtteranceEnded` (for silence, or the end of the stream) ends the same speech."""

    start: int
    #: One past the last sample decided on: the utterance so far, its speech and some silence.
    end: int


@dataclass(frozen=True)
class UtteranceResumed:
    """Speech again in a paused utterance, which goes on."""

    start: int


Event = UtteranceStarted | UtterancePaused | UtteranceResumed | UtteranceEnded


def frame_loudness(pcm: NDArray[np.int16], frame_samples: int) -> NDArray[np.float64]:
    """The RMS loudness in dBFS of each whole frame of ``pcm`` (digital silence: :data:`SILENCE_DBFS`)."""
    frames = len(pcm) // frame_samples
    if frames == 0:
        return np.zeros(0, dtype=np.float64)
    blocks = pcm[: frames * frame_samples].astype(np.float64).reshape(frames, frame_samples)
    rms = np.sqrt(np.mean(np.square(blocks), axis=1))
    with np.errstate(divide="ignore"):
        loudness = 20.0 * np.log10(rms / 32768.0)
    levels: NDArray[np.float64] = np.maximum(loudness, SILENCE_DBFS)
    return levels


class Endpointer:
    """Finds utterances in a stream of mono 16-bit PCM at ``settings.sample_rate``; see the module."""

    def __init__(self, settings: EndpointerSettings | None = None) -> None:
        self.settings = settings or EndpointerSettings()
        s = self.settings
        self._frame = s.frame_samples
        self._start_frames = s.frames(s.start_seconds)
        self._silence_frames = s.frames(s.silence_seconds)
        self._speculate_frames = s.frames(s.speculate_seconds) if s.speculate_seconds > 0 else 0
        self._paused = False
        self._max_samples = s.samples(s.max_utterance_seconds)
        self._preroll = s.samples(s.preroll_seconds)
        self._tail = s.samples(s.tail_seconds)
        self._carry = np.zeros(0, dtype=np.int16)
        #: Whole frames decided so far.
        self._frames = 0
        #: Samples fed so far, the carry included.
        self.samples = 0
        self._history: collections.deque[float] = collections.deque(
            maxlen=max(1, s.frames(s.noise_window_seconds))
        )
        self._noise: float | None = None
        self._speech_run = 0
        self._silence_run = 0
        #: The earliest sample the next utterance may start at (the end of the previous one).
        self._lower_bound = 0
        self._start: int | None = None
        self._last_speech_end = 0
        #: (frame number, loudness) of the open utterance's frames, for a cut at its quietest.
        self._utterance_frames: list[tuple[int, float]] = []
        self._finished = False

    # --- state ---

    @property
    def in_utterance(self) -> bool:
        return self._start is not None

    @property
    def utterance_start(self) -> int | None:
        """The first sample of the open utterance, or None between utterances."""
        return self._start

    @property
    def decided(self) -> int:
        """Samples decided on (whole frames); the rest waits for more audio."""
        return self._frames * self._frame

    @property
    def threshold_dbfs(self) -> float:
        """The loudness a frame must exceed to be speech, now."""
        s = self.settings
        bar = s.floor_dbfs if self._noise is None else max(s.floor_dbfs, self._noise + s.margin_db)
        return min(bar, s.max_threshold_dbfs)

    # --- input ---

    def feed(self, pcm: NDArray[np.int16]) -> list[Event]:
        """Take the next samples; answer the events they decide, in order."""
        if self._finished:
            raise RuntimeError("the stream has ended")
        if len(pcm) == 0:
            return []
        self.samples += len(pcm)
        data = np.concatenate([self._carry, pcm.astype(np.int16, copy=False)]) if len(self._carry) else pcm
        whole = (len(data) // self._frame) * self._frame
        self._carry = np.array(data[whole:], dtype=np.int16)
        events: list[Event] = []
        for loudness in frame_loudness(data[:whole], self._frame).tolist():
            self._decide(float(loudness), events)
        return events

    def finish(self) -> list[Event]:
        """The stream ended: close the open utterance (at its last speech, plus the tail, within the
        audio fed). Answers its :class:`UtteranceEnded`, or nothing."""
        if self._finished:
            return []
        self._finished = True
        if self._start is None:
            return []
        end = min(self.samples, self._last_speech_end + self._tail)
        event = UtteranceEnded(self._start, max(end, self._start + 1), EndReason.END_OF_STREAM)
        self._start = None
        return [event]

    # --- the decisions ---

    def _decide(self, loudness: float, events: list[Event]) -> None:
        frame = self._frames
        self._frames += 1
        speech = loudness > self.threshold_dbfs
        self._remember(loudness)
        frame_end = (frame + 1) * self._frame
        if self._start is None:
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run >= self._start_frames:
                onset = (frame + 1 - self._speech_run) * self._frame
                self._open(max(self._lower_bound, onset - self._preroll), frame_end, events)
            return
        self._utterance_frames.append((frame, loudness))
        if speech:
            if self._paused:
                self._paused = False
                events.append(UtteranceResumed(self._start))
            self._silence_run = 0
            self._last_speech_end = frame_end
        else:
            self._silence_run += 1
            if self._silence_run >= self._silence_frames:
                end = min(self._last_speech_end + self._tail, frame_end)
                self._close(end, EndReason.SILENCE, events)
                return
            if self._silence_run == self._speculate_frames:
                self._paused = True
                events.append(UtterancePaused(self._start, frame_end))
        if frame_end - self._start >= self._max_samples:
            self._cut(frame_end, events)

    def _open(self, start: int, frame_end: int, events: list[Event]) -> None:
        self._start = start
        self._silence_run = 0
        self._paused = False
        self._last_speech_end = frame_end
        self._utterance_frames = []
        events.append(UtteranceStarted(start))

    def _close(self, end: int, reason: EndReason, events: list[Event]) -> None:
        assert self._start is not None
        events.append(UtteranceEnded(self._start, end, reason))
        self._lower_bound = end
        self._start = None
        self._speech_run = 0
        self._paused = False
        self._utterance_frames = []

    def _cut(self, frame_end: int, events: list[Event]) -> None:
        """The open utterance is as long as allowed: end it at the quietest frame of its last third and
        go on with the next one from there."""
        assert self._start is not None
        earliest = self._start + 2 * (frame_end - self._start) // 3
        candidates = [
            (level, number) for number, level in self._utterance_frames if number * self._frame >= earliest
        ]
        cut = (min(candidates)[1] + 1) * self._frame if candidates else frame_end
        rest = [(number, level) for number, level in self._utterance_frames if number * self._frame >= cut]
        self._close(cut, EndReason.LENGTH, events)
        self._open(cut, frame_end, events)
        self._utterance_frames = rest

    def _remember(self, loudness: float) -> None:
        if loudness <= self.settings.digital_silence_dbfs:
            # Zeros say nothing about the room's noise: they would pull the bar down to the floor.
            return
        self._history.append(loudness)
        # Every frame at first (the bar must not stay at the absolute floor while the first noise plays),
        # then every noise_update_frames frames.
        every = self.settings.noise_update_frames
        if len(self._history) <= every or len(self._history) % every == 0:
            levels = np.fromiter(self._history, dtype=np.float64)
            self._noise = float(np.percentile(levels, self.settings.noise_percentile))
