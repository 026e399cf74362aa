"""Turn the results of v3 ``getRecognition`` (:mod:`speechkit_operator.contracts.stt_v3`) into a
:class:`Transcript`. Pure functions, no I/O.

* Each utterance is a ``final`` (its words and times, milliseconds) identified by its channel tag and
  ``audioCursors.finalIndex``; a ``finalRefinement`` with the same tag and index carries its normalized
  text, which then replaces the final's text (the words keep the final's times).
* v3 numbers channels from "0"; the transcript numbers them from "1", as v2 does, so that outputs are
  named alike (``….channel-1.srt``) whatever the API. With speaker labeling the tags are speakers
  (``Transcript.speakers``).
* The detected language is the one with the largest total probability over the utterances (weighted by
  their words), when any utterance reports languages.
* ``partial``, ``eouUpdate``, ``statusCode`` and events unknown here are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from speechkit_operator.clients.speech.v2_parsing import channel_sort_key, most_probable_language
from speechkit_operator.contracts.stt_v3 import AlternativeV3, StreamingResponse
from speechkit_operator.models.recognition import Chunk, Transcript, Word


@dataclass
class _Utterance:
    tag: str
    index: int | None  # audioCursors.finalIndex, when the answer gave it
    words: tuple[Word, ...]
    text: str
    languages: dict[str, float]
    refined: str | None = None


def transcript_tag(v3_tag: str) -> str:
    """A v3 channel tag ("0", "1", …) as a transcript tag ("1", "2", …); other tags stay as they are."""
    return str(int(v3_tag) + 1) if v3_tag.isdigit() and len(v3_tag) < 10 else v3_tag


def _words(alternative: AlternativeV3) -> tuple[Word, ...]:
    return tuple(
        Word(
            text=word.text,
            start=word.start_time_ms / 1000,
            end=max(word.end_time_ms, word.start_time_ms) / 1000,
        )
        for word in alternative.words
    )


def refined_words(words: tuple[Word, ...], text: str) -> tuple[Word, ...]:
    """The words of a normalized ``text`` over the time its final's ``words`` took, each given a share
    of it by its length: subtitles then say what the text says ("22 birds", not "twenty two birds")."""
    tokens = text.split()
    if not words or not tokens or [word.text for word in words] == tokens:
        return words
    start, end = words[0].start, max(word.end for word in words)
    total = sum(len(token) for token in tokens)
    out: list[Word] = []
    at = start
    for token in tokens:
        share = (end - start) * len(token) / total
        out.append(Word(text=token, start=round(at, 3), end=round(at + share, 3)))
        at += share
    return tuple(out)


def parse_v3_results(results: Iterable[StreamingResponse], *, speakers: bool = False) -> Transcript:
    """The transcript of getRecognition's ``results``; ``speakers`` when speaker labeling was asked for.

    Finals are kept in the order they came; a refinement goes to the final of its channel with its
    ``finalIndex`` (the channel's latest final when the answer gave no cursors)."""
    utterances: list[_Utterance] = []
    for result in results:
        tag = result.channel_tag or "0"
        if result.final is not None and result.final.alternatives:
            best = result.final.alternatives[0]
            words = _words(best)
            text = best.text or " ".join(word.text for word in words if word.text)
            languages = {language.language_code: language.probability for language in best.languages}
            index = result.audio_cursors.final_index if result.audio_cursors is not None else None
            utterances.append(_Utterance(tag, index, words, text, languages))
        elif result.final_refinement is not None and result.final_refinement.normalized_text is not None:
            alternatives = result.final_refinement.normalized_text.alternatives
            target = _refined_final(utterances, tag, result.final_refinement.final_index)
            if target is not None and alternatives and alternatives[0].text:
                target.refined = alternatives[0].text
                for language in alternatives[0].languages:
                    target.languages.setdefault(language.language_code, language.probability)
    chunks = [
        Chunk(
            channel=transcript_tag(u.tag),
            text=u.refined or u.text,
            words=refined_words(u.words, u.refined) if u.refined else u.words,
        )
        for u in utterances
        if u.words or u.refined or u.text
    ]
    chunks.sort(key=lambda chunk: (chunk.start, channel_sort_key(chunk.channel)))
    channels = tuple(sorted({chunk.channel for chunk in chunks}, key=channel_sort_key))
    return Transcript(
        chunks=tuple(chunks),
        channels=channels,
        speakers=speakers,
        language_code=most_probable_language((u.languages, len(u.words)) for u in utterances),
    )


def _refined_final(utterances: list[_Utterance], tag: str, index: int) -> _Utterance | None:
    same_channel = [u for u in utterances if u.tag == tag]
    for utterance in reversed(same_channel):
        if utterance.index == index:
            return utterance
    if same_channel and all(u.index is None for u in same_channel):
        return same_channel[-1]
    return None
