"""Include and exclude globs of a TranscriptionBatch's source: their syntax, compiled once, and how a
key matches one. The model validates globs with :func:`compile_glob`; the selection
(:mod:`speechkit_operator.logic.batch_selection`) matches keys with them.

``source.include`` and ``source.exclude`` are globs matched against the key *relative to the source
prefix* (:func:`~speechkit_operator.logic.batch_selection.relative_key`: ``calls/2024/a.wav`` under
the prefix ``calls/`` is ``2024/a.wav``).
The glob and the key are split at ``/`` and matched segment by segment:

- a segment that is exactly ``**`` matches zero or more whole segments: ``**/*.wav`` matches
  ``a.wav`` and ``x/y/a.wav``, ``2024/**`` everything under ``2024/``, ``a/**/b.wav`` ``a/b.wav``
  and ``a/x/y/b.wav``;
- in any other segment ``*`` matches any run of characters, none included, but never a ``/``
  (``**`` inside a segment, as in ``a**b``, is the same as ``*``); ``?`` matches exactly one
  character; ``[abc]``, ``[a-z]`` match one character of the class, ``[!a-z]`` (or ``[^a-z]``) one
  character outside it (a ``]`` right after the opening ``[`` or ``[!`` belongs to the class, a
  ``[`` without a closing ``]`` is an ordinary character); every other character matches itself,
  case-sensitively (S3 keys are case-sensitive). There are no escapes: ``[*]``, ``[?]`` and ``[[]``
  match those characters;
- the whole relative key must match: ``*.wav`` matches ``a.wav`` but not ``2024/a.wav``.

Matching never backtracks exponentially: at worst it takes time proportional to the length of the
glob times the length of the key, whatever the glob (specs are untrusted input). Each segment is a
regular expression that cannot backtrack out of its segment; the segments before the first ``**``
and after the last one match the key's first and last segments, and only a run of segments between
two ``**`` is searched for along the key. The model bounds how many globs a batch has and how deep
they are (:class:`~speechkit_operator.models.batch.BatchSourceSpec`), so that matching a key against
all of them costs milliseconds even for a key of 1,000 segments.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, field


class _Wild(enum.Enum):
    ANY = "?"
    STAR = "*"


@dataclass(frozen=True)
class _CharClass:
    ranges: tuple[tuple[str, str], ...]
    negated: bool

    def matches(self, char: str) -> bool:
        return any(low <= char <= high for low, high in self.ranges) != self.negated


_Token = str | _Wild | _CharClass
#: A segment's tokens, or None for a ``**`` segment.
_Segment = tuple[_Token, ...] | None


class SplitKey:
    """A key relative to the source prefix, split once for all the globs it is matched against:
    its segments, and the key behind a ``/`` (every segment then follows a ``/``), in which the
    blocks between two ``**`` are searched for."""

    __slots__ = ("parts", "slashed")

    def __init__(self, relative: str) -> None:
        self.parts = relative.split("/")
        self.slashed = "/" + relative


@dataclass(frozen=True)
class Glob:
    """A compiled include/exclude glob (see the module's documentation for its semantics).

    Its segments are cut at the ``**`` ones into blocks: the first block must match the key's
    first segments, the last block its last ones, and each block between two ``**`` a run of
    segments in between, the leftmost run that does (a later one never leaves more room to the
    blocks after it). Each segment is a regular expression that cannot backtrack out of the
    segment it matches, so matching costs, at worst, the key's length times the glob's."""

    text: str
    segments: tuple[_Segment, ...]
    _head: tuple[re.Pattern[str], ...] = field(repr=False, compare=False)
    _middle: tuple[re.Pattern[str], ...] = field(repr=False, compare=False)
    _tail: tuple[re.Pattern[str], ...] = field(repr=False, compare=False)
    #: Whether a ``**`` lets the key have more segments than the glob.
    _spans: bool = field(repr=False, compare=False)
    #: Segments of the key the blocks must have at least.
    _least: int = field(repr=False, compare=False)

    def matches(self, relative: str) -> bool:
        """Whether the whole of ``relative`` (a key relative to the source prefix) matches."""
        return self.matches_split(SplitKey(relative))

    def matches_split(self, key: SplitKey) -> bool:
        parts = key.parts
        count, head, tail = len(parts), self._head, self._tail
        if not self._spans:
            return count == len(head) and all(
                segment.fullmatch(part) for segment, part in zip(head, parts, strict=True)
            )
        if count < self._least:
            return False
        if not all(segment.fullmatch(part) for segment, part in zip(head, parts[: len(head)], strict=True)):
            return False
        last = parts[count - len(tail) :]
        if not all(segment.fullmatch(part) for segment, part in zip(tail, last, strict=True)):
            return False
        if not self._middle:
            return True
        # Where the segments between the head and the tail are in ``slashed``: from the slash
        # before the first of them to the end of the last.
        position = sum(map(len, parts[: len(head)])) + len(head)
        end = len(key.slashed) - sum(map(len, last)) - len(tail)
        for block in self._middle:
            found = block.search(key.slashed, position, end)
            if found is None:
                return False
            position = found.end()
        return True


def _token_regex(token: _Token) -> str:
    if isinstance(token, str):
        return re.escape(token)
    if isinstance(token, _CharClass):
        body = "".join(
            re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}"
            for low, high in token.ranges
        )
        if token.negated:
            return f"[^/{body}]"
        # A range such as [+-9] holds "/", which a segment never does.
        return f"(?!/)[{body}]" if token.matches("/") else f"[{body}]"
    return "[^/]"  # ``?``


def _segment_regex(tokens: tuple[_Token, ...]) -> str:
    """A regular expression for one segment that runs in time proportional to the name's length
    times the segment's: between two ``*`` the earliest place of the fixed run of characters is
    the best one (it leaves the most room to the rest), so it is taken for good, atomically; only
    the last ``*`` backtracks, to put the last run at the end."""
    runs: list[list[str]] = [[]]
    for token in tokens:
        if token is _Wild.STAR:
            runs.append([])
        else:
            runs[-1].append(_token_regex(token))
    if len(runs) == 1:
        return "".join(runs[0])
    first, *between, last = ("".join(run) for run in runs)
    return first + "".join(f"(?>[^/]*?{run})" for run in between) + "[^/]*" + last


def _block_search(block: tuple[tuple[_Token, ...], ...]) -> re.Pattern[str]:
    """The segments of ``block``, each behind a ``/`` and ending where its segment ends, atomically
    (a segment matches its whole segment in one way only, so nothing is lost)."""
    return re.compile("".join(f"/(?>{_segment_regex(tokens)}(?![^/]))" for tokens in block))


def _parse_class(segment: str, start: int, glob: str) -> tuple[_CharClass, int] | None:
    """The class that opens at ``segment[start - 1] == "["`` and the index after it; None without a
    closing ``]`` (the ``[`` is then an ordinary character)."""
    index = start
    negated = index < len(segment) and segment[index] in "!^"
    if negated:
        index += 1
    end = segment.find("]", index + 1 if index < len(segment) and segment[index] == "]" else index)
    if end < 0:
        return None
    body = segment[index:end]
    ranges: list[tuple[str, str]] = []
    position = 0
    while position < len(body):
        if position + 2 < len(body) and body[position + 1] == "-":
            low, high = body[position], body[position + 2]
            if low > high:
                raise ValueError(f"glob {glob!r}: the range {low}-{high} in [{body}] is empty")
            ranges.append((low, high))
            position += 3
        else:
            ranges.append((body[position], body[position]))
            position += 1
    return _CharClass(tuple(ranges), negated), end + 1


def _parse_segment(segment: str, glob: str) -> tuple[_Token, ...]:
    tokens: list[_Token] = []
    index = 0
    while index < len(segment):
        char = segment[index]
        if char == "*":
            if not tokens or tokens[-1] is not _Wild.STAR:
                tokens.append(_Wild.STAR)
            index += 1
        elif char == "?":
            tokens.append(_Wild.ANY)
            index += 1
        elif char == "[" and (parsed := _parse_class(segment, index + 1, glob)) is not None:
            char_class, index = parsed
            tokens.append(char_class)
        else:
            tokens.append(char)
            index += 1
    return tuple(tokens)


@functools.lru_cache(maxsize=1024)
def compile_glob(text: str) -> Glob:
    """Compile an include/exclude glob; ValueError for an empty one, one that starts with ``/``
    (globs match the key relative to the prefix) or one with an empty range such as ``[z-a]``.
    ``**/**`` is the same as ``**``. (How long and deep a batch's globs may be is the model's
    business: :class:`~speechkit_operator.models.batch.BatchSourceSpec`.)"""
    if not text:
        raise ValueError("a glob must not be empty")
    if text.startswith("/"):
        raise ValueError(
            f"glob {text!r} starts with /: globs match the key relative to source.prefix, "
            "without a leading slash"
        )
    segments: list[_Segment] = []
    for part in text.split("/"):
        if part != "**":
            segments.append(_parse_segment(part, text))
        elif not segments or segments[-1] is not None:
            segments.append(None)
    blocks: list[list[tuple[_Token, ...]]] = [[]]
    for segment in segments:
        if segment is None:
            blocks.append([])
        else:
            blocks[-1].append(segment)
    head, *middle, tail = blocks if len(blocks) > 1 else [*blocks, []]
    return Glob(
        text=text,
        segments=tuple(segments),
        _head=tuple(re.compile(_segment_regex(tokens)) for tokens in head),
        _middle=tuple(_block_search(tuple(block)) for block in middle),
        _tail=tuple(re.compile(_segment_regex(tokens)) for tokens in tail),
        _spans=len(blocks) > 1,
        _least=sum(len(block) for block in blocks),
    )
