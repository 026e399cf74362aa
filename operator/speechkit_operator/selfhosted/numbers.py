"""``rawResults: true``: numbers in words, as SpeechKit writes them with that flag ("in words" rather than
"in numbers", its default).

Engines write numbers as they like; Whisper writes digits ("47,812", "1998", "5-й"). With ``rawResults``
the service answers each number in words instead, in the recognition language:

* **Russian** (``ru-*``): the nominative cardinal ("47 812" -> "сорок семь тысяч восемьсот двенадцать").
  A number grouped by thousands with spaces is one number; a decimal comma reads "запятая"; an ordinal
  ending after a hyphen ("5-й") is dropped, leaving the cardinal, because its case is the sentence's.
* **English** (``en-*``): the cardinal ("47,812" -> "forty seven thousand eight hundred twelve"), with
  commas grouping thousands and a decimal point read "point"; ordinals ("21st") become ordinal words
  ("twenty first").
* A digit string with a leading zero ("007") and anything from a billion on is read digit by digit.
* Other languages keep their digits: there is no speller for them.

The functions are pure; the worker applies them to the words and the text of each result.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

_RU_UNITS: Final = ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять")
_RU_TEENS: Final = (
    "десять",
    "одиннадцать",
    "двенадцать",
    "тринадцать",
    "четырнадцать",
    "пятнадцать",
    "шестнадцать",
    "семнадцать",
    "восемнадцать",
    "девятнадцать",
)
_RU_TENS: Final = (
    "",
    "",
    "двадцать",
    "тридцать",
    "сорок",
    "пятьдесят",
    "шестьдесят",
    "семьдесят",
    "восемьдесят",
    "девяносто",
)
_RU_HUNDREDS: Final = (
    "",
    "сто",
    "двести",
    "триста",
    "четыреста",
    "пятьсот",
    "шестьсот",
    "семьсот",
    "восемьсот",
    "девятьсот",
)
# (one, two to four, five and more) of each scale, and whether the scale's group is feminine
_RU_SCALES: Final = (
    (("тысяча", "тысячи", "тысяч"), True),
    (("миллион", "миллиона", "миллионов"), False),
)

_EN_UNITS: Final = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_EN_TEENS: Final = (
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_EN_TENS: Final = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_EN_SCALES: Final = ("thousand", "million")
_EN_ORDINALS: Final = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}

#: Numbers from here on are read digit by digit.
_DIGIT_BY_DIGIT_FROM: Final = 1_000_000_000
_MAX_CARDINAL_DIGITS: Final = len(str(_DIGIT_BY_DIGIT_FROM - 1))

# Digit groups separated by spaces are one number only when the whole run is grouped by thousands: a
# telephone number ("8 916 123-45-67") is read group by group.
_RU_GROUPED: Final = re.compile(
    r"(?<![\d\-])(?<!\d[ \u00a0\u202f])\d{1,3}(?:[ \u00a0\u202f]\d{3})+(?![\d\-]|[ \u00a0\u202f]\d)"
)
_EN_GROUPED: Final = re.compile(r"\d{1,3}(?:,\d{3})+(?![\d])")
_RU_ORDINAL_ENDING: Final = re.compile(r"(\d)-[\u0430-\u044f\u0451]{1,3}\b", re.IGNORECASE)
_EN_ORDINAL: Final = re.compile(r"(\d+)(?:st|nd|rd|th)\b", re.IGNORECASE)
_NUMBER: Final = re.compile(r"\d+")
_SPACES: Final = re.compile(r" {2,}")


def _ru_below_thousand(n: int, feminine: bool) -> list[str]:
    out = [_RU_HUNDREDS[n // 100]] if n >= 100 else []
    rest = n % 100
    if 10 <= rest < 20:
        return [*out, _RU_TEENS[rest - 10]]
    if rest >= 20:
        out.append(_RU_TENS[rest // 10])
    unit = rest % 10
    if unit:
        out.append(("одна", "две")[unit - 1] if feminine and unit in (1, 2) else _RU_UNITS[unit])
    return out


def _ru_plural(n: int, forms: tuple[str, str, str]) -> str:
    if n % 100 in range(11, 20):
        return forms[2]
    return forms[0] if n % 10 == 1 else forms[1] if n % 10 in (2, 3, 4) else forms[2]


def russian_cardinal(n: int) -> list[str]:
    """The nominative cardinal of ``n >= 0`` in words (digit by digit from a billion on)."""
    if n == 0:
        return [_RU_UNITS[0]]
    if n >= _DIGIT_BY_DIGIT_FROM:
        return [_RU_UNITS[int(d)] for d in str(n)]
    out: list[str] = []
    for scale, (forms, feminine) in reversed(list(enumerate(_RU_SCALES, 1))):
        group = n // 1000**scale % 1000
        if group == 1:  # "тысяча", not "одна тысяча"
            out.append(forms[0])
        elif group:
            out += [*_ru_below_thousand(group, feminine), _ru_plural(group, forms)]
    return out + _ru_below_thousand(n % 1000, feminine=False)


def _en_below_thousand(n: int) -> list[str]:
    out = [_EN_UNITS[n // 100], "hundred"] if n >= 100 else []
    rest = n % 100
    if 10 <= rest < 20:
        return [*out, _EN_TEENS[rest - 10]]
    if rest >= 20:
        out.append(_EN_TENS[rest // 10])
    if rest % 10 and not 10 <= rest < 20:
        out.append(_EN_UNITS[rest % 10])
    return out


def english_cardinal(n: int) -> list[str]:
    """The cardinal of ``n >= 0`` in words, without "and" (digit by digit from a billion on)."""
    if n == 0:
        return [_EN_UNITS[0]]
    if n >= _DIGIT_BY_DIGIT_FROM:
        return [_EN_UNITS[int(d)] for d in str(n)]
    out: list[str] = []
    for scale, name in reversed(list(enumerate(_EN_SCALES, 1))):
        group = n // 1000**scale % 1000
        if group:
            out += [*_en_below_thousand(group), name]
    return out + _en_below_thousand(n % 1000)


def english_ordinal(n: int) -> list[str]:
    """The ordinal of ``n`` in words ("twenty first", "one hundredth")."""
    spelled = english_cardinal(n)
    last = spelled[-1]
    if last in _EN_ORDINALS:
        spelled[-1] = _EN_ORDINALS[last]
    elif last.endswith("y"):
        spelled[-1] = last[:-1] + "ieth"
    else:
        spelled[-1] = last + "th"
    return spelled


class _Speller:
    def __init__(
        self,
        cardinal: Callable[[int], list[str]],
        units: tuple[str, ...],
        grouped: re.Pattern[str],
        decimal_mark: str,
        decimal_word: str,
    ) -> None:
        self.cardinal = cardinal
        self.units = units
        self.grouped = grouped
        self.decimal_mark = decimal_mark
        self.decimal_word = decimal_word

    def digits(self, digits: str) -> list[str]:
        """A run of digits: its number, or digit by digit when it has a leading zero ("007")."""
        if (len(digits) > 1 and digits.startswith("0")) or len(digits) > _MAX_CARDINAL_DIGITS:
            return [self.units[int(d)] for d in digits]
        return self.cardinal(int(digits))

    def spell(self, text: str) -> str:
        """Every number in ``text`` in words; the rest of the text is kept as it is."""
        text = self.grouped.sub(lambda m: _GROUP_MARK + re.sub(r"\D", "", m.group()), text)
        decimal = re.compile(rf"(\d+){re.escape(self.decimal_mark)}(\d+)")
        text = decimal.sub(lambda m: f"{m.group(1)} {self.decimal_word} {m.group(2)}", text)
        text = text.replace(_GROUP_MARK, "")

        def spelled(match: re.Match[str]) -> str:
            before = match.string[match.start() - 1 : match.start()]
            after = match.string[match.end() : match.end() + 1]
            words = " ".join(self.digits(match.group()))
            pad_before = " " if before.isalnum() else ""
            pad_after = " " if after.isalnum() else ""
            return pad_before + words + pad_after

        return _NUMBER.sub(spelled, text)


# A private mark for "these digits were one grouped number" while the text is rewritten.
_GROUP_MARK: Final = "\ue000"

_RUSSIAN: Final = _Speller(russian_cardinal, _RU_UNITS, _RU_GROUPED, ",", "запятая")
_ENGLISH: Final = _Speller(english_cardinal, _EN_UNITS, _EN_GROUPED, ".", "point")


def _speller(language_code: str) -> _Speller | None:
    language = language_code.strip().lower()
    if language.startswith("ru"):
        return _RUSSIAN
    if language.startswith("en"):
        return _ENGLISH
    return None


def has_speller(language_code: str) -> bool:
    """Whether numbers in ``language_code`` can be written in words."""
    return _speller(language_code) is not None


def spell_numbers(text: str, language_code: str) -> str:
    """``text`` with every number in words, in ``language_code`` (unchanged for a language without a
    speller or a text without digits)."""
    speller = _speller(language_code)
    if speller is None or not any(c.isdigit() for c in text):
        return text
    if speller is _RUSSIAN:
        text = _RU_ORDINAL_ENDING.sub(r"\1", text)
    else:
        text = _EN_ORDINAL.sub(lambda m: " ".join(english_ordinal(int(m.group(1)))), text)
    return _SPACES.sub(" ", speller.spell(text)).strip()
