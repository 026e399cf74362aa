"""The PocketSphinx engine and the engine registry: real recognition of the shared corpus.

Assertions name distinctive words of each reference rather than exact strings (PocketSphinx gets about
four words in five right here), plus a loose word error rate bound that catches a broken pipeline
(wrong rate, wrong channel, wrong model) without pinning the engine's mistakes.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.recognition import Word
from speechkit_operator.selfhosted.decoding import decode_audio
from speechkit_operator.selfhosted.engines import base
from speechkit_operator.selfhosted.engines.base import (
    Engine,
    UnknownEngineError,
    UnsupportedLanguageError,
    Utterance,
    available_engines,
    check_language,
    get_engine,
    register_engine,
)
from speechkit_operator.selfhosted.engines.pocketsphinx_engine import (
    PocketsphinxEngine,
    PocketsphinxSettings,
    _split_long,
    _utterances,
)
from tests.support.audio import audio_dir, manifest, reference_text

RATE = 16000


@pytest.fixture(scope="module")
def engine() -> Engine:
    return get_engine("pocketsphinx")


def _channels(name: str) -> list[NDArray[np.int16]]:
    entry = manifest()["files"][name]
    headerless = entry["format"] == "raw"
    decoded = decode_audio(
        (audio_dir() / name).read_bytes(),
        encoding=AudioEncoding(entry["encoding"]) if headerless else None,
        sample_rate_hertz=entry["sampleRateHertz"] if headerless else None,
        channel_count=None,
    )
    return decoded.channels


def _words(utterances: list[Utterance]) -> list[str]:
    return [word for utterance in utterances for word in utterance.text.split()]


def _word_error_rate(reference: str, hypothesis: list[str]) -> float:
    ref = reference.split()
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1] / len(ref)


def _check_shape(utterances: list[Utterance], seconds: float) -> None:
    """Lowercase words without fillers or variants, times increasing and inside the audio."""
    previous_end = 0.0
    for utterance in utterances:
        assert utterance.words
        assert utterance.text == " ".join(word.text for word in utterance.words)
        for word in utterance.words:
            assert re.fullmatch(r"[a-z][a-z'.-]*", word.text), word
            assert previous_end - 0.05 <= word.start < word.end <= seconds + 0.01, word
            previous_end = word.end
        assert utterance.start == utterance.words[0].start
        assert utterance.end == utterance.words[-1].end


# --------------------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------------------

#: Words of librivox-0870 recognised in every copy of it (the low-bitrate MP3 loses "dashwood").
WORDS_0870 = {"john", "leisure", "consider", "much", "might", "power"}


@pytest.mark.parametrize(
    ("name", "expected", "max_wer"),
    [
        ("librivox-0880.wav", {"he", "was", "not", "young", "man"}, 0.5),
        ("librivox-0870.ogg", WORDS_0870 | {"dashwood"}, 0.35),
        ("librivox-0870.mp3", WORDS_0870, 0.5),
        ("librivox-0870-8k.pcm", WORDS_0870 | {"dashwood"}, 0.4),
        ("librivox-0870-48k.pcm", WORDS_0870 | {"dashwood"}, 0.35),
    ],
)
def test_recognises_the_key_words(engine: Engine, name: str, expected: set[str], max_wer: float) -> None:
    (pcm,) = _channels(name)

    utterances = engine.recognize(pcm, "en-US")

    words = _words(utterances)
    assert expected <= set(words), words
    assert _word_error_rate(reference_text(name)["1"], words) <= max_wer, words
    _check_shape(utterances, len(pcm) / RATE)


def test_each_stereo_channel_is_its_own_sentence(engine: Engine) -> None:
    left, right = _channels("librivox-stereo-0880L-0930R.wav")

    left_words = set(_words(engine.recognize(left, "en-US")))
    right_words = set(_words(engine.recognize(right, "en-US")))

    assert {"young", "man"} <= left_words
    assert {"amiable", "himself", "even"} <= right_words
    assert not {"amiable", "himself", "even"} & left_words
    assert not {"young", "man"} & right_words


def test_splits_into_utterances_at_the_silences(engine: Engine) -> None:
    (pcm,) = _channels("librivox-all.wav")
    # librivox-all is the five utterances with 0.8 s of silence after each of the first four.
    lengths = [
        manifest()["files"][f"librivox-{n}.wav"]["seconds"] for n in ("0870", "0880", "0890", "0920", "0930")
    ]
    spans, start = [], 0.0
    for length in lengths:
        spans.append((start, start + length))
        start += length + 0.8

    utterances = engine.recognize(pcm, "en-US")

    assert len(utterances) == 5, [u.text for u in utterances]
    for utterance, (begin, end) in zip(utterances, spans, strict=True):
        assert begin <= utterance.start and utterance.end <= end
    assert "dashwood" in utterances[0].text
    assert "young man" in utterances[1].text
    assert "selfish" in utterances[2].text
    assert "amiable" in utterances[3].text and "respectable" in utterances[3].text
    assert "amiable himself" in utterances[4].text
    _check_shape(utterances, len(pcm) / RATE)


def test_results_do_not_depend_on_earlier_requests(engine: Engine) -> None:
    (short,) = _channels("librivox-0930.wav")
    (other,) = _channels("librivox-0880.wav")
    noise = np.random.default_rng(3).normal(0, 3000, RATE * 2).astype(np.int16)

    first = engine.recognize(short, "en-US")
    engine.recognize(other, "en-US")
    engine.recognize(noise, "en-US")
    again = engine.recognize(short, "en-US")

    assert first == again
    assert "amiable" in _words(first)


def test_silence_gives_no_utterances(engine: Engine) -> None:
    assert engine.recognize(np.zeros(RATE * 2, dtype=np.int16), "en-US") == []
    assert engine.recognize(np.zeros(0, dtype=np.int16), "en-US") == []


@pytest.mark.parametrize("language", ["ru-RU", "en-GB", "kk-KZ", "", "auto"])
def test_an_unsupported_language_is_refused(engine: Engine, language: str) -> None:
    with pytest.raises(UnsupportedLanguageError) as caught:
        engine.recognize(np.zeros(RATE, dtype=np.int16), language)

    assert caught.value.language_code == language
    assert caught.value.supported == frozenset({"en-US"})
    assert "en-US" in str(caught.value)
    assert "pocketsphinx" in str(caught.value)


def test_language_tags_compare_case_insensitively(engine: Engine) -> None:
    assert check_language(engine, "EN-us") == "en-US"
    assert engine.recognize(np.zeros(RATE, dtype=np.int16), "en-us") == []


@pytest.mark.parametrize(
    "pcm",
    [np.zeros(RATE, dtype=np.float32), np.zeros((2, RATE), dtype=np.int16), np.zeros(RATE, dtype=np.int32)],
)
def test_refuses_anything_but_mono_int16(engine: Engine, pcm: NDArray[Any]) -> None:
    with pytest.raises(ValueError, match="int16"):
        engine.recognize(pcm, "en-US")


def test_the_engine_satisfies_the_protocol(engine: Engine) -> None:
    assert isinstance(engine, Engine)
    assert isinstance(engine, PocketsphinxEngine)
    assert engine.name == "pocketsphinx"
    assert engine.languages == frozenset({"en-US"})


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="vad_mode"):
        PocketsphinxSettings(vad_mode=4)
    with pytest.raises(ValueError, match="segmentation"):
        PocketsphinxSettings(min_pause_seconds=0)


# --------------------------------------------------------------------------------------------------------
# Segmentation helpers
# --------------------------------------------------------------------------------------------------------


def test_words_split_into_utterances_at_long_pauses_only() -> None:
    words = [
        Word("he", 0.2, 0.4),
        Word("was", 0.45, 0.7),
        Word("not", 1.1, 1.3),  # 0.4 s pause: same utterance
        Word("young", 1.9, 2.2),  # 0.6 s pause: a new one
        Word("man", 2.2, 2.5),
    ]

    utterances = list(_utterances(words, min_pause=0.5))

    assert [u.text for u in utterances] == ["he was not", "young man"]
    assert utterances[1].words == (Word("young", 1.9, 2.2), Word("man", 2.2, 2.5))
    assert list(_utterances([], min_pause=0.5)) == []


def test_long_regions_are_cut_at_quiet_points() -> None:
    rng = np.random.default_rng(0)
    pcm = rng.normal(0, 5000, RATE * 70).astype(np.int16)
    quiet = [int(RATE * 25), int(RATE * 48)]
    for at in quiet:
        pcm[at : at + RATE // 10] = 0

    pieces = list(_split_long(pcm, [(RATE, RATE * 69)], max_seconds=30))

    assert pieces[0][0] == RATE and pieces[-1][1] == RATE * 69
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    assert all(end - start <= RATE * 30 for start, end in pieces)
    cuts = [end for _, end in pieces[:-1]]
    assert len(cuts) == 2
    for cut, at in zip(cuts, quiet, strict=True):
        assert at <= cut < at + RATE // 10
    assert list(_split_long(pcm, [(0, RATE * 10)], max_seconds=30)) == [(0, RATE * 10)]


# --------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------


class _FakeEngine:
    name = "fake"
    languages = frozenset({"xx-XX"})

    def recognize(self, pcm: NDArray[np.int16], language_code: str) -> list[Utterance]:
        check_language(self, language_code)
        return [Utterance("hello", (Word("hello", 0.0, len(pcm) / RATE),))]


def test_get_engine_builds_each_engine_once(engine: Engine) -> None:
    assert "pocketsphinx" in available_engines()
    assert get_engine("pocketsphinx") is engine


def test_an_unknown_engine_names_the_known_ones() -> None:
    with pytest.raises(UnknownEngineError) as caught:
        get_engine("vosk")

    assert str(caught.value) == "no recognition engine named 'vosk'; available: pocketsphinx, whisper"
    assert caught.value.name == "vosk"


def test_registering_another_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_factories", dict(base._factories))
    monkeypatch.setattr(base, "_instances", dict(base._instances))
    built: list[_FakeEngine] = []

    def factory() -> Engine:
        built.append(_FakeEngine())
        return built[-1]

    register_engine("fake", factory)
    fake = get_engine("fake")

    assert get_engine("fake") is fake and len(built) == 1
    assert "fake" in available_engines()
    assert fake.recognize(np.zeros(RATE, dtype=np.int16), "xx-xx")[0].text == "hello"
    with pytest.raises(UnsupportedLanguageError):
        fake.recognize(np.zeros(RATE, dtype=np.int16), "en-US")
    with pytest.raises(ValueError, match="already registered"):
        register_engine("fake", factory)
    register_engine("fake", factory, replace=True)
    assert get_engine("fake") is not fake
