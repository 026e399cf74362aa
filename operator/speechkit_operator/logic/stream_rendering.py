"""What ``speechkit-operator stream`` writes for each response of a streaming session.

:class:`StreamRenderer` turns :class:`~speechkit_operator.models.stream_results.StreamResponse` s into
text for stdout, in one of three styles:

* ``terminal`` (stdout is a terminal): the current utterance's partial result rewrites one line in
  place (carriage return, erase the line, the text cut to the terminal's width from the left so that it
  never wraps); a final result replaces it and ends the line.
* ``plain`` (stdout is a file or a pipe): one line per final result; with ``partials``, partial results
  too, as lines starting with :data:`PARTIAL_PREFIX`.
* ``json``: each response as one JSON object per line, in SpeechKit's JSON field names.

Text from the service is shown without its control characters: a result cannot move the cursor or
change the terminal. Pure: strings in, strings out.
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any, Final, Literal

from speechkit_operator.contracts.duration import format_duration
from speechkit_operator.models.stream_results import StreamChunk, StreamResponse

Style = Literal["terminal", "plain", "json"]

#: Carriage return and "erase the whole line" (ECMA-48 EL 2).
CLEAR_LINE: Final = "\r\x1b[2K"
PARTIAL_PREFIX: Final = "partial: "
_ELLIPSIS: Final = "…"


def printable(text: str) -> str:
    """``text`` with control characters (line breaks, escapes) as spaces."""
    return "".join(" " if unicodedata.category(char) in ("Cc", "Cf") else char for char in text)


def fit(text: str, width: int) -> str:
    """``text`` cut from the left to fit a line of ``width`` columns without wrapping (the last column
    stays free: some terminals wrap when it is written)."""
    room = max(1, width - 1)
    if len(text) <= room:
        return text
    return _ELLIPSIS + text[len(text) - room + 1 :]


def response_json(response: StreamResponse) -> dict[str, Any]:
    """A response in SpeechKit's JSON form (camelCase, Durations as ``"1.5s"``), with ``final`` and
    ``endOfUtterance`` always present."""
    return {
        "chunks": [
            {
                "alternatives": [
                    {
                        "text": alternative.text,
                        "confidence": alternative.confidence,
                        **(
                            {
                                "words": [
                                    {
                                        key: value
                                        for key, value in (
                                            ("startTime", _duration(word.start)),
                                            ("endTime", _duration(word.end)),
                                            ("word", word.word),
                                            ("confidence", word.confidence),
                                        )
                                        if value is not None
                                    }
                                    for word in alternative.words
                                ]
                            }
                            if alternative.words
                            else {}
                        ),
                    }
                    for alternative in chunk.alternatives
                ],
                "final": chunk.final,
                "endOfUtterance": chunk.end_of_utterance,
            }
            for chunk in response.chunks
        ]
    }


def _duration(seconds: float | None) -> str | None:
    return None if seconds is None else format_duration(seconds)


class StreamRenderer:
    """The text to write for each response (see the module's text); :meth:`close` ends the output."""

    def __init__(self, style: Style, *, partials: bool = True, width: int = 80) -> None:
        self.style = style
        self.partials = partials
        self.width = width
        self._line_open = False  # terminal: a partial result is on the current line
        self._last_partial: str | None = None
        self.finals = 0

    def render(self, response: StreamResponse) -> str:
        if self.style == "json":
            self.finals += sum(1 for chunk in response.chunks if chunk.final)
            return json.dumps(response_json(response), ensure_ascii=False) + "\n"
        return "".join(self._chunk(chunk) for chunk in response.chunks)

    def _chunk(self, chunk: StreamChunk) -> str:
        text = printable(chunk.text).strip()
        if chunk.final:
            self.finals += 1
            self._last_partial = None
            if self.style == "terminal":
                opened, self._line_open = self._line_open, False
                if text:
                    return f"{CLEAR_LINE}{text}\n"
                return CLEAR_LINE if opened else ""
            return f"{text}\n" if text else ""
        if not self.partials or text == self._last_partial:
            return ""
        self._last_partial = text
        if self.style == "terminal":
            self._line_open = True
            return f"{CLEAR_LINE}{fit(text, self.width)}"
        return f"{PARTIAL_PREFIX}{text}\n" if text else ""

    def close(self) -> str:
        """What ends the output: on a terminal, the line of a partial result that no final replaced is
        ended (and kept), so that what comes next starts on a line of its own."""
        if self._line_open:
            self._line_open = False
            self._last_partial = None
            return "\n"
        return ""
