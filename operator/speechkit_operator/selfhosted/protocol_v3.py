"""SpeechKit's async API v3 as the service speaks it, as pure functions: no I/O, no clock, no globals.

The wire shapes are :mod:`speechkit_operator.contracts.stt_v3`'s; this module checks a request and
renders results with them:

* :func:`parse_recognize_file_request` checks a ``recognizeFileAsync`` body and returns the contract's
  option models (:class:`V3Submission`), or raises :class:`~.protocol.ApiError` 400 INVALID_ARGUMENT
  naming the first offending field, as :func:`~.protocol.parse_long_running_request` does for v2;
* :func:`resolve_language` turns ``languageRestriction`` into the language the engine is asked for;
* :func:`render_results` turns a recognition's chunks into getRecognition's ``StreamingResponse``
  messages (written with :func:`~speechkit_operator.contracts.stt_v3.encode_result`).

What is checked (400 INVALID_ARGUMENT, the message naming the field): exactly one of ``uri`` (http,
https or ``s3://bucket/key``, like v2's ``audio.uri``) and ``content`` (base64, within the service's
inline limit); ``recognitionModel`` and its ``audioFormat`` are required, with exactly one of
``containerAudio`` (``containerAudioType`` WAV, OGG_OPUS or MP3) and ``rawAudio`` (``audioEncoding``
LINEAR16_PCM, ``sampleRateHertz`` 8000, 16000 or 48000, ``audioChannelCount`` 1..8, default 1);
``model`` is ``general`` (the default), ``deferred-general``, or either with ``:rc`` or ``:deprecated``
(all served by the same engine); enums by name or number; int64 as numbers or strings; booleans as
booleans; a field given under both its JSON and proto names is refused. Unknown fields are ignored
(``audioProcessingType``, ``recognitionClassifier``, ``speechAnalysis``, ``summarization`` among them,
which this service does not implement). ``phoneFormattingMode`` is accepted and has no effect: the
engines do not format phone numbers.

Speaker labeling: the engines cannot tell speakers apart, so ``SPEAKER_LABELING_ENABLED`` is refused
with 400 INVALID_ARGUMENT saying so, never ignored. (UNIMPLEMENTED would be the gRPC code for "not
supported by this service", but its HTTP status, 501, is a 5xx that clients, this project's operator
among them, retry as transient: the request would be repeated for ever instead of failing once with a
reason.) On multichannel raw audio it is refused first for what SpeechKit refuses it for: speaker
labeling needs mono audio.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from pydantic import ValidationError

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.contracts.stt_v3 import (
    MAX_CHANNELS,
    MODELS,
    SUPPORTED_PCM_RATES,
    AlternativeUpdate,
    AlternativeV3,
    AudioCursors,
    ContainerAudioType,
    EouUpdate,
    FinalRefinement,
    LanguageEstimation,
    LanguageRestrictionOptions,
    LanguageRestrictionType,
    PhoneFormattingMode,
    RawAudioEncoding,
    RecognitionModelOptions,
    SpeakerLabeling,
    SpeakerLabelingOptions,
    StreamingResponse,
    TextNormalization,
    WordV3,
)
from speechkit_operator.models.recognition import Chunk
from speechkit_operator.selfhosted.protocol import (
    AUTO_LANGUAGE,
    RecognizedChunk,
    check_language,
    int64,
    invalid_argument,
    parse_content,
    parse_uri,
    shown,
)

#: The suffixes a model name may carry (``general:rc``, ``deferred-general:deprecated``); every variant
#: is served by the same engine.
MODEL_VERSIONS: Final = ("", ":rc", ":deprecated")
_BASE_MODELS: Final = tuple(model for model in MODELS if ":" not in model)
ACCEPTED_MODELS: Final = tuple(base + version for base in _BASE_MODELS for version in MODEL_VERSIONS)

_RESTRICTION = "recognitionModel.languageRestriction"
#: Container types -> the encoding the decoder is told (it reads the rate and channels from the bytes).
_CONTAINER_ENCODINGS: Final[Mapping[ContainerAudioType, AudioEncoding]] = {
    ContainerAudioType.WAV: AudioEncoding.LINEAR16_PCM,
    ContainerAudioType.OGG_OPUS: AudioEncoding.OGG_OPUS,
    ContainerAudioType.MP3: AudioEncoding.MP3,
}

_E = TypeVar("_E", bound=enum.Enum)


# --- Requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class V3Submission:
    """A valid ``recognizeFileAsync`` request: the contract's options and exactly one audio source."""

    options: RecognitionModelOptions
    speaker_labeling: SpeakerLabelingOptions | None = None
    uri: str | None = None
    content: bytes | None = None

    def __post_init__(self) -> None:
        if (self.uri is None) == (self.content is None):
            raise ValueError("exactly one of uri and content must be set")

    @property
    def decoder_encoding(self) -> AudioEncoding:
        audio = self.options.audio_format
        if audio.container_audio is not None:
            return _CONTAINER_ENCODINGS[audio.container_audio.container_audio_type]
        return AudioEncoding.LINEAR16_PCM

    @property
    def decoder_sample_rate(self) -> int | None:
        """Headerless PCM needs its rate; containers carry their own."""
        raw = self.options.audio_format.raw_audio
        return int(raw.sample_rate_hertz) if raw is not None else None

    @property
    def decoder_channel_count(self) -> int | None:
        raw = self.options.audio_format.raw_audio
        return int(raw.audio_channel_count) if raw is not None else None

    @property
    def normalization_enabled(self) -> bool:
        normalization = self.options.text_normalization
        return normalization is not None and normalization.text_normalization is TextNormalization.ENABLED

    @property
    def literature_text(self) -> bool:
        normalization = self.options.text_normalization
        return normalization is not None and normalization.literature_text

    @property
    def profanity_filter(self) -> bool:
        normalization = self.options.text_normalization
        return normalization is not None and normalization.profanity_filter

    def describe_audio(self) -> str:
        """``WAV`` or ``LINEAR16_PCM 16000 Hz x2``, for the log."""
        audio = self.options.audio_format
        if audio.container_audio is not None:
            return audio.container_audio.container_audio_type.value
        raw = audio.raw_audio
        assert raw is not None
        return f"{raw.audio_encoding.value} {raw.sample_rate_hertz} Hz x{raw.audio_channel_count}"


def parse_recognize_file_request(body: Mapping[str, Any], *, max_content_bytes: int) -> V3Submission:
    """Check a ``RecognizeFileRequest`` (see the module docstring); raises :class:`ApiError` 400
    INVALID_ARGUMENT naming the first offending field. ``content`` is decoded here."""
    uri_value = _field(body, "", "uri")
    content_value = _field(body, "", "content")
    if uri_value is not None and content_value is not None:
        raise invalid_argument("uri, content: set either uri or content, not both")
    uri: str | None = None
    content: bytes | None = None
    if content_value is not None:
        content = parse_content(content_value, max_content_bytes, field="content", uri_field="uri")
    elif uri_value is not None:
        if not isinstance(uri_value, str) or not uri_value.strip():
            raise invalid_argument("uri: expected a non-empty string")
        uri = parse_uri(uri_value.strip(), field="uri")
    else:
        raise invalid_argument("uri, content: one of uri and content (the audio) is required")

    model_options = _object(body, "", "recognition_model", required=True)
    assert model_options is not None
    path = "recognitionModel."
    canonical: dict[str, Any] = {"model": _model(_string(model_options, path, "model"))}
    canonical["audioFormat"] = _audio_format(model_options)

    normalization = _object(model_options, path, "text_normalization")
    if normalization is not None:
        where = f"{path}textNormalization."
        canonical["textNormalization"] = _without_none(
            {
                "textNormalization": _enum(
                    normalization, where, "text_normalization", TextNormalization, "TEXT_NORMALIZATION"
                ),
                "profanityFilter": _boolean(normalization, where, "profanity_filter"),
                "literatureText": _boolean(normalization, where, "literature_text"),
                "phoneFormattingMode": _enum(
                    normalization,
                    where,
                    "phone_formatting_mode",
                    PhoneFormattingMode,
                    "PHONE_FORMATTING_MODE",
                ),
            }
        )
    restriction = _object(model_options, path, "language_restriction")
    if restriction is not None:
        where = f"{_RESTRICTION}."
        canonical["languageRestriction"] = _without_none(
            {
                "restrictionType": _enum(
                    restriction,
                    where,
                    "restriction_type",
                    LanguageRestrictionType,
                    "LANGUAGE_RESTRICTION_TYPE",
                ),
                "languageCode": _language_codes(restriction, where),
            }
        )

    labeling = _object(body, "", "speaker_labeling")
    speaker_labeling: SpeakerLabelingOptions | None = None
    if labeling is not None:
        value = _enum(labeling, "speakerLabeling.", "speaker_labeling", SpeakerLabeling, "SPEAKER_LABELING")
        speaker_labeling = _validated(SpeakerLabelingOptions, _without_none({"speakerLabeling": value}))
    options = _validated(RecognitionModelOptions, canonical)
    if speaker_labeling is not None and speaker_labeling.speaker_labeling is SpeakerLabeling.ENABLED:
        raw = options.audio_format.raw_audio
        if raw is not None and raw.audio_channel_count > 1:
            raise invalid_argument(
                "speakerLabeling.speakerLabeling: speaker labeling works on mono audio only, "
                f"but recognitionModel.audioFormat.rawAudio.audioChannelCount is {raw.audio_channel_count}"
            )
        raise invalid_argument(
            "speakerLabeling.speakerLabeling: SPEAKER_LABELING_ENABLED is not supported by this service: "
            "its recognition engines cannot tell speakers apart. Send SPEAKER_LABELING_DISABLED (or leave "
            "speakerLabeling out), or use SpeechKit for speaker labeling"
        )
    return V3Submission(options=options, speaker_labeling=speaker_labeling, uri=uri, content=content)


def _audio_format(model_options: Mapping[str, Any]) -> dict[str, Any]:
    path = "recognitionModel.audioFormat"
    audio_format = _object(model_options, "recognitionModel.", "audio_format", required=True)
    assert audio_format is not None
    raw = _object(audio_format, f"{path}.", "raw_audio")
    container = _object(audio_format, f"{path}.", "container_audio")
    if raw is not None and container is not None:
        raise invalid_argument(f"{path}: set either rawAudio or containerAudio, not both")
    if container is not None:
        where = f"{path}.containerAudio."
        kind = _enum(container, where, "container_audio_type", ContainerAudioType, "CONTAINER_AUDIO_TYPE")
        if kind is None:
            raise invalid_argument(f"{where}containerAudioType: required; expected one of WAV, OGG_OPUS, MP3")
        return {"containerAudio": {"containerAudioType": kind}}
    if raw is None:
        raise invalid_argument(f"{path}: one of rawAudio and containerAudio is required")
    where = f"{path}.rawAudio."
    encoding = _enum(raw, where, "audio_encoding", RawAudioEncoding, "AUDIO_ENCODING")
    if encoding is None:
        raise invalid_argument(f"{where}audioEncoding: required; expected LINEAR16_PCM")
    rate = _int64(raw, where, "sample_rate_hertz")
    if rate is None or rate == 0:
        raise invalid_argument(
            f"{where}sampleRateHertz: required for raw audio; expected 8000, 16000 or 48000"
        )
    if rate not in SUPPORTED_PCM_RATES:
        raise invalid_argument(
            f"{where}sampleRateHertz: unsupported value {rate}; expected 8000, 16000 or 48000"
        )
    channels = _int64(raw, where, "audio_channel_count") or 1  # 0 is proto3's "not set"
    if not 1 <= channels <= MAX_CHANNELS:
        raise invalid_argument(
            f"{where}audioChannelCount: must be between 1 and {MAX_CHANNELS}, got {channels}"
        )
    return {"rawAudio": {"audioEncoding": encoding, "sampleRateHertz": rate, "audioChannelCount": channels}}


def _model(value: str | None) -> str:
    model = (value or "").strip() or "general"
    if model not in ACCEPTED_MODELS:
        raise invalid_argument(
            f"recognitionModel.model: unsupported model {shown(model)}; expected one of "
            f"{', '.join(ACCEPTED_MODELS)}"
        )
    return model


def _camel(proto_name: str) -> str:
    head, *rest = proto_name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _field(message: Mapping[str, Any], path: str, proto_name: str) -> Any:
    """A field under its JSON (lowerCamel) or proto name; None when absent or null (proto3: unset)."""
    json_name = _camel(proto_name)
    if json_name != proto_name and message.get(json_name) is not None and message.get(proto_name) is not None:
        raise invalid_argument(f"{path}{json_name}: given twice (as {json_name} and {proto_name})")
    value = message.get(json_name)
    return message.get(proto_name) if value is None else value


def _object(
    message: Mapping[str, Any], path: str, proto_name: str, *, required: bool = False
) -> Mapping[str, Any] | None:
    value = _field(message, path, proto_name)
    name = f"{path}{_camel(proto_name)}"
    if value is None:
        if required:
            raise invalid_argument(f"{name}: required field is missing")
        return None
    if not isinstance(value, Mapping):
        raise invalid_argument(f"{name}: expected an object, got {shown(value)}")
    return value


def _string(message: Mapping[str, Any], path: str, proto_name: str) -> str | None:
    value = _field(message, path, proto_name)
    if value is not None and not isinstance(value, str):
        raise invalid_argument(f"{path}{_camel(proto_name)}: expected a string, got {shown(value)}")
    return value


def _boolean(message: Mapping[str, Any], path: str, proto_name: str) -> bool | None:
    value = _field(message, path, proto_name)
    if value is not None and not isinstance(value, bool):
        raise invalid_argument(f"{path}{_camel(proto_name)}: expected true or false, got {shown(value)}")
    return value


def _int64(message: Mapping[str, Any], path: str, proto_name: str) -> int | None:
    """An int64: a JSON integer (or integral number) or a decimal string."""
    value = _field(message, path, proto_name)
    return None if value is None else int64(value, f"{path}{_camel(proto_name)}")


def _enum(message: Mapping[str, Any], path: str, proto_name: str, kind: type[_E], prefix: str) -> str | None:
    """An enum by name or number (proto3 JSON); None when unset or ``*_UNSPECIFIED`` (0), so that the
    contract's default applies."""
    value = _field(message, path, proto_name)
    if value is None:
        return None
    unspecified = f"{prefix}_UNSPECIFIED"
    names = [str(member.value) for member in kind]
    # The proto's numbering: UNSPECIFIED is 0, then the values in order.
    numbered = names if names[0] == unspecified else [unspecified, *names]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(numbered):
        value = numbered[value]
    if value == unspecified and unspecified not in names:
        return None
    if isinstance(value, str) and value in names:
        return value
    expected = ", ".join(name for name in names if name != unspecified)
    raise invalid_argument(
        f"{path}{_camel(proto_name)}: unsupported value {shown(value)}; expected one of {expected}"
    )


def _language_codes(message: Mapping[str, Any], path: str) -> list[str] | None:
    value = _field(message, path, "language_code")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(code, str) for code in value):
        raise invalid_argument(f"{path}languageCode: expected a list of strings")
    codes = [code.strip() for code in value]
    if not all(codes):
        raise invalid_argument(f"{path}languageCode: language codes must not be empty")
    return codes


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


_M = TypeVar("_M", RecognitionModelOptions, SpeakerLabelingOptions)


def _validated(model: type[_M], canonical: dict[str, Any]) -> _M:
    """The contract model of an already checked request part (a failure here is a gap in the checks
    above; it is still answered as INVALID_ARGUMENT naming the field)."""
    try:
        return model.model_validate(canonical)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        prefix = "recognitionModel" if model is RecognitionModelOptions else "speakerLabeling"
        raise invalid_argument(f"{prefix}.{where}: {error['msg']}") from None


# --- Languages ----------------------------------------------------------------------------------------


def resolve_language(restriction: LanguageRestrictionOptions | None, supported: Iterable[str]) -> str:
    """The language to recognise with, from ``languageRestriction`` and the engine's languages (``auto``
    among them when it detects the language):

    * no restriction, or a WHITELIST without languages: detection (``auto``);
    * a WHITELIST of one language: that language, which the engine must have;
    * a WHITELIST of several: the listed languages the engine has; of one left, that one; of several,
      detection (not confined to the list: the engines detect among all their languages), or, when the
      engine cannot detect, the first of them;
    * a BLACKLIST: the engine's languages without the listed ones; of one left, that one; else detection
      (again not confined: the excluded languages may still be detected).

    Detection with an engine that cannot detect is 400 INVALID_ARGUMENT asking for a WHITELIST.
    """
    languages = sorted(set(supported))
    by_lower = {language.lower(): language for language in languages}
    detects = AUTO_LANGUAGE in by_lower
    known = [language for language in languages if language.lower() != AUTO_LANGUAGE]
    listed = ", ".join(known) or "none"
    codes = list(restriction.language_code) if restriction is not None else []
    if restriction is not None and restriction.restriction_type is LanguageRestrictionType.BLACKLIST:
        excluded = {code.lower() for code in codes}
        left = [language for language in known if language.lower() not in excluded]
        if not left:
            raise invalid_argument(
                f"{_RESTRICTION}.languageCode: the BLACKLIST excludes every language of this service "
                f"({listed})"
            )
        if len(left) == 1:
            return left[0]
        return _detection(detects, listed, "a BLACKLIST leaves several languages to choose from")
    if not codes:
        return _detection(detects, listed, "no language is named")
    if len(codes) == 1:
        check_language(codes[0], languages, field=f"{_RESTRICTION}.languageCode")
        return by_lower[codes[0].lower()]
    present = [by_lower[code.lower()] for code in codes if code.lower() in by_lower]
    if not present:
        listed = ", ".join(shown(code) for code in codes[:8])
        raise invalid_argument(
            f"{_RESTRICTION}.languageCode: none of the languages {listed} is supported by this service; "
            f"supported: {', '.join(languages)}"
        )
    distinct = list(dict.fromkeys(present))
    if len(distinct) == 1 or not detects:
        return distinct[0]
    return AUTO_LANGUAGE


def _detection(detects: bool, listed: str, why: str) -> str:
    if detects:
        return AUTO_LANGUAGE
    raise invalid_argument(
        f"{_RESTRICTION}: {why}, and this service's engine cannot detect the language; name it with "
        f'{{"restrictionType": "WHITELIST", "languageCode": ["<code>"]}} (supported: {listed})'
    )


# --- Results --------------------------------------------------------------------------------------------


def v3_channel_tag(channel: str) -> str:
    """v3 numbers channels from "0", the chunks (as v2) from "1"."""
    return str(int(channel) - 1) if channel.isdigit() and int(channel) >= 1 else channel


def milliseconds(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def render_results(
    chunks: Iterable[Chunk], *, duration_seconds: float, wall_time_ms: int = 0
) -> list[StreamingResponse]:
    """getRecognition's messages: per utterance (ordered by start, then channel) a ``final``, then its
    ``finalRefinement`` when the chunk has a refinement (text normalization), then an ``eouUpdate``.

    ``channelTag`` counts from "0"; ``finalIndex`` and the alternatives' segment start (the end of the
    channel's previous utterance) run per channel; word times are milliseconds; ``receivedDataMs`` is
    the audio's duration; ``languages`` is set when the engine detected the language. Utterances with
    neither text nor words are left out: nothing recognised gives no messages at all."""
    kept = [chunk for chunk in chunks if chunk.text or chunk.words]
    kept.sort(key=lambda chunk: (chunk.start, _channel_order(chunk.channel)))
    received = max([milliseconds(duration_seconds), *(milliseconds(chunk.end) for chunk in kept)])
    indexes: dict[str, int] = {}
    segment_starts: dict[str, int] = {}
    messages: list[StreamingResponse] = []
    for chunk in kept:
        tag = v3_channel_tag(chunk.channel)
        index = indexes.get(tag, -1) + 1
        indexes[tag] = index
        start_ms = segment_starts.get(tag, 0)
        end_ms = max(start_ms, milliseconds(chunk.end))
        segment_starts[tag] = end_ms
        languages: list[LanguageEstimation] = []
        refinement: Chunk | None = None
        if isinstance(chunk, RecognizedChunk):
            refinement = chunk.refinement
            if chunk.language_code:
                probability = chunk.language_probability if chunk.language_probability is not None else 0.0
                languages = [LanguageEstimation(language_code=chunk.language_code, probability=probability)]
        cursors = AudioCursors(
            received_data_ms=received, partial_time_ms=end_ms, final_time_ms=end_ms, final_index=index
        )
        common: dict[str, Any] = {"response_wall_time_ms": wall_time_ms, "channel_tag": tag}
        final = AlternativeUpdate(
            alternatives=[_alternative(chunk, start_ms, end_ms, languages)], channel_tag=tag
        )
        messages.append(StreamingResponse(audio_cursors=cursors, final=final, **common))
        if refinement is not None:
            normalized = AlternativeUpdate(
                alternatives=[_alternative(refinement, start_ms, end_ms, languages)], channel_tag=tag
            )
            refined = FinalRefinement(final_index=index, normalized_text=normalized)
            messages.append(StreamingResponse(audio_cursors=cursors, final_refinement=refined, **common))
        eou = EouUpdate(time_ms=end_ms)
        at_eou = cursors.model_copy(update={"eou_time_ms": end_ms})
        messages.append(StreamingResponse(audio_cursors=at_eou, eou_update=eou, **common))
    return messages


def _alternative(
    chunk: Chunk, start_ms: int, end_ms: int, languages: Sequence[LanguageEstimation]
) -> AlternativeV3:
    words = [
        WordV3(
            text=word.text,
            start_time_ms=milliseconds(word.start),
            end_time_ms=max(milliseconds(word.start), milliseconds(word.end)),
        )
        for word in chunk.words
    ]
    text = chunk.text or " ".join(word.text for word in chunk.words if word.text)
    return AlternativeV3(
        words=words, text=text, start_time_ms=start_ms, end_time_ms=end_ms, languages=list(languages)
    )


def _channel_order(tag: str) -> tuple[int, str]:
    return (int(tag), tag) if tag.isdigit() else (1 << 30, tag)
