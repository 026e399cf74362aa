"""The end-pointer of streaming recognition: pure decisions on samples, whatever the pieces they come in."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from speechkit_operator.selfhosted.streaming.endpointing import (
    Endpointer,
    EndpointerSettings,
    EndReason,
    Event,
    UtteranceEnded,
    UtterancePaused,
    UtteranceResumed,
    UtteranceStarted,
    frame_loudness,
)
from tests.support.audio import audio_dir

ROOT = Path(__file__).resolve().parents[2]

RATE = 16000
rng = np.random.default_rng(7)


def noise(seconds: float, dbfs: float = -65.0) -> NDArray[np.int16]:
    amplitude = 32768 * 10 ** (dbfs / 20)
    return (rng.standard_normal(round(seconds * RATE)) * amplitude).astype(np.int16)


def speech(seconds: float, dbfs: float = -20.0) -> NDArray[np.int16]:
    """A loud, voiced-like signal (a 180 Hz tone with harmonics, amplitude-modulated like syllables)."""
    t = np.arange(round(seconds * RATE)) / RATE
    voice = np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t)
    syllables = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    amplitude = 32768 * 10 ** (dbfs / 20)
    return (voice * syllables * amplitude / 1.2 + noise(seconds)).astype(np.int16)


def run(pcm: NDArray[np.int16], piece: int, settings: EndpointerSettings | None = None) -> list[Event]:
    endpointer = Endpointer(settings)
    events: list[Event] = []
    for start in range(0, len(pcm), piece):
        events += endpointer.feed(pcm[start : start + piece])
    return events + endpointer.finish()


def spans(events: list[Event]) -> list[tuple[float, float, EndReason]]:
    return [(e.start / RATE, e.end / RATE, e.reason) for e in events if isinstance(e, UtteranceEnded)]


def test_loudness_of_frames() -> None:
    levels = frame_loudness(np.concatenate([np.zeros(320, np.int16), np.full(320, 16384, np.int16)]), 320)
    assert levels[0] == -120.0
    assert levels[1] == pytest.approx(-6.02, abs=0.01)
    assert len(frame_loudness(np.zeros(100, np.int16), 320)) == 0


def test_a_pause_of_400_ms_ends_an_utterance_and_a_shorter_one_does_not() -> None:
    pcm = np.concatenate(
        [noise(0.5), speech(1.5), noise(0.3), speech(1.0), noise(0.8), speech(1.2), noise(1.0)]
    )

    found = spans(run(pcm, 6400))

    assert len(found) == 2
    (start1, end1, reason1), (start2, end2, reason2) = found
    assert reason1 is reason2 is EndReason.SILENCE
    # The first: from 300 ms of pre-roll before the speech to 200 ms after it, the short pause inside.
    assert start1 == pytest.approx(0.2, abs=0.03)
    assert end1 == pytest.approx(3.5, abs=0.05)
    assert start2 == pytest.approx(4.1 - 0.3, abs=0.03)
    assert end2 == pytest.approx(5.3 + 0.2, abs=0.05)


def test_the_decisions_do_not_depend_on_how_the_audio_is_cut() -> None:
    pcm = np.concatenate([noise(0.4), speech(1.2), noise(0.9), speech(0.7), noise(0.2)])
    reference = run(pcm, len(pcm))
    for piece in (1, 7, 319, 320, 321, 6400):
        assert run(pcm, piece) == reference
    assert [type(e) for e in reference] == [
        UtteranceStarted,
        UtterancePaused,
        UtteranceEnded,
        UtteranceStarted,
        UtterancePaused,
        UtteranceEnded,
    ]
    assert spans(reference)[-1][2] is EndReason.END_OF_STREAM


def test_silence_and_noise_and_blips_hold_no_utterance() -> None:
    assert run(np.zeros(RATE * 3, np.int16), 6400) == []
    assert run(noise(3.0, dbfs=-45.0), 6400) == []  # steady background noise, however loud
    blip = np.concatenate([noise(1.0), speech(0.06), noise(1.0)])  # shorter than the 100 ms to start
    assert run(blip, 6400) == []


def test_the_bar_follows_the_noise_floor() -> None:
    endpointer = Endpointer()
    assert endpointer.threshold_dbfs == -60.0  # nothing heard yet: the absolute floor
    endpointer.feed(noise(2.0, dbfs=-40.0))
    assert endpointer.threshold_dbfs == pytest.approx(-28.0, abs=1.5)
    loud = Endpointer()
    loud.feed(noise(2.0, dbfs=-20.0))
    assert loud.threshold_dbfs == -25.0  # never above the cap


def test_a_long_utterance_is_cut_at_its_quietest_and_goes_on() -> None:
    # The synthetic syllables' troughs fall under the bar: 600 ms of silence to end, not 400.
    settings = EndpointerSettings(max_utterance_seconds=4.0, silence_seconds=0.6)
    # Speech with short (300 ms) pauses only: it would never end by silence.
    pcm = np.concatenate([speech(1.0), noise(0.3), speech(1.5), noise(0.3), speech(2.6), noise(1.0)])

    events = run(pcm, 3200, settings)

    found = spans(events)
    assert [reason for *_, reason in found] == [EndReason.LENGTH, EndReason.SILENCE]
    first, second = found
    assert first[1] - first[0] <= 4.0
    assert 2.8 <= first[1] <= 3.2  # in the second pause (the quietest stretch of its last third)
    assert second[0] == first[1]  # the next utterance starts where the first was cut
    starts = [e.start for e in events if isinstance(e, UtteranceStarted)]
    assert starts == [0, round(first[1] * RATE)]


def test_the_end_of_the_stream_closes_the_utterance() -> None:
    endpointer = Endpointer()
    events = endpointer.feed(np.concatenate([noise(0.5), speech(1.0)]))
    assert [type(e) for e in events] == [UtteranceStarted]
    assert endpointer.in_utterance and endpointer.utterance_start is not None
    (ended,) = endpointer.finish()
    assert isinstance(ended, UtteranceEnded)
    assert ended.reason is EndReason.END_OF_STREAM
    assert ended.end == endpointer.samples
    assert endpointer.finish() == []
    with pytest.raises(RuntimeError):
        endpointer.feed(speech(0.1))


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="positive"):
        EndpointerSettings(sample_rate=0)
    with pytest.raises(ValueError, match="three times"):
        EndpointerSettings(max_utterance_seconds=1.0)


def test_the_five_utterances_of_the_librivox_recording() -> None:
    """The shared recording: five utterances, 0.8 s of silence after each of the first four."""
    with wave.open(str(audio_dir() / "librivox-all.wav")) as recording:
        pcm = np.frombuffer(recording.readframes(recording.getnframes()), dtype="<i2")

    found = spans(run(pcm, 6400))

    # Where each file of the recording starts (7.1, 2.99, 5.3, 6.05 and 3.29 s, with 0.8 s between).
    onsets = [0.0, 7.9, 11.69, 17.79, 24.64]
    assert len(found) == 5
    for (start, end, _), onset, next_onset in zip(found, onsets, [*onsets[1:], 28.3], strict=True):
        assert onset - 0.35 <= start <= onset + 0.1
        assert end <= next_onset - 0.3
    # The last one too: 0.43 s of room tone follow its speech, and the 0.8 s of zeros between the others
    # do not lower the bar to the floor (that tone would be speech).
    assert [reason for *_, reason in found] == [EndReason.SILENCE] * 5


def test_a_pause_is_announced_and_speech_resumes_it() -> None:
    """150 ms of silence pause the utterance (its audio so far, for a speculative final); speech before
    the 400 ms resumes it; the next pause that lasts ends it, the same speech as the pause announced."""
    pcm = np.concatenate([noise(0.5), speech(1.0), noise(0.25), speech(1.0), noise(0.6)])
    events = run(pcm, 320)
    assert [type(e) for e in events] == [
        UtteranceStarted,
        UtterancePaused,
        UtteranceResumed,
        UtterancePaused,
        UtteranceEnded,
    ]
    started, first, resumed, second, ended = events
    assert isinstance(first, UtterancePaused) and isinstance(second, UtterancePaused)
    assert isinstance(ended, UtteranceEnded) and ended.reason is EndReason.SILENCE
    assert first.start == second.start == resumed.start == ended.start == started.start
    assert first.end / RATE == pytest.approx(1.5 + 0.15, abs=0.03)
    # The pause holds all the speech the final holds, and 150 ms of silence after it (the final: 200).
    assert second.end / RATE == pytest.approx(2.75 + 0.15, abs=0.03)
    assert ended.end / RATE == pytest.approx(2.75 + 0.2, abs=0.03)
    assert run(pcm, len(pcm)) == events
    assert [type(e) for e in run(pcm, 320, EndpointerSettings(speculate_seconds=0))] == [
        UtteranceStarted,
        UtteranceEnded,
    ]
    with pytest.raises(ValueError, match="speculate_seconds"):
        EndpointerSettings(speculate_seconds=0.4)


def test_digital_silence_does_not_lower_the_bar() -> None:
    """Zeros between utterances are not the room's noise: the bar stays above the room tone."""
    endpointer = Endpointer()
    endpointer.feed(noise(2.0, dbfs=-45.0))
    bar = endpointer.threshold_dbfs
    endpointer.feed(np.zeros(RATE * 2, np.int16))
    assert endpointer.threshold_dbfs == pytest.approx(bar, abs=0.5)


@pytest.mark.parametrize("name", ["ru-courier.wav", "ru-greeting.wav"])
def test_pauses_inside_a_russian_sentence_do_not_end_it(name: str) -> None:
    with wave.open(str(ROOT / "examples" / "audio" / name)) as recording:
        assert recording.getframerate() == RATE
        pcm = np.frombuffer(recording.readframes(recording.getnframes()), dtype="<i2")
    assert len(spans(run(pcm, 1600))) == 1
