# ruff: noqa: RUF001, SIM905 - Russian words are written in Cyrillic; word lists read best as text
"""The profanity filter of the self-hosted service (``profanityFilter: true``)."""

from __future__ import annotations

import pytest

from speechkit_operator.selfhosted.profanity import is_profane, mask_text, mask_word

RUSSIAN_PROFANITY = (
    "хуй нахуй похуй охуеть нихуя хуёвый пизда пиздец распиздяй ебать заебал выебываться ёбаный уебок "
    "съебался отъебись долбоёб бля блядь блять мудак мудила пидор"
).split()
ENGLISH_PROFANITY = "fuck fucking Fucked motherfucker shit bullshit cunt asshole bitch bitches".split()
#: Ordinary words that contain the letters of the roots above.
ORDINARY = (
    "себе себя небо вебинар употреблять хлеб скребок ухудшение похудеть страхуй хребет бляха мудрый "
    "мудрость спидометр поехать обед победа ребёнок еда ёлка подъём объём сука дурак shiitake "
    "Scunthorpe niggardly assess class bass cocktail dickens hello damn hell"
).split()


@pytest.mark.parametrize("word", RUSSIAN_PROFANITY + ENGLISH_PROFANITY)
def test_profanity_is_found(word: str) -> None:
    assert is_profane(word)
    masked = mask_word(word)
    assert masked == word[0] + "*" * (len(word) - 1)


@pytest.mark.parametrize("word", ORDINARY)
def test_ordinary_words_are_left_alone(word: str) -> None:
    assert not is_profane(word)
    assert mask_word(word) == word


def test_text_keeps_its_punctuation_spacing_and_case() -> None:
    assert mask_text("What the Fuck, he said — блядь! Don't.") == "What the F***, he said — б****! Don't."
    assert mask_text("") == ""
    assert mask_text("Всё хорошо.") == "Всё хорошо."
