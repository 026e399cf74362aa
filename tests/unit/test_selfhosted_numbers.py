# ruff: noqa: RUF001 - Russian text is written in Cyrillic
"""Numbers in words for ``rawResults`` (speechkit_operator.selfhosted.numbers)."""

from __future__ import annotations

import pytest

from speechkit_operator.selfhosted.numbers import (
    english_cardinal,
    english_ordinal,
    has_speller,
    russian_cardinal,
    spell_numbers,
)


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "ноль"),
        (1, "один"),
        (11, "одиннадцать"),
        (21, "двадцать один"),
        (100, "сто"),
        (1000, "тысяча"),
        (2002, "две тысячи два"),
        (5000, "пять тысяч"),
        (11_000, "одиннадцать тысяч"),
        (21_000, "двадцать одна тысяча"),
        (47_812, "сорок семь тысяч восемьсот двенадцать"),
        (1_000_000, "миллион"),
        (2_500_001, "два миллиона пятьсот тысяч один"),
        (1998, "тысяча девятьсот девяносто восемь"),
    ],
)
def test_russian_cardinals(number: int, words: str) -> None:
    assert " ".join(russian_cardinal(number)) == words


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (105, "one hundred five"),
        (1250, "one thousand two hundred fifty"),
        (1_000_001, "one million one"),
        (
            999_999_999,
            "nine hundred ninety nine million nine hundred ninety nine thousand nine hundred ninety nine",
        ),
    ],
)
def test_english_cardinals(number: int, words: str) -> None:
    assert " ".join(english_cardinal(number)) == words


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (1, "first"),
        (2, "second"),
        (3, "third"),
        (12, "twelfth"),
        (20, "twentieth"),
        (21, "twenty first"),
        (100, "one hundredth"),
    ],
)
def test_english_ordinals(number: int, words: str) -> None:
    assert " ".join(english_ordinal(number)) == words


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("до 6 часов", "ru-RU", "до шесть часов"),
        ("47 812 человек", "ru-RU", "сорок семь тысяч восемьсот двенадцать человек"),
        ("5-й дом", "ru-RU", "пять дом"),
        ("3,5 кг", "ru-RU", "три запятая пять кг"),
        ("код 007", "ru-RU", "код ноль ноль семь"),
        ("в 2024г", "ru-RU", "в две тысячи двадцать четыре г"),
        ("1 000 000 рублей", "ru-RU", "миллион рублей"),
        (
            "8 916 123-45-67",
            "ru-RU",
            "восемь девятьсот шестнадцать сто двадцать три-сорок пять-шестьдесят семь",
        ),
        (
            "On the 21st, 1,250 people.",
            "en-US",
            "On the twenty first, one thousand two hundred fifty people.",
        ),
        ("pi is 3.14", "en-GB", "pi is three point fourteen"),
        ("1234567890", "en-US", "one two three four five six seven eight nine zero"),
        ("Seite 23", "de-DE", "Seite 23"),
        ("no numbers here", "ru-RU", "no numbers here"),
    ],
)
def test_numbers_in_text(text: str, language: str, expected: str) -> None:
    assert spell_numbers(text, language) == expected


def test_a_huge_digit_string_is_read_digit_by_digit_without_a_conversion_error() -> None:
    """Python refuses int() of more than 4,300 digits; a hostile or odd transcript must not crash."""
    spelled = spell_numbers("7" * 10_000, "en-US").split()
    assert spelled == ["seven"] * 10_000


def test_languages_with_a_speller() -> None:
    assert has_speller("ru-RU") and has_speller("en-US") and has_speller("EN")
    assert not has_speller("kk-KZ") and not has_speller("auto")
