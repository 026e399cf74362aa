"""US English recognition with PocketSphinx, using the model shipped inside the ``pocketsphinx`` wheel.

How :meth:`PocketsphinxEngine.recognize` works on one channel of 16 kHz mono PCM:

1. **Speech regions.** PocketSphinx's voice-activity endpointer (``Endpointer``: 30 ms frames, a speech /
   non-speech decision over a 0.3 s window) finds the stretches of speech. Each is widened by
   ``pad_seconds`` on both sides (the endpointer decides a little late, and the acoustic model needs a
   bit of silence around words); regions that then touch are merged. A region longer than
   ``max_region_seconds`` is cut at its quietest 10 ms in the last third of each stretch, which bounds
   the decoder's memory on hours of unbroken sound.
2. **Decoding.** Each region is decoded as one PocketSphinx utterance, from a freshly initialised
   front end (``reinit_feat``: the noise-removal filter and the cepstral mean would otherwise carry over
   from earlier audio) with ``full_utt``, so cepstral mean normalisation is computed over that region
   alone. A request's result therefore depends on its own audio only, not on what the process decoded
   before.
3. **Words and utterances.** The decoder's word segmentation gives each word's first and last 10 ms
   frame. Fillers (``<s>``, ``</s>``, ``<sil>``, ``[NOISE]``, ``[SPEECH]``) are dropped, pronunciation
   variants (``word(2)``) lose their suffix, and words are lowercased. A region's words are split into
   utterances wherever the decoder saw at least ``min_pause_seconds`` without a word (so a region in
   which noise kept the endpointer "in speech" still splits at the pauses the decoder heard).

Decoder settings (:data:`TUNED_DECODER_OPTIONS`), measured with ``python bench/engine_quality.py
--repeat 2 --set ...`` on a shared 2.5 GHz Xeon: WER over the five LibriVox utterances, RTF = CPU
seconds per audio second over the whole corpus (116 s of audio), one process:

==========================================================  ======  =====
settings                                                    WER     RTF
==========================================================  ======  =====
PocketSphinx defaults (fwdflat, bestpath, maxhmmpf=30000)   27.1%   0.33
``fwdflat=False``                                           25.7%   0.28
``fwdflat=False, bestpath=False``                           20.0%   0.28
``... , maxhmmpf=3000`` (the default here)                  20.0%   0.18
``... , maxhmmpf=2000``                                     22.9%   0.15
default here, beams 1e-40/1e-30/1e-40 (instead of 1e-48)    38.6%   0.14
default here, ``lw=8`` (instead of 6.5)                     28.6%   0.15
default here, ``pad_seconds=0``                             22.9%   0.16
==========================================================  ======  =====

The bench now reads written abbreviations as words ("Mr." as "mister") and spells numbers, and its CPU
figures come from the worker alone: the default here measures 18.6% WER at RTF 0.11 that way
(``docs/benchmarks.md``), the table's 20.0% / 0.18 under the earlier scoring.

* ``fwdflat=False`` skips the second, flat-lexicon Viterbi pass: less CPU, no loss here.
* ``bestpath=False`` takes the first pass's hypothesis instead of re-scoring its word lattice; here that
  recovered "dashwood" and "had then".
* ``maxhmmpf=3000`` caps the HMMs evaluated per frame, which also bounds the worst-case cost of noisy
  audio. Below that, words start to go.

These were tuned on the same 70 words they are measured on (one word is 1.4 points), so read the WER
as "no worse than the defaults", not as a promise for other recordings. Real-time factors vary by
about +-0.03 between runs on this shared machine.

One decoder (about 0.5 s of CPU to load, +90 MiB resident) is created on the first :meth:`recognize` (or
:meth:`warm_up`) and reused; the service creates one engine per worker process. A lock serialises
calls, so sharing an engine between threads is safe, if not parallel.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import pocketsphinx
from numpy.typing import NDArray

from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted.engines.base import ENGINE_SAMPLE_RATE, Utterance, check_language

__all__ = ["TUNED_DECODER_OPTIONS", "PocketsphinxEngine", "PocketsphinxSettings", "model_paths"]

DecoderOption = bool | int | float | str

#: Decoder options that differ from PocketSphinx's defaults; see the module docstring for the numbers.
TUNED_DECODER_OPTIONS: Final[Mapping[str, DecoderOption]] = MappingProxyType(
    {"fwdflat": False, "bestpath": False, "maxhmmpf": 3000}
)

_VARIANT = re.compile(r"\(\d+\)$")
_FILLER_PREFIXES = ("<", "[", "+")
_QUIET_FRAME_SECONDS = 0.01


def model_paths() -> dict[str, str]:
    """The US English acoustic model, language model and dictionary inside the installed wheel."""
    return {
        "hmm": pocketsphinx.get_model_path("en-us/en-us"),
        "lm": pocketsphinx.get_model_path("en-us/en-us.lm.bin"),
        "dict": pocketsphinx.get_model_path("en-us/cmudict-en-us.dict"),
    }


@dataclass(frozen=True)
class PocketsphinxSettings:
    """How to decode and segment. The defaults are what the service uses."""

    #: Options for ``pocketsphinx.Decoder`` on top of the model paths (names without the leading dash).
    decoder_options: Mapping[str, DecoderOption] = field(default_factory=lambda: dict(TUNED_DECODER_OPTIONS))
    #: Silence kept around each speech region found by the endpointer.
    pad_seconds: float = 0.2
    #: A pause without words at least this long inside a region starts a new utterance.
    min_pause_seconds: float = 0.5
    #: Regions longer than this are cut at a quiet point before decoding.
    max_region_seconds: float = 30.0
    #: The endpointer's aggressiveness, 0 (keeps most sound as speech) to 3.
    vad_mode: int = 0

    def __post_init__(self) -> None:
        if self.pad_seconds < 0 or self.min_pause_seconds <= 0 or self.max_region_seconds < 3:
            raise ValueError(f"unusable segmentation settings: {self}")
        if not 0 <= self.vad_mode <= 3:
            raise ValueError(f"vad_mode must be 0..3, not {self.vad_mode}")


class PocketsphinxEngine:
    """The ``pocketsphinx`` engine: US English only, fully offline."""

    name: Final = "pocketsphinx"
    languages: Final = frozenset({"en-US"})

    def __init__(self, settings: PocketsphinxSettings | None = None) -> None:
        self.settings = settings or PocketsphinxSettings()
        self._decoder: Any = None
        self._frame_rate = 100
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Load the model now rather than on the first request (e.g. when a worker process starts)."""
        with self._lock:
            self._ensure_decoder()

    def recognize(self, pcm: NDArray[np.int16], language_code: str) -> list[Utterance]:
        """Recognise ``pcm`` (16 kHz mono int16) as US English; utterances in time order."""
        check_language(self, language_code)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"expected a 1-D int16 array, got {pcm.ndim}-D {pcm.dtype}")
        samples = np.ascontiguousarray(pcm)
        regions = list(_split_long(samples, self._speech_regions(samples), self.settings.max_region_seconds))
        if not regions:
            return []
        utterances: list[Utterance] = []
        with self._lock:
            decoder = self._ensure_decoder()
            for start, end in regions:
                words = self._decode_region(decoder, samples[start:end], start / ENGINE_SAMPLE_RATE)
                utterances.extend(_utterances(words, self.settings.min_pause_seconds))
        return utterances

    # ----------------------------------------------------------------------------------------------------

    def _ensure_decoder(self) -> Any:
        if self._decoder is None:
            pocketsphinx.set_loglevel("FATAL")
            options: dict[str, DecoderOption] = {**model_paths(), "loglevel": "FATAL"}
            options.update(self.settings.decoder_options)
            decoder = pocketsphinx.Decoder(**options)
            self._frame_rate = int(decoder.config["frate"])
            self._decoder = decoder
        return self._decoder

    def _speech_regions(self, pcm: NDArray[np.int16]) -> list[tuple[int, int]]:
        """Sample ranges of speech found by the endpointer, padded, merged where they touch."""
        endpointer = pocketsphinx.Endpointer(vad_mode=self.settings.vad_mode, sample_rate=ENGINE_SAMPLE_RATE)
        frame = int(endpointer.frame_bytes) // 2
        found: list[tuple[float, float]] = []
        whole = len(pcm) // frame * frame
        for offset in range(0, whole, frame):
            if (
                endpointer.process(pcm[offset : offset + frame].tobytes()) is not None
                and not endpointer.in_speech
            ):
                found.append((float(endpointer.speech_start), float(endpointer.speech_end)))
        if whole < len(pcm):
            if endpointer.end_stream(pcm[whole:].tobytes()) is not None:
                found.append((float(endpointer.speech_start), float(endpointer.speech_end)))
        elif endpointer.in_speech:
            found.append((float(endpointer.speech_start), len(pcm) / ENGINE_SAMPLE_RATE))

        pad = self.settings.pad_seconds
        regions: list[tuple[int, int]] = []
        for begin, finish in found:
            start = max(0, round((begin - pad) * ENGINE_SAMPLE_RATE))
            end = min(len(pcm), round((finish + pad) * ENGINE_SAMPLE_RATE))
            if end <= start:
                continue
            if regions and start <= regions[-1][1]:
                regions[-1] = (regions[-1][0], max(end, regions[-1][1]))
            else:
                regions.append((start, end))
        return regions

    def _decode_region(self, decoder: Any, pcm: NDArray[np.int16], offset: float) -> list[Word]:
        # A fresh front end: the noise-removal filter and the CMN estimate otherwise carry over from the
        # previous region (of this or an earlier request). Takes ~50 us.
        decoder.reinit_feat()
        decoder.start_utt()
        try:
            decoder.process_raw(pcm.tobytes(), full_utt=True)
        finally:
            decoder.end_utt()
        words: list[Word] = []
        for segment in decoder.seg():
            token = str(segment.word)
            if not token or token.startswith(_FILLER_PREFIXES):
                continue
            text = _VARIANT.sub("", token).lower()
            start = offset + int(segment.start_frame) / self._frame_rate
            end = offset + (int(segment.end_frame) + 1) / self._frame_rate
            words.append(Word(text=text, start=round(start, 3), end=round(max(end, start), 3)))
        return words


def _utterances(words: list[Word], min_pause: float) -> Iterator[Utterance]:
    group: list[Word] = []
    for word in words:
        if group and word.start - group[-1].end >= min_pause:
            yield Utterance(text=" ".join(w.text for w in group), words=tuple(group))
            group = []
        group.append(word)
    if group:
        yield Utterance(text=" ".join(w.text for w in group), words=tuple(group))


def _split_long(
    pcm: NDArray[np.int16], regions: list[tuple[int, int]], max_seconds: float
) -> Iterator[tuple[int, int]]:
    """Cut regions longer than ``max_seconds`` at the quietest 10 ms in the last third of each piece."""
    limit = int(max_seconds * ENGINE_SAMPLE_RATE)
    hop = int(_QUIET_FRAME_SECONDS * ENGINE_SAMPLE_RATE)
    for region_start, end in regions:
        start = region_start
        while end - start > limit:
            low = start + (2 * limit) // 3
            window = pcm[low : start + limit].astype(np.int64)
            frames = len(window) // hop
            energy = np.square(window[: frames * hop]).reshape(frames, hop).sum(axis=1)
            cut = low + int(np.argmin(energy)) * hop + hop // 2
            yield start, cut
            start = cut
        yield start, end
