# ruff: noqa: RUF001, RUF002, RUF003 - Russian words are written in Cyrillic
"""``profanityFilter: true``: mask profanity in Russian and English results, as SpeechKit does.

SpeechKit documents the filter as "mask profanities with asterisks"; this service keeps a word's first
letter and replaces the rest with one asterisk per letter (``f***``, ``б****``), the convention of the
recognisers that document theirs, so a transcript still shows where a word was and how long it was.
The same words are masked in the words list, the normalised text and the punctuated text.

What counts as profanity: Russian *мат* (the roots хуй, пизд, еб/ёб, бляд, муда(к), пидор and their
prefixed forms such as нахуй, заебал, распиздяй, долбоёб) and the common English obscenities and slurs
(fuck, shit, cunt, asshole, bitch, motherfucker, ...). Words are matched from their start, with the
Russian verbal prefixes spelled out, so that ordinary words which merely contain the letters (себе,
страхуй, употреблять, вебинар, скребок, Scunthorpe) are left alone. Rude but not obscene words
(дурак, сука, damn, hell) are not masked, which matches what a profanity filter promises.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["is_profane", "mask_text", "mask_word"]

# Russian prefixes that combine with the obscene roots (на-хуй, рас-пиздяй, за-ебать, от-ъебаться, ...).
_RU_PREFIXES: Final = (
    "вы|за|на|по|при|про|пере|недо|до|раз|рас|из|ис|от|у|о|об|под|над|с|вз|вс|ни|долбо|мудо|"
    "разъ|изъ|отъ|объ|подъ|надъ|съ|взъ|въ"
)
_RU_ROOTS: Final = (
    # хуй, хуя, хуе(ть), хуё(вый), хуи, хую; not худ.., хут.., хул.. (ухудшение, похудеть)
    r"ху[йяеёию]"
    # пизда, пиздец, пиздеть
    r"|пизд"
    # бля, блядь, блять, бляди; not бляха
    r"|бля(?:$|[дт])"
    # мудак, мудила, мудозвон; not мудрый
    r"|муд(?:ак|ач|ил|оз|оё|ое|я$)"
    # пидор, пидар, пидр; not спидометр
    r"|пид(?:[оа]р|р)"
)
# еб/ёб: at the start or after a prefix. Not after a bare с or в, which would catch себе and вебинар
# (the obscene forms there are съеб.., въеб..).
_RU_EB_PREFIXES: Final = (
    "вы|за|на|по|при|про|пере|недо|до|у|под|раз|от|об|ни|долбо|разъ|изъ|отъ|объ|подъ|надъ|съ|взъ|въ"
)
_RU: Final = re.compile(
    rf"^(?:(?:{_RU_PREFIXES})?(?:{_RU_ROOTS})|(?:{_RU_EB_PREFIXES})?[её]б(?:[аеёиоуыянлшщтсчкв]|$))"
)
_EN: Final = re.compile(
    r"^(?:(?:mother|mutha|bull|horse|dip|chicken)?f+u+c+k"
    r"|(?:bull|horse|dip|chicken|ape)?shit(?!ake)"
    r"|cunt|asshole|arsehole|bitch|dickhead|cocksucker|whore|slut|twat|wank(?:er|ing|s)?$"
    r"|nigg(?:ers?|as?|az)$|faggots?$|fags?$)"
)
_TOKEN: Final = re.compile(r"\w+(?:['\u2019\-]\w+)*")


def is_profane(word: str) -> bool:
    """Whether ``word`` (any case) is one to mask."""
    lowered = word.lower().replace("\u2019", "'")
    return bool(_RU.match(lowered) or _EN.match(lowered))


def mask_word(word: str) -> str:
    """``word`` as ``f***``: its first letter, then an asterisk for every other character."""
    return word[:1] + "*" * (len(word) - 1) if is_profane(word) else word


def mask_text(text: str) -> str:
    """``text`` with every profane word masked; punctuation, spacing and case kept."""
    return _TOKEN.sub(lambda match: mask_word(match.group(0)), text)
