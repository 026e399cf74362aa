"""Render a transcript as the files the operator writes back to S3: json, txt, srt and vtt.

* ``json`` is the operation's ``response`` exactly as the API returned it.
* ``txt`` is every chunk's text in time order, one per line; with several channels each line is labelled
  ``[channel N]``.
* ``srt`` and ``vtt`` are subtitles built from word timings (:func:`build_cues`). With several channels
  there is one subtitle file per channel, since the channels overlap in time.

Everything here is a pure function of its arguments: no I/O, no clock, no kopf.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from speechkit_operator.models.job import OutputFormat
from speechkit_operator.models.recognition import Chunk, Transcript, Word

#: The longest subtitle line, and how many lines a cue may take.
LINE_WIDTH = 42
MAX_LINES = 2
ELLIPSIS = "\u2026"
#: Times that differ by less than this count as equal (API times look like ``0.879999999s``).
_TIME_EPSILON = 1e-6

CONTENT_TYPES: Mapping[OutputFormat, str] = {
    OutputFormat.JSON: "application/json; charset=utf-8",
    OutputFormat.TXT: "text/plain; charset=utf-8",
    OutputFormat.SRT: "application/x-subrip; charset=utf-8",
    OutputFormat.VTT: "text/vtt; charset=utf-8",
}


@dataclass(frozen=True)
class Cue:
    """One subtitle: seconds from the start of the audio, and text of at most two lines."""

    start: float
    end: float
    text: str


@dataclass(frozen=True)
class RenderedOutput:
    """One file to upload.

    ``name`` is the format (``"srt"``), or the format and channel tag (``"srt:2"``) for per-channel subtitles
    of multichannel audio; it is unique within one :func:`render_outputs` answer.
    """

    name: str
    key: str
    body: bytes
    content_type: str
    format: OutputFormat
    channel: str | None = None


def _clean(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------------
# Cues
# --------------------------------------------------------------------------------------------------------


def wrap_cue_text(text: str, width: int = LINE_WIDTH) -> list[str]:
    """Split ``text`` into lines of at most ``width``: one line, else the most balanced two lines.

    When no two-line split fits (very long words), the text is wrapped greedily and may take more lines.
    """
    text = _clean(text)
    if len(text) <= width:
        return [text]
    best: tuple[int, int] | None = None  # (longer line's length, split index)
    for index, char in enumerate(text):
        if char != " ":
            continue
        longer = max(index, len(text) - index - 1)
        if longer <= width and (best is None or longer < best[0]):
            best = (longer, index)
    if best is not None:
        return [text[: best[1]], text[best[1] + 1 :]]
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def _fits(text: str) -> bool:
    lines = wrap_cue_text(text)
    return len(lines) <= MAX_LINES and all(len(line) <= LINE_WIDTH for line in lines)


def build_cues(
    words: Sequence[Word], *, max_chars: int = 84, max_seconds: float = 7.0, pause_seconds: float = 0.8
) -> list[Cue]:
    """Group words, in time order, into subtitle cues.

    A new cue starts at a pause of at least ``pause_seconds`` between words, and before the current cue
    would grow longer than ``max_chars`` characters or ``max_seconds`` seconds, or could no longer be
    wrapped into two lines of at most 42 characters. A single word that breaks a limit on its own gets a
    cue of its own. Cue ends are clipped so that cues never overlap.
    """
    ordered = sorted((word for word in words if _clean(word.text)), key=lambda word: (word.start, word.end))
    groups: list[tuple[float, float, str]] = []
    start = end = 0.0
    text = ""
    for word in ordered:
        word_text = _clean(word.text)
        if text:
            candidate = f"{text} {word_text}"
            if (
                word.start - end < pause_seconds - _TIME_EPSILON
                and len(candidate) <= max_chars
                and max(end, word.end) - start <= max_seconds + _TIME_EPSILON
                and _fits(candidate)
            ):
                text = candidate
                end = max(end, word.end)
                continue
            groups.append((start, end, text))
        start, end, text = word.start, max(word.start, word.end), word_text
    if text:
        groups.append((start, end, text))

    cues = []
    for index, (cue_start, cue_end, cue_text) in enumerate(groups):
        end = cue_end
        if index + 1 < len(groups):
            end = max(cue_start, min(cue_end, groups[index + 1][0]))
        cues.append(Cue(start=cue_start, end=end, text="\n".join(wrap_cue_text(cue_text))))
    return cues


def _timestamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _cue_lines(text: str) -> list[str]:
    # A blank line would end the cue early in both formats.
    return [line.strip() for line in text.splitlines() if line.strip()]


def render_srt(cues: Sequence[Cue]) -> str:
    """SubRip: cues numbered from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, a blank line between cues."""
    blocks: list[str] = []
    for cue in cues:
        lines = _cue_lines(cue.text)
        if not lines:
            continue
        timing = f"{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}"
        blocks.append("\n".join([str(len(blocks) + 1), timing, *lines]) + "\n")
    return "\n".join(blocks)


def _vtt_escape(line: str) -> str:
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(cues: Sequence[Cue]) -> str:
    """WebVTT: a ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm`` cues separated by blank lines."""
    blocks: list[str] = ["WEBVTT\n"]
    for cue in cues:
        lines = _cue_lines(cue.text)
        if not lines:
            continue
        timing = f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}"
        blocks.append("\n".join([timing, *(_vtt_escape(line) for line in lines)]) + "\n")
    return "\n".join(blocks)


# --------------------------------------------------------------------------------------------------------
# Plain text
# --------------------------------------------------------------------------------------------------------


def _in_time_order(chunks: Iterable[Chunk]) -> list[Chunk]:
    """Chunks sorted by start; a chunk without words keeps its place after the chunk before it."""
    keyed = []
    last_start = 0.0
    for position, chunk in enumerate(chunks):
        if chunk.words:
            last_start = chunk.start
        keyed.append((last_start, position, chunk))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [chunk for _, _, chunk in keyed]


def _channels(transcript: Transcript) -> list[str]:
    """The transcript's channels, then any other channel its chunks name, in order of appearance."""
    return list(dict.fromkeys([*transcript.channels, *(chunk.channel for chunk in transcript.chunks)]))


def render_txt(transcript: Transcript) -> str:
    """Every chunk's text in time order, one per line; labelled ``[channel N]`` (or ``[speaker N]``) when
    there are several."""
    labelled = len(_channels(transcript)) > 1
    lines = []
    for chunk in _in_time_order(transcript.chunks):
        text = _clean(chunk.text)
        if text:
            lines.append(f"[{transcript.tag_kind} {chunk.channel}] {text}" if labelled else text)
    return "".join(f"{line}\n" for line in lines)


def preview(transcript: Transcript, limit: int = 200) -> str:
    """The start of the plain text (no channel labels), at most ``limit`` characters.

    Longer text is cut at a word boundary and ends with an ellipsis, which counts towards ``limit``.
    """
    text = _clean(" ".join(chunk.text for chunk in _in_time_order(transcript.chunks)))
    if len(text) <= limit:
        return text
    if limit <= 0:
        return ""
    budget = limit - len(ELLIPSIS)
    if text[budget] == " ":
        cut = text[:budget]
    else:
        space = text.rfind(" ", 0, budget)
        cut = text[:space] if space > 0 else text[:budget]
    return cut.rstrip() + ELLIPSIS


# --------------------------------------------------------------------------------------------------------
# JSON, and everything together
# --------------------------------------------------------------------------------------------------------


def render_json(response: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """The API's answer as returned (v2: the operation's response; v3: the list of results of
    getRecognition): key order kept, UTF-8 without escapes, indented."""
    return json.dumps(response, ensure_ascii=False, indent=2).encode("utf-8") + b"\n"


def _key_tag(channel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", channel) or "_"


def render_outputs(
    response: Mapping[str, Any] | Sequence[Any],
    transcript: Transcript,
    formats: Sequence[OutputFormat],
    base_key: str,
) -> list[RenderedOutput]:
    """Every file to write for ``formats``, in that order.

    Keys are ``{base_key}.{format}``. For multichannel audio subtitles come one file per channel,
    ``{base_key}.channel-{tag}.{format}`` named ``"{format}:{tag}"`` (with speaker labels, one per
    speaker: ``{base_key}.speaker-{tag}.{format}``, ``"{format}:speaker-{tag}"``); json and txt are always
    one file.
    """
    channels = _channels(transcript)
    multichannel = len(channels) > 1
    outputs: list[RenderedOutput] = []
    for fmt in dict.fromkeys(formats):
        content_type = CONTENT_TYPES[fmt]
        if fmt is OutputFormat.JSON or fmt is OutputFormat.TXT:
            body = render_json(response) if fmt is OutputFormat.JSON else render_txt(transcript).encode()
            outputs.append(RenderedOutput(fmt.value, f"{base_key}.{fmt.value}", body, content_type, fmt))
            continue
        render = render_srt if fmt is OutputFormat.SRT else render_vtt
        if not multichannel:
            words = [word for chunk in transcript.chunks for word in chunk.words]
            body = render(build_cues(words)).encode()
            outputs.append(RenderedOutput(fmt.value, f"{base_key}.{fmt.value}", body, content_type, fmt))
            continue
        for channel in channels:
            words = [word for chunk in transcript.chunks if chunk.channel == channel for word in chunk.words]
            prefix = "speaker-" if transcript.speakers else ""
            outputs.append(
                RenderedOutput(
                    name=f"{fmt.value}:{prefix}{channel}",
                    key=f"{base_key}.{transcript.tag_kind}-{_key_tag(channel)}.{fmt.value}",
                    body=render(build_cues(words)).encode(),
                    content_type=content_type,
                    format=fmt,
                    channel=channel,
                )
            )
    return outputs
