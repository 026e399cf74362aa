"""Recognition with OpenAI's Whisper through faster-whisper (CTranslate2), offline, on the CPU.

The model comes from :mod:`.whisper_models` (``base``, multilingual, by default; ``tiny.en``; a mounted
CTranslate2 directory; or a name faster-whisper downloads). It is loaded once per worker process, by
:meth:`WhisperEngine.warm_up`, with ``compute_type="int8"`` and ``cpu_threads`` threads (1 by default:
the service runs one worker process per core).

How :meth:`WhisperEngine.recognize` works on one channel of 16 kHz mono PCM:

1. **Pieces.** The audio goes to faster-whisper in pieces of at most ``piece_seconds`` (120 s), each cut
   in the quietest 300 ms of its last third. faster-whisper's VAD and feature extraction hold a whole
   input in memory, about 1.2 MiB per second: 5 minutes at once took a worker from 200 to 670 MiB; in
   pieces it stays under 480 MiB, at about 7 % more CPU on long audio (RTF 0.075 instead of 0.070).
2. **Speech.** In each piece Silero VAD (bundled with faster-whisper) finds the speech, exactly as
   ``transcribe(vad_filter=True)`` does but run once: a piece without speech stops there, so silence and
   hiss never reach the decoder (where Whisper would invent a "Thank you."); otherwise only the speech
   is decoded and its times are mapped back. On the LibriVox clips the VAD changes no word and costs
   about 0.01 RTF, and it keeps long silences and music, where Whisper hallucinates and loses its
   timing, out of the decoder: it is always on.
3. **Decoding.** ``beam_size`` 5 (Whisper's setting for its published accuracy), ``word_timestamps``
   (cross-attention alignment), ``condition_on_previous_text`` off: on 5 minutes of LibriVox speech
   (``librivox-all`` 11 times) it gave 0 to 52 errors in 770 words depending on where the audio was cut
   (the prompt of the previous window makes Whisper skip or repeat sentences), off 2 to 4 wherever it
   was cut, and 10 % less CPU; on the short clips both are error-free. The language is the request's
   (``ru-RU`` -> ``ru``), or for ``auto`` detected from the first 30 s of speech of the first piece that
   has any; the later pieces keep it.
4. **Utterances.** One per Whisper segment. Its words are lowercased and stripped of punctuation (the
   engine contract, and SpeechKit v2's default text); a token that is only punctuation is dropped, one
   that holds several words ("rock'n'roll" stays one, "and/or" becomes two) shares its time span, and
   the halves of a hyphenated word that Whisper times separately are joined ("ill-disposed"). Word
   times are clamped into the audio and made to increase. ``display_text`` keeps Whisper's punctuation
   and casing for ``literature_text``. Each utterance reports the language (detected, for ``auto``).

Measured on the shared 2-core machine (busy with other work), one thread, int8, in
``/proc/self/status`` and CPU seconds per audio second: base loads in 0.4 s (1.2 s when its files are
first read), 202 MiB resident once loaded, 480 MiB at most while recognising; 0 errors in the 70 words
of the five LibriVox utterances at RTF 0.16 (0.07 on minutes of speech); 2 in 29 words on the demo's
synthesised Russian. tiny.en: 0.3 s, 167 / 314 MiB, 2 errors in 70 words, RTF 0.07.

Languages: the model's own (``languages`` lists one SpeechKit-style code per language the model's
tokenizer has, e.g. ``ru-RU``, ``kk-KZ``, ``pt-PT`` and ``pt-BR``, plus ``auto``); an English-only model
has ``en-US`` and ``auto`` (which is English).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted.decoding import quiet_cut
from speechkit_operator.selfhosted.engines.base import ENGINE_SAMPLE_RATE, Utterance, check_language
from speechkit_operator.selfhosted.engines.whisper_models import ResolvedModel, resolve_model

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

    from speechkit_operator.selfhosted.config import ServiceSettings

__all__ = [
    "AUTO",
    "SHORT_MAX_SECONDS",
    "SPEECHKIT_TO_WHISPER",
    "WHISPER_TO_SPEECHKIT",
    "WhisperEngine",
    "WhisperOptions",
    "load_whisper_engine",
    "normalize_words",
    "options_from_settings",
]

logger = logging.getLogger(__name__)

#: The language code that asks the engine to detect the language.
AUTO: Final = "auto"

#: Whisper's language codes -> the SpeechKit-style code (``language-REGION``) the service lists. The
#: region is the language's main one (SpeechKit's own where it has the language: ru-RU, en-US, kk-KZ,
#: uz-UZ, de-DE, fr-FR, es-ES, it-IT, pl-PL, tr-TR, pt-PT, nl-NL, fi-FI, sv-SE, he-IL). Whisper's ``jw``
#: and ``no`` are BCP 47's ``jv`` (Javanese) and ``nb`` (Norwegian Bokmål).
WHISPER_TO_SPEECHKIT: Final[Mapping[str, str]] = MappingProxyType(
    {
        "af": "af-ZA", "am": "am-ET", "ar": "ar-SA", "as": "as-IN", "az": "az-AZ", "ba": "ba-RU",
        "be": "be-BY", "bg": "bg-BG", "bn": "bn-BD", "bo": "bo-CN", "br": "br-FR", "bs": "bs-BA",
        "ca": "ca-ES", "cs": "cs-CZ", "cy": "cy-GB", "da": "da-DK", "de": "de-DE", "el": "el-GR",
        "en": "en-US", "es": "es-ES", "et": "et-EE", "eu": "eu-ES", "fa": "fa-IR", "fi": "fi-FI",
        "fo": "fo-FO", "fr": "fr-FR", "gl": "gl-ES", "gu": "gu-IN", "ha": "ha-NG", "haw": "haw-US",
        "he": "he-IL", "hi": "hi-IN", "hr": "hr-HR", "ht": "ht-HT", "hu": "hu-HU", "hy": "hy-AM",
        "id": "id-ID", "is": "is-IS", "it": "it-IT", "ja": "ja-JP", "jw": "jv-ID", "ka": "ka-GE",
        "kk": "kk-KZ", "km": "km-KH", "kn": "kn-IN", "ko": "ko-KR", "la": "la-VA", "lb": "lb-LU",
        "ln": "ln-CD", "lo": "lo-LA", "lt": "lt-LT", "lv": "lv-LV", "mg": "mg-MG", "mi": "mi-NZ",
        "mk": "mk-MK", "ml": "ml-IN", "mn": "mn-MN", "mr": "mr-IN", "ms": "ms-MY", "mt": "mt-MT",
        "my": "my-MM", "ne": "ne-NP", "nl": "nl-NL", "nn": "nn-NO", "no": "nb-NO", "oc": "oc-FR",
        "pa": "pa-IN", "pl": "pl-PL", "ps": "ps-AF", "pt": "pt-PT", "ro": "ro-RO", "ru": "ru-RU",
        "sa": "sa-IN", "sd": "sd-PK", "si": "si-LK", "sk": "sk-SK", "sl": "sl-SI", "sn": "sn-ZW",
        "so": "so-SO", "sq": "sq-AL", "sr": "sr-RS", "su": "su-ID", "sv": "sv-SE", "sw": "sw-KE",
        "ta": "ta-IN", "te": "te-IN", "tg": "tg-TJ", "th": "th-TH", "tk": "tk-TM", "tl": "tl-PH",
        "tr": "tr-TR", "tt": "tt-RU", "uk": "uk-UA", "ur": "ur-PK", "uz": "uz-UZ", "vi": "vi-VN",
        "yi": "yi-IL", "yo": "yo-NG", "yue": "yue-HK", "zh": "zh-CN",
    }
)  # fmt: skip
#: Further codes accepted for a Whisper language (Whisper does not tell the variants apart).
_ALIASES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({"pt": ("pt-BR",), "no": ("no-NO",)})
#: SpeechKit-style code -> Whisper's.
SPEECHKIT_TO_WHISPER: Final[Mapping[str, str]] = MappingProxyType(
    {
        **{code: whisper for whisper, code in WHISPER_TO_SPEECHKIT.items()},
        **{alias: whisper for whisper, aliases in _ALIASES.items() for alias in aliases},
    }
)

#: A word: letters and digits, with inner apostrophes or hyphens (``don't``, ``well-known``), or a
#: number with inner separators (``1,000``, ``3.5``).
_WORD = re.compile(r"\d+(?:[.,]\d+)+|\w+(?:['\-]\w+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u02bc": "'", "\u2018": "'", "`": "'"})
#: The longest audio :meth:`WhisperEngine.recognize_short` takes itself (Whisper's window is 30 s).
SHORT_MAX_SECONDS: Final = 25.0
#: Silence after the audio in the short path, rounded up to whole seconds (Whisper learnt on windows
#: that end in silence; on the corpus 2 s changed fewer words than 0, 0.5 or 1 s, for ~15 % more time).
_SHORT_PAD_SECONDS: Final = 2.0
#: Whisper's decoder's rule for "no speech": a no-speech probability above 0.6 with an average
#: log-probability below -1.
_NO_SPEECH: Final = 0.6
_LOW_LOGPROB: Final = -1.0
#: Audio shorter than this is not worth a decoder run.
_MIN_SECONDS: Final = 0.1
_MIN_WORD_SECONDS: Final = 0.01
#: Pieces are cut in the quietest 300 ms (30 hops of 10 ms) of their last third.
_CUT_HOP: Final = ENGINE_SAMPLE_RATE // 100


@dataclass(frozen=True)
class WhisperOptions:
    """How to load and run the model. The defaults are what the service uses."""

    #: ``base``, ``tiny.en``, a model directory, or a name faster-whisper downloads (see whisper_models).
    model: str = "base"
    #: The directory already resolved and verified (by the service's parent process): no check here.
    model_dir: Path | None = None
    #: Where bundled models are assembled; None: :func:`.whisper_models.default_cache_dir`.
    cache_dir: Path | None = None
    #: CTranslate2's threads in this process (one worker process per core: 1).
    cpu_threads: int = 1
    beam_size: int = 5
    compute_type: str = "int8"
    #: Skip non-speech (see the module docstring).
    vad_filter: bool = True
    #: Off: see the module docstring for the numbers.
    condition_on_previous_text: bool = False
    #: Longest audio given to faster-whisper at once: its VAD and feature extraction hold the whole of it
    #: (about 1.2 MiB per second), so this bounds a worker's memory whatever the audio's duration.
    piece_seconds: float = 120.0
    #: A second, faster model for :meth:`WhisperEngine.recognize_short` (streaming), used for the
    #: languages it knows (``tiny.en``: ``en-US``; never for ``auto``); None: ``model`` for everything.
    streaming_model: str | None = None
    #: Its directory, already resolved and verified, like ``model_dir``.
    streaming_model_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.cpu_threads < 1 or self.beam_size < 1 or self.piece_seconds < 30:
            raise ValueError(f"cpu_threads and beam_size must be at least 1, piece_seconds 30: {self}")


def options_from_settings(
    settings: ServiceSettings, model_dir: Path | None = None, streaming_model_dir: Path | None = None
) -> WhisperOptions:
    """The options ``SPEECHKIT_SERVE_WHISPER_*`` set (``ServiceSettings()`` reads them)."""
    return WhisperOptions(
        model=settings.whisper_model,
        model_dir=model_dir,
        cache_dir=settings.whisper_cache_dir,
        cpu_threads=settings.whisper_threads,
        beam_size=settings.whisper_beam_size,
        streaming_model=settings.streaming_model_in_use,
        streaming_model_dir=streaming_model_dir,
    )


def load_whisper_engine(options: WhisperOptions) -> WhisperEngine:
    """A picklable engine factory for the service's workers: ``functools.partial(load_whisper_engine,
    options)``."""
    return WhisperEngine(options)


class WhisperEngine:
    """The ``whisper`` engine. One model per instance, loaded by :meth:`warm_up` (or the first use)."""

    name: Final = "whisper"

    def __init__(self, options: WhisperOptions | None = None) -> None:
        self.options = options or WhisperOptions()
        self._model: WhisperModel | None = None
        self._languages: frozenset[str] | None = None
        self._streaming_model: WhisperModel | None = None
        self._streaming_languages: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        #: Seconds the last :meth:`warm_up` took to load the model (None before).
        self.load_seconds: float | None = None
        self.resolved: ResolvedModel | None = None

    @property
    def model_name(self) -> str:
        return self.options.model

    @property
    def languages(self) -> frozenset[str]:
        """The SpeechKit codes of the model's languages, and ``auto`` (loads the model)."""
        if self._languages is None:
            self.warm_up()
        assert self._languages is not None
        return self._languages

    def warm_up(self) -> None:
        """Load the model now (a worker process does at start), and the streaming model when there is
        one; logs how long it took."""
        with self._lock:
            self._ensure_model()
            self._ensure_streaming_model()

    def _ensure_model(self) -> WhisperModel:
        if self._model is not None:
            return self._model
        from faster_whisper.vad import get_vad_model  # noqa: PLC0415 - heavy; only in processes that recognise

        started = time.monotonic()
        directory = self.options.model_dir
        if directory is None:
            self.resolved = resolve_model(self.options.model, self.options.cache_dir)
            directory = self.resolved.path
        model = self._load(directory)
        if self.options.vad_filter:
            get_vad_model()  # the Silero VAD's ONNX session, created once per process
        self._languages = _model_languages(model)
        self._model = model
        self.load_seconds = time.monotonic() - started
        self._log_loaded(self.options.model, directory, self.load_seconds, self._languages)
        return model

    def _ensure_streaming_model(self) -> WhisperModel | None:
        """The streaming model (None when there is none, or it is the main one)."""
        name = self.options.streaming_model
        if self._streaming_model is not None or not name or name == self.options.model:
            return self._streaming_model
        started = time.monotonic()
        directory = self.options.streaming_model_dir
        if directory is None:
            directory = resolve_model(name, self.options.cache_dir).path
        model = self._load(directory)
        self._streaming_languages = _model_languages(model) - {AUTO}
        self._streaming_model = model
        seconds = time.monotonic() - started
        self._log_loaded(f"{name} (streaming)", directory, seconds, self._streaming_languages)
        return model

    def _load(self, directory: Path) -> WhisperModel:
        from faster_whisper import WhisperModel  # noqa: PLC0415 - heavy; only in processes that recognise

        return WhisperModel(
            str(directory),
            device="cpu",
            compute_type=self.options.compute_type,
            cpu_threads=self.options.cpu_threads,
            num_workers=1,
            local_files_only=True,
        )

    def _log_loaded(self, name: str, directory: Path, seconds: float, languages: frozenset[str]) -> None:
        logger.info(
            "Whisper model %s loaded from %s in %.2f s (%s, %d thread(s), %d languages)",
            name,
            directory,
            seconds,
            self.options.compute_type,
            self.options.cpu_threads,
            len(languages - {AUTO}),
        )

    def recognize(self, pcm: NDArray[np.int16], language_code: str) -> list[Utterance]:
        """Recognise ``pcm`` (16 kHz mono int16); utterances in time order, one per Whisper segment."""
        code = check_language(self, language_code)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"expected a 1-D int16 array, got {pcm.ndim}-D {pcm.dtype}")
        seconds = len(pcm) / ENGINE_SAMPLE_RATE
        if seconds < _MIN_SECONDS or not np.any(pcm):
            return []
        # None: detect it (in the first piece with speech; the later pieces keep it).
        language = None if code == AUTO else SPEECHKIT_TO_WHISPER[code]
        probability: float | None = None
        utterances: list[Utterance] = []
        with self._lock:
            model = self._ensure_model()
            if not model.model.is_multilingual:
                language, probability = "en", 1.0
            for start, end in _pieces(pcm, int(self.options.piece_seconds * ENGINE_SAMPLE_RATE)):
                found, detected = self._transcribe(model, pcm[start:end], language)
                if language is None and detected is not None:
                    language, probability = detected
                offset = start / ENGINE_SAMPLE_RATE
                previous_end = utterances[-1].end if utterances else 0.0
                for segment in found:
                    words = _segment_words(segment.words or (), offset, seconds, previous_end)
                    if not words:
                        continue
                    previous_end = words[-1].end
                    utterances.append(
                        Utterance(
                            text=" ".join(word.text for word in words),
                            words=tuple(words),
                            display_text=" ".join(str(segment.text).split()) or None,
                            language_code=WHISPER_TO_SPEECHKIT.get(str(language), str(language)),
                            language_probability=probability,
                        )
                    )
        if code == AUTO and utterances:
            logger.info(
                "Detected language %s (probability %.2f)",
                utterances[0].language_code,
                utterances[0].language_probability or 0.0,
            )
        return utterances

    def _transcribe(
        self, model: WhisperModel, pcm: NDArray[np.int16], language: str | None
    ) -> tuple[list[Any], tuple[str, float] | None]:
        """One piece: its Whisper segments (times within the piece) and, when ``language`` is None, the
        language detected and its probability (None when the piece has no speech)."""
        from faster_whisper.transcribe import restore_speech_timestamps  # noqa: PLC0415
        from faster_whisper.vad import VadOptions, collect_chunks, get_speech_timestamps  # noqa: PLC0415

        audio = pcm.astype(np.float32) / 32768.0
        speech: list[dict[str, int]] | None = None
        if self.options.vad_filter:
            # What transcribe(vad_filter=True) does, with the VAD run once: silence stops here.
            speech = get_speech_timestamps(audio, VadOptions())
            if not speech:
                return [], None
            chunks, _ = collect_chunks(audio, speech)
            audio = np.concatenate(chunks)
        segments, info = model.transcribe(
            audio,
            language=language,
            task="transcribe",
            beam_size=self.options.beam_size,
            best_of=self.options.beam_size,
            condition_on_previous_text=self.options.condition_on_previous_text,
            word_timestamps=True,
            vad_filter=False,
        )
        if speech is not None:
            segments = restore_speech_timestamps(segments, speech, ENGINE_SAMPLE_RATE)
        # A generator: the decoding happens while it is read.
        found = list(segments)
        detected = (
            (str(info.language), round(float(info.language_probability), 3)) if language is None else None
        )
        return found, detected

    def recognize_short(self, pcm: NDArray[np.int16], language_code: str) -> list[Utterance]:
        """The fast path for streaming: one short utterance (at most :data:`SHORT_MAX_SECONDS`; longer
        audio takes :meth:`recognize`) as one :class:`Utterance`, or ``[]`` when it holds no speech.

        faster-whisper's ``transcribe`` pads every input to Whisper's 30 s window, so the encoder costs
        the same for 2 s as for 30 s (about 1.1 s for base on one core). Here the audio is only padded
        with :data:`_SHORT_PAD_SECONDS` of silence, rounded up to a whole second, and CTranslate2's
        ``generate`` decodes them greedily without timestamps (SpeechKit's streaming results are
        utterances already cut by the end-pointer), suppressing blank and non-speech tokens as
        faster-whisper does. Word times come from the cross-attention alignment, as with
        ``word_timestamps``. No VAD pass: the end-pointer found speech; Whisper's own no-speech
        probability (with its average log-probability, as Whisper's decoder decides) drops noise.

        With a streaming model (``options.streaming_model``, ``tiny.en`` in the service) the languages
        it knows are recognised with it, the others with the main model.
        """
        code = check_language(self, language_code)
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise ValueError(f"expected a 1-D int16 array, got {pcm.ndim}-D {pcm.dtype}")
        seconds = len(pcm) / ENGINE_SAMPLE_RATE
        if seconds > SHORT_MAX_SECONDS:
            return self.recognize(pcm, language_code)
        if seconds < _MIN_SECONDS or not np.any(pcm):
            return []
        with self._lock:
            model = self._ensure_model()
            fast = self._ensure_streaming_model()
            if fast is not None and code in self._streaming_languages:
                model = fast
            return self._recognize_short(model, pcm, code)

    def _recognize_short(self, model: WhisperModel, pcm: NDArray[np.int16], code: str) -> list[Utterance]:
        import ctranslate2  # noqa: PLC0415 - heavy; only in processes that recognise
        from faster_whisper.tokenizer import Tokenizer  # noqa: PLC0415
        from faster_whisper.transcribe import get_suppressed_tokens  # noqa: PLC0415

        seconds = len(pcm) / ENGINE_SAMPLE_RATE
        padded = math.ceil(seconds + _SHORT_PAD_SECONDS) * ENGINE_SAMPLE_RATE
        audio = np.zeros(padded, dtype=np.float32)
        audio[: len(pcm)] = pcm.astype(np.float32) / 32768.0
        features = model.feature_extractor(audio, padding=0)
        frames = features.shape[-1] - features.shape[-1] % 2
        encoded = model.model.encode(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None, :, :frames]))
        )
        probability: float | None = None
        if not model.model.is_multilingual:
            language, probability = "en", 1.0
        elif code == AUTO:
            token, probability = model.model.detect_language(encoded)[0][0]
            language = token[2:-2]
        else:
            language = SPEECHKIT_TO_WHISPER[code]
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, "transcribe", language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            # Whisper speaks at most a few tokens per 20 ms frame: a runaway loop stops early.
            max_length=min(model.max_length, len(prompt) + 16 + round(seconds * 8)),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=list(get_suppressed_tokens(tokenizer, (-1,)) or ()),
        )[0]
        tokens = [token for token in result.sequences_ids[0] if token < tokenizer.eot]
        average = float(result.scores[0]) * len(tokens) / (len(tokens) + 1) if tokens else -math.inf
        if not tokens or (result.no_speech_prob > _NO_SPEECH and average < _LOW_LOGPROB):
            return []
        tokens = tokens[: loop_period(tokens) or len(tokens)]
        display = " ".join(tokenizer.decode(tokens).split())
        # The alignment looks at the speech's frames (100 a second), not the padding.
        raw_words = self._align(model, tokenizer, tokens, encoded, min(frames, math.ceil(seconds * 100)))
        words = _segment_words(raw_words, 0.0, seconds, 0.0)
        if not words:
            return []
        return [
            Utterance(
                text=" ".join(word.text for word in words),
                words=tuple(words),
                display_text=display or None,
                language_code=WHISPER_TO_SPEECHKIT.get(language, language),
                language_probability=None if probability is None else round(float(probability), 3),
            )
        ]

    @staticmethod
    def _align(
        model: WhisperModel, tokenizer: Any, tokens: list[int], encoded: Any, frames: int
    ) -> list[_RawWord]:
        """Whisper's words of ``tokens`` with times from the cross-attention alignment (what
        ``word_timestamps`` does), in seconds from the start of the audio."""
        words, word_tokens = tokenizer.split_to_word_tokens([*tokens, tokenizer.eot])
        if len(word_tokens) <= 1:
            return []
        alignment = model.model.align(encoded, tokenizer.sot_sequence, [tokens], frames)[0]
        text_indices = np.array([pair[0] for pair in alignment.alignments])
        time_indices = np.array([pair[1] for pair in alignment.alignments])
        boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
        jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
        # Times in encoder positions, 20 ms each.
        jump_times = time_indices[jumps] * 0.02
        if len(jump_times) < len(boundaries):
            return []
        starts = jump_times[boundaries[:-1]]
        ends = jump_times[boundaries[1:]]
        return [
            _RawWord(str(word), float(start), float(end))
            for word, start, end in zip(words[:-1], starts, ends, strict=False)
        ]


def loop_period(tokens: Sequence[int], *, shortest: int = 4) -> int | None:
    """The length of the phrase that ``tokens`` repeat from their start, when all of them are that
    phrase said over and over (the last time possibly cut short) and it comes at least one and a
    half times; else None. Greedy decoding without Whisper's temperature fallback sometimes loops
    like that on an utterance's trailing silence ("he was not … young man he was not … young")."""
    count = len(tokens)
    for period in range(shortest, count * 2 // 3 + 1):
        if all(tokens[index] == tokens[index - period] for index in range(period, count)):
            return period
    return None


@dataclass(frozen=True)
class _RawWord:
    """A word as Whisper spelled it (with its leading space), and its times."""

    word: str
    start: float
    end: float


def _pieces(pcm: NDArray[np.int16], limit: int) -> list[tuple[int, int]]:
    """``pcm`` in pieces of at most ``limit`` samples, each cut in a pause of its last third."""
    pieces: list[tuple[int, int]] = []
    start = 0
    while len(pcm) - start > limit:
        cut = start + quiet_cut(pcm[start : start + limit], _CUT_HOP)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, len(pcm)))
    return pieces


def _model_languages(model: WhisperModel) -> frozenset[str]:
    if not model.model.is_multilingual:
        return frozenset({"en-US", AUTO})
    tokenizer = model.hf_tokenizer
    codes = {AUTO}
    for whisper_code, speechkit_code in WHISPER_TO_SPEECHKIT.items():
        # The model's tokenizer decides: base (2022) has 99 languages, large-v3 adds Cantonese.
        if tokenizer.token_to_id(f"<|{whisper_code}|>") is not None:
            codes.add(speechkit_code)
            codes.update(_ALIASES.get(whisper_code, ()))
    return frozenset(codes)


def normalize_words(text: str) -> list[str]:
    """``text`` as SpeechKit v2's normalised words: lowercase, no punctuation (``"Mr. Dashwood's,"`` ->
    ``["mr", "dashwood's"]``)."""
    cleaned = text.translate(_APOSTROPHES).lower().replace("_", " ")
    return [match.group(0) for match in _WORD.finditer(cleaned)]


def _segment_words(
    raw_words: Iterable[Any], offset: float, seconds: float, previous_end: float
) -> list[Word]:
    """Whisper's words (times from ``offset``) as normalised words with times inside ``[0, seconds]``, each
    starting where the one before ended or later.

    Whisper gives the part of a hyphenated word after the hyphen as a word of its own (``" ill"``,
    ``"-disposed"``; ``" кто"``, ``"-то"``): it is joined to the word before, as the display text has it.
    """
    words: list[Word] = []
    last_end = previous_end
    for raw in raw_words:
        spelled = str(raw.word)
        tokens = normalize_words(spelled)
        if not tokens:
            continue
        start = min(max(offset + float(raw.start), last_end, 0.0), seconds)
        end = min(max(offset + float(raw.end), start), seconds)
        if words and spelled[:1] == "-":
            joined = words.pop()
            tokens[0] = f"{joined.text}-{tokens[0]}"
            start = joined.start
        share = (end - start) / len(tokens)
        for index, token in enumerate(tokens):
            token_start = start + index * share
            token_end = start + (index + 1) * share
            if token_end - token_start < _MIN_WORD_SECONDS:
                token_end = min(token_start + _MIN_WORD_SECONDS, seconds)
                token_start = min(token_start, token_end - _MIN_WORD_SECONDS)
            words.append(Word(text=token, start=round(token_start, 3), end=round(token_end, 3)))
            last_end = max(last_end, token_end)
    return words
