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
    channel: str
    words: tuple[Word, ...]
    text: str
    languages: dict[str, float]


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


def parse_v3_results(results: Iterable[StreamingResponse], *, speakers: bool = False) -> Transcript:
    """The transcript of getRecognition's ``results``; ``speakers`` when speaker labeling was asked for."""
    utterances: dict[tuple[str, int], _Utterance] = {}
    refinements: dict[tuple[str, int], str] = {}
    for result in results:
        tag = result.channel_tag or "0"
        index = result.audio_cursors.final_index
        if result.final is not None and result.final.alternatives:
            best = result.final.alternatives[0]
            words = _words(best)
            text = best.text or " ".join(word.text for word in words if word.text)
            languages = {language.language_code: language.probability for language in best.languages}
            utterances[(tag, index)] = _Utterance(transcript_tag(tag), words, text, languages)
        elif result.final_refinement is not None and result.final_refinement.normalized_text is not None:
            alternatives = result.final_refinement.normalized_text.alternatives
            if alternatives and alternatives[0].text:
                key = (tag, result.final_refinement.final_index)
                refinements[key] = alternatives[0].text
                for language in alternatives[0].languages:
                    if key in utterances:
                        utterances[key].languages.setdefault(language.language_code, language.probability)
    chunks = [
        Chunk(channel=utterance.channel, text=refinements.get(key, utterance.text), words=utterance.words)
        for key, utterance in utterances.items()
        if utterance.words or refinements.get(key, utterance.text)
    ]
    chunks.sort(key=lambda chunk: (chunk.start, channel_sort_key(chunk.channel)))
    channels = tuple(sorted({chunk.channel for chunk in chunks}, key=channel_sort_key))
    return Transcript(
        chunks=tuple(chunks),
        channels=channels,
        speakers=speakers,
        language_code=most_probable_language((u.languages, len(u.words)) for u in utterances.values()),
    )
