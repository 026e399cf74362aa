# ruff: noqa: RUF001 - Russian speech is written in Cyrillic
"""The Whisper engine: real recognition of the shared LibriVox corpus (and the demo's Russian samples) with
the bundled ``base`` and ``tiny.en`` models. Nothing of faster-whisper is replaced.

Each model is loaded once for the module, and each file is recognised once per model and language
(:func:`recognised`), so the module takes well under a minute on two cores.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.selfhosted.decoding import decode_audio
from speechkit_operator.selfhosted.engines.base import (
    Engine,
    UnsupportedLanguageError,
    Utterance,
    available_engines,
    get_engine,
)
from speechkit_operator.selfhosted.engines.whisper_engine import (
    SHORT_MAX_SECONDS,
    SPEECHKIT_TO_WHISPER,
    WhisperEngine,
    WhisperOptions,
    loop_period,
    normalize_words,
)
from tests.support.audio import audio_dir, manifest, reference_text

RATE = 16000
UTTERANCES = (
    "librivox-0870.wav",
    "librivox-0880.wav",
    "librivox-0890.wav",
    "librivox-0920.wav",
    "librivox-0930.wav",
)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "audio"
RU_SAMPLES = ("ru-courier.wav", "ru-greeting.wav")
#: Languages SpeechKit offers that the multilingual model must offer too.
SPEECHKIT_LANGUAGES = {
    "ru-RU", "en-US", "kk-KZ", "uz-UZ", "de-DE", "fr-FR", "es-ES", "it-IT", "pl-PL", "tr-TR", "pt-PT",
    "pt-BR", "nl-NL", "fi-FI", "sv-SE", "he-IL",
}  # fmt: skip


@cache
def engine(model: str) -> WhisperEngine:
    """One engine per model for the whole module (a model loads in about a second)."""
    built = WhisperEngine(WhisperOptions(model=model))
    built.warm_up()
    return built


@cache
def channels(path: str, headerless: bool = False) -> tuple[NDArray[np.int16], ...]:
    entry = manifest()["files"].get(Path(path).name, {}) if headerless else {}
    decoded = decode_audio(
        Path(path).read_bytes(),
        encoding=AudioEncoding(entry["encoding"]) if headerless else None,
        sample_rate_hertz=entry["sampleRateHertz"] if headerless else None,
        channel_count=None,
    )
    return tuple(decoded.channels)


def corpus(name: str) -> str:
    return str(audio_dir() / name)


@cache
def recognised(model: str, path: str, language: str, channel: int = 0) -> tuple[Utterance, ...]:
    pcm = channels(path, path.endswith(".pcm"))[channel]
    return tuple(engine(model).recognize(pcm, language))


def words_of(utterances: tuple[Utterance, ...]) -> list[str]:
    return [word.text for utterance in utterances for word in utterance.words]


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def comparable(words: list[str]) -> list[str]:
    """Words as the references write them: ``ill-disposed`` is ``ill disposed``, ``mr`` is ``mister``."""
    out: list[str] = []
    for word in words:
        for part in word.replace("-", " ").split():
            out.append({"mr": "mister"}.get(part, part))
    return out


def check_shape(utterances: tuple[Utterance, ...], seconds: float) -> None:
    """The engine contract: lowercase words without punctuation whose times increase and lie in the audio;
    the text is the words; the display text has Whisper's punctuation and casing."""
    previous_end = 0.0
    for utterance in utterances:
        assert utterance.words
        assert utterance.text == " ".join(word.text for word in utterance.words)
        for word in utterance.words:
            assert re.fullmatch(r"[^\W_]+(?:['\-.,][^\W_]+)*", word.text), word
            assert word.text == word.text.lower(), word
            assert previous_end <= word.start < word.end <= seconds, word
            previous_end = word.end
        assert utterance.display_text
        assert normalize_words(utterance.display_text) == utterance.text.split()


# --- English on the shared corpus ---------------------------------------------------------------------


@pytest.mark.parametrize("model", ["base", "tiny.en"])
def test_english_word_error_rate_on_the_librivox_utterances(model: str) -> None:
    errors = total = 0
    for name in UTTERANCES:
        reference = reference_text(name)["1"].split()
        hypothesis = comparable(words_of(recognised(model, corpus(name), "en-US")))
        errors += edit_distance(reference, hypothesis)
        total += len(reference)
        check_shape(recognised(model, corpus(name), "en-US"), len(channels(corpus(name))[0]) / RATE)
    assert errors / total <= 0.10, f"{model}: {errors} errors in {total} words"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("librivox-0870.ogg", {"dashwood", "leisure", "consider", "prudently", "power"}),
        ("librivox-0870.mp3", {"dashwood", "leisure", "consider", "prudently", "power"}),
        ("librivox-0870-8k.pcm", {"dashwood", "leisure", "consider", "power"}),
        ("librivox-0870-48k.pcm", {"dashwood", "leisure", "consider", "prudently", "power"}),
    ],
)
def test_every_format_of_the_corpus_gives_the_distinctive_words(name: str, expected: set[str]) -> None:
    utterances = recognised("base", corpus(name), "en-US")
    assert expected <= set(words_of(utterances)), words_of(utterances)


def test_punctuation_and_casing_are_kept_for_display() -> None:
    (utterance, *_) = recognised("base", corpus("librivox-0880.wav"), "en-US")

    assert utterance.display_text is not None
    assert utterance.display_text[0].isupper()
    assert utterance.display_text.rstrip()[-1] in ".!?"
    assert utterance.text == utterance.text.lower()
    assert not re.search(r"[.,!?;:]", utterance.text)


def test_utterances_follow_the_pauses_of_the_long_file() -> None:
    path = corpus("librivox-all.wav")
    utterances = recognised("base", path, "en-US")
    seconds = len(channels(path)[0]) / RATE

    check_shape(utterances, seconds)
    text = " ".join(utterance.text for utterance in utterances)
    for phrase in ("john dashwood", "young man", "selfish", "respectable", "amiable himself"):
        assert phrase in text, text
    # "amiable himself" is said in the last 3.3 s of the file.
    (last,) = [u for u in utterances if "himself" in u.text.split()]
    assert last.words[-1].end > seconds - 3.4


def test_long_audio_is_recognised_in_pieces_with_the_right_times() -> None:
    """Audio longer than ``piece_seconds`` goes to faster-whisper in pieces cut in pauses (bounded memory);
    the words of each piece keep their place in the whole."""
    path = corpus("librivox-all.wav")
    (once,) = channels(path)
    gap = np.zeros(RATE, dtype=np.int16)
    twice = np.concatenate([once, gap, once])
    half = (len(once) + len(gap)) / RATE
    pieces = WhisperEngine(WhisperOptions(model="tiny.en", piece_seconds=30))

    utterances = tuple(pieces.recognize(twice, "en-US"))

    check_shape(utterances, len(twice) / RATE)
    reference = reference_text("librivox-all.wav")["1"].split()
    first = comparable([w.text for u in utterances for w in u.words if w.start < half])
    second = comparable([w.text for u in utterances for w in u.words if w.start >= half])
    assert edit_distance(reference, first) / len(reference) <= 0.1, first
    assert edit_distance(reference, second) / len(reference) <= 0.1, second


def test_auto_reports_english_for_english() -> None:
    utterances = recognised("base", corpus("librivox-0880.wav"), "auto")

    assert {u.language_code for u in utterances} == {"en-US"}
    assert all(u.language_probability is not None and u.language_probability > 0.5 for u in utterances)
    assert {"young", "man"} <= set(words_of(utterances))
    # An English-only model answers auto with English.
    tiny = recognised("tiny.en", corpus("librivox-0880.wav"), "auto")
    assert {u.language_code for u in tiny} == {"en-US"}


def test_each_stereo_channel_is_its_own_sentence() -> None:
    path = corpus("librivox-stereo-0880L-0930R.wav")
    left = set(words_of(recognised("base", path, "en-US", 0)))
    right = set(words_of(recognised("base", path, "en-US", 1)))

    assert {"young", "man"} <= left
    assert {"amiable", "himself", "even"} <= right
    assert not {"amiable", "himself", "even"} & left
    assert not {"young", "man"} & right


# --- Russian ----------------------------------------------------------------------------------------------


def russian_samples() -> dict[Path, str]:
    """The demo's Russian samples (``examples/audio/ru-*.wav``) and what is said in them, from
    ``ATTRIBUTION.md`` beside them."""
    attribution = EXAMPLES / "ATTRIBUTION.md"
    text = attribution.read_text(encoding="utf-8") if attribution.is_file() else ""
    said = {
        name: " ".join(sentence.split())
        for name, sentence in re.findall(r"- `(ru-[^`]+\.wav)`: \"([^\"]+)\"", text, flags=re.DOTALL)
    }
    return {path: said.get(path.name, "") for path in sorted(EXAMPLES.glob("ru-*.wav"))}


def test_russian_is_recognised() -> None:
    samples = russian_samples()
    if not samples:
        pytest.skip(
            "NO RUSSIAN SPEECH: examples/audio/ru-*.wav is missing (the demo's Russian samples, made with "
            "bench/heldout/synthesize.py --demo examples/audio); ../shared/audio has no Russian"
        )
    errors = total = 0
    for path, reference in samples.items():
        assert reference, f"{path.name}: ATTRIBUTION.md does not say what is said in it"
        utterances = recognised("base", str(path), "ru-RU")
        check_shape(utterances, len(channels(str(path))[0]) / RATE)
        errors += edit_distance(reference.split(), [w.replace("ё", "е") for w in words_of(utterances)])
        total += len(reference.split())
        assert all(re.fullmatch(r"[а-яё0-9'\-]+", word) for word in words_of(utterances))
    # Synthesised speech: Whisper base is at about 12-15 % on Festival's Russian voice.
    assert errors / total <= 0.25, f"{errors} errors in {total} words"


def test_auto_reports_russian_for_russian() -> None:
    samples = russian_samples()
    if not samples:
        pytest.skip("NO RUSSIAN SPEECH: examples/audio/ru-*.wav is missing")
    path = next(iter(samples))
    utterances = recognised("base", str(path), "auto")
    assert {u.language_code for u in utterances} == {"ru-RU"}


# --- Silence, languages, the contract ---------------------------------------------------------------------


def test_silence_and_noise_give_no_utterances() -> None:
    base = engine("base")
    assert base.recognize(np.zeros(RATE * 3, dtype=np.int16), "en-US") == []
    assert base.recognize(np.zeros(RATE * 3, dtype=np.int16), "auto") == []
    assert base.recognize(np.zeros(0, dtype=np.int16), "ru-RU") == []
    hiss = np.random.default_rng(7).normal(0, 300, RATE * 3).astype(np.int16)
    assert base.recognize(hiss, "auto") == []


def test_the_models_languages() -> None:
    base = engine("base")
    assert SPEECHKIT_LANGUAGES | {"auto"} <= base.languages
    assert "yue-HK" not in base.languages  # Cantonese came with large-v3; base has 99 languages
    assert len(base.languages) == 99 + 3  # + pt-BR, no-NO, auto
    assert all(re.fullmatch(r"[a-z]{2,3}-[A-Z]{2}|auto", code) for code in base.languages)
    assert all(SPEECHKIT_TO_WHISPER[code] for code in base.languages - {"auto"})
    assert engine("tiny.en").languages == frozenset({"en-US", "auto"})


@pytest.mark.parametrize(
    ("model", "language"), [("tiny.en", "ru-RU"), ("tiny.en", "de-DE"), ("base", "xx-XX")]
)
def test_a_language_the_model_lacks_is_refused(model: str, language: str) -> None:
    with pytest.raises(UnsupportedLanguageError) as caught:
        engine(model).recognize(np.zeros(RATE, dtype=np.int16), language)

    assert caught.value.language_code == language
    assert caught.value.engine == "whisper"
    if model == "tiny.en":
        assert str(caught.value) == (
            f"language {language!r} is not supported by the whisper engine (supported: auto, en-US)"
        )


def test_refuses_anything_but_mono_int16() -> None:
    with pytest.raises(ValueError, match="int16"):
        engine("tiny.en").recognize(np.zeros(RATE, dtype=np.float32), "en-US")


def test_the_engine_is_registered_and_satisfies_the_protocol() -> None:
    assert "whisper" in available_engines()
    registered = get_engine("whisper")
    assert isinstance(registered, WhisperEngine)
    assert registered.options == WhisperOptions()  # base, 1 thread, beam 5, int8; no streaming model
    assert isinstance(engine("base"), Engine)
    assert engine("base").model_name == "base"
    load_seconds = engine("base").load_seconds
    assert load_seconds is not None and 0 < load_seconds < 30


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("  Mr. Dashwood's house, well-known.", ["mr", "dashwood's", "house", "well-known"]),
        ("It cost $1,000.50 — or 3.5%!", ["it", "cost", "1,000.50", "or", "3.5"]),
        ("Добрый день! Чем я могу вам помочь?", ["добрый", "день", "чем", "я", "могу", "вам", "помочь"]),
        ("rock’n’roll and/or “quotes”", ["rock'n'roll", "and", "or", "quotes"]),
        ("— ... !", []),
    ],
)
def test_normalised_words(text: str, words: list[str]) -> None:
    assert normalize_words(text) == words


# --- The short path (streaming) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "language"),
    [*((corpus(name), "en-US") for name in UTTERANCES), *((str(EXAMPLES / n), "ru-RU") for n in RU_SAMPLES)],
)
def test_the_short_path_hears_the_words_the_normal_path_hears(path: str, language: str) -> None:
    """``recognize_short`` (no 30 s padding, greedy, no timestamps; streaming's utterances) gives the
    normal path's words on the corpus, but for one in the 77 (``ill-disposed`` heard ``ill-sposed``), and
    most word times within 100 ms of its (both are cross-attention alignments)."""
    normal = [word for utterance in recognised("base", path, language) for word in utterance.words]
    pcm = channels(path)[0]
    (short,) = engine("base").recognize_short(pcm, language)
    assert short.language_code == language
    assert short.text == " ".join(word.text for word in short.words)
    different = [(a.text, b.text) for a, b in zip(normal, short.words, strict=True) if a.text != b.text]
    assert different in ([], [("ill-disposed", "ill-sposed")])
    close = [
        abs(a.start - b.start) <= 0.1 and abs(a.end - b.end) <= 0.1
        for a, b in zip(normal, short.words, strict=True)
    ]
    assert sum(close) >= 0.8 * len(close)
    starts = [word.start for word in short.words]
    assert starts == sorted(starts) and short.words[-1].end <= len(pcm) / RATE


def test_the_short_path_hears_nothing_in_silence_and_hands_long_audio_to_the_normal_path() -> None:
    whisper = engine("base")
    assert whisper.recognize_short(np.zeros(RATE, np.int16), "en-US") == []
    hiss = (np.random.default_rng(3).standard_normal(2 * RATE) * 300).astype(np.int16)
    assert whisper.recognize_short(hiss, "en-US") == []
    long = np.concatenate([channels(corpus(name))[0] for name in UTTERANCES])  # 24.7 s
    assert len(long) / RATE <= SHORT_MAX_SECONDS
    assert len(whisper.recognize_short(long, "en-US")) == 1
    longer = np.concatenate([long, long[: 2 * RATE]])
    assert len(whisper.recognize_short(longer, "en-US")) > 1  # Whisper's segments: the normal path


@pytest.mark.parametrize(
    ("tokens", "period"),
    [
        ([1, 2, 3, 4, 5, 1, 2, 3, 4, 5], 5),  # said twice
        ([1, 2, 3, 4, 5, 1, 2, 3, 4], 5),  # the second time cut short
        ([1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1], 4),  # over and over
        ([1, 2, 3, 4, 5, 1, 2], None),  # less than one and a half times: a phrase may begin so
        ([1, 2, 3, 1, 2, 3], None),  # three tokens ("no no no") are not a loop
        ([1, 2, 3, 4, 5, 6, 7, 8], None),
        ([], None),
    ],
)
def test_a_greedy_decoding_loop_is_cut_to_its_phrase(tokens: list[int], period: int | None) -> None:
    assert loop_period(tokens) == period


@cache
def with_streaming_model() -> WhisperEngine:
    built = WhisperEngine(WhisperOptions(model="base", streaming_model="tiny.en"))
    built.warm_up()
    return built


def test_the_streaming_model_takes_the_languages_it_knows_and_the_main_model_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``tiny.en`` beside ``base``: English streaming utterances go to tiny.en (half of base's time on a
    7 s utterance), Russian and ``auto`` to base (tiny.en would hear Russian as English)."""
    whisper = with_streaming_model()
    used: list[bool] = []
    real = WhisperEngine._recognize_short

    def spy(self: WhisperEngine, model: Any, pcm: NDArray[np.int16], code: str) -> list[Utterance]:
        used.append(bool(model.model.is_multilingual))
        return real(self, model, pcm, code)

    monkeypatch.setattr(WhisperEngine, "_recognize_short", spy)
    english = channels(corpus("librivox-0930.wav"))[0]
    russian = channels(str(EXAMPLES / "ru-greeting.wav"))[0]
    (heard,) = whisper.recognize_short(english, "en-US")
    assert used == [False]
    assert heard.language_code == "en-US"
    assert comparable(normalize_words(heard.text)) == reference_text("librivox-0930.wav")["1"].split()
    (heard_ru,) = whisper.recognize_short(russian, "ru-RU")
    (heard_auto,) = whisper.recognize_short(russian, "auto")
    assert used == [False, True, True]
    assert heard_ru.language_code == heard_auto.language_code == "ru-RU"
    assert re.search(r"[а-я]", heard_ru.text) and re.search(r"[а-я]", heard_auto.text)
    # The async API's path never takes the streaming model.
    assert whisper.recognize(english, "en-US")[0].language_code == "en-US"
    assert used == [False, True, True]


def test_the_streaming_model_hears_the_corpus_nearly_as_well() -> None:
    """tiny.en on the short path: WER at most 10% over the five LibriVox utterances, the bound of the
    normal path's test (5.7% measured, 4 of 70 words, every one of them in ``ill disposed``, heard
    ``old sposed`` and ``old asposed``; base: 1 of 70)."""
    whisper = with_streaming_model()
    reference: list[str] = []
    hypothesis: list[str] = []
    for name in UTTERANCES:
        reference += reference_text(name)["1"].split()
        for utterance in whisper.recognize_short(channels(corpus(name))[0], "en-US"):
            hypothesis += comparable([word.text for word in utterance.words])
    assert edit_distance(reference, hypothesis) / len(reference) <= 0.10, hypothesis
