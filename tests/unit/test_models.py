"""TranscriptionJobSpec, JobStatus, Phase and AudioInfo: defaults, aliases and validation."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.models.audio import AudioInfo, ContainerFormat
from speechkit_operator.models.job import (
    ALL_FORMATS,
    Condition,
    JobStatus,
    OutputFormat,
    Phase,
    TranscriptionJobSpec,
)


def spec(**overrides: Any) -> dict[str, Any]:
    """A minimal valid spec body as a user writes it (camelCase), with top-level overrides."""
    body: dict[str, Any] = {"source": {"bucket": "calls", "key": "incoming/a.wav"}}
    body.update(overrides)
    return body


def with_recognition(**fields: Any) -> dict[str, Any]:
    return spec(recognition=fields)


def with_source(**fields: Any) -> dict[str, Any]:
    return spec(source={"bucket": "calls", "key": "incoming/a.wav", **fields})


def invalid_locations(body: dict[str, Any]) -> list[tuple[str | int, ...]]:
    with pytest.raises(ValidationError) as caught:
        TranscriptionJobSpec.model_validate(body)
    return [error["loc"] for error in caught.value.errors()]


# --- defaults ------------------------------------------------------------------------------------


def test_defaults_of_a_minimal_spec() -> None:
    job = TranscriptionJobSpec.model_validate(spec())

    assert job.source.bucket == "calls"
    assert job.source.key == "incoming/a.wav"
    assert job.output.bucket is None
    assert job.output.prefix == "out/"
    assert job.output.formats == [OutputFormat.JSON, OutputFormat.TXT, OutputFormat.SRT, OutputFormat.VTT]
    assert job.recognition.language_code == "ru-RU"
    assert job.recognition.model == "general"
    assert job.recognition.profanity_filter is False
    assert job.recognition.literature_text is False
    assert job.recognition.raw_results is False
    assert job.recognition.audio_encoding is None
    assert job.recognition.sample_rate_hertz is None
    assert job.recognition.audio_channel_count is None
    assert job.credentials_secret is None
    assert job.storage_secret is None


def test_default_formats_are_independent_lists() -> None:
    first = TranscriptionJobSpec.model_validate(spec())
    second = TranscriptionJobSpec.model_validate(spec())

    first.output.formats.append(OutputFormat.JSON)

    assert second.output.formats == list(ALL_FORMATS)


# --- aliases -------------------------------------------------------------------------------------


def test_camel_case_fields_are_read() -> None:
    job = TranscriptionJobSpec.model_validate(
        spec(
            output={"bucket": "transcripts", "prefix": "done/", "formats": ["txt", "srt"]},
            recognition={
                "languageCode": "en-US",
                "model": "deferred-general",
                "profanityFilter": True,
                "literatureText": True,
                "rawResults": True,
                "audioEncoding": "LINEAR16_PCM",
                "sampleRateHertz": 16000,
                "audioChannelCount": 2,
            },
            credentialsSecret="speech-creds",
            storageSecret="s3-keys",
        )
    )

    assert job.output.bucket == "transcripts"
    assert job.output.prefix == "done/"
    assert job.output.formats == [OutputFormat.TXT, OutputFormat.SRT]
    assert job.recognition.language_code == "en-US"
    assert job.recognition.model == "deferred-general"
    assert job.recognition.profanity_filter is True
    assert job.recognition.literature_text is True
    assert job.recognition.raw_results is True
    assert job.recognition.audio_encoding is AudioEncoding.LINEAR16_PCM
    assert job.recognition.sample_rate_hertz == 16000
    assert job.recognition.audio_channel_count == 2
    assert job.credentials_secret == "speech-creds"
    assert job.storage_secret == "s3-keys"


def test_dump_by_alias_is_camel_case() -> None:
    job = TranscriptionJobSpec.model_validate(spec(credentialsSecret="creds"))

    dumped = job.model_dump(by_alias=True)

    assert dumped["credentialsSecret"] == "creds"
    assert dumped["recognition"]["languageCode"] == "ru-RU"
    assert "language_code" not in dumped["recognition"]


# --- output bucket -------------------------------------------------------------------------------


def test_output_bucket_falls_back_to_source_bucket() -> None:
    job = TranscriptionJobSpec.model_validate(spec())

    assert job.output_bucket == "calls"


def test_output_bucket_when_given() -> None:
    job = TranscriptionJobSpec.model_validate(spec(output={"bucket": "transcripts"}))

    assert job.output_bucket == "transcripts"


def test_duplicate_formats_collapse_keeping_first_order() -> None:
    job = TranscriptionJobSpec.model_validate(spec(output={"formats": ["srt", "json", "srt", "json", "txt"]}))

    assert job.output.formats == [OutputFormat.SRT, OutputFormat.JSON, OutputFormat.TXT]


def test_empty_prefix_is_allowed() -> None:
    job = TranscriptionJobSpec.model_validate(spec(output={"prefix": ""}))

    assert job.output.prefix == ""


# --- rejections ----------------------------------------------------------------------------------


def test_missing_source_key_is_rejected() -> None:
    assert invalid_locations({"source": {"bucket": "calls"}}) == [("source", "key")]


def test_missing_source_is_rejected() -> None:
    assert invalid_locations({}) == [("source",)]


@pytest.mark.parametrize(
    "bucket",
    [
        "Calls",  # uppercase
        "CALLS",
        "ab",  # too short
        "a",
        ".calls",  # leading dot
        "calls.",  # trailing dot
        "-calls",
        "calls_2024",  # underscore
        "a" * 64,  # too long
        "",
    ],
)
def test_bad_bucket_names_are_rejected(bucket: str) -> None:
    assert invalid_locations(with_source(bucket=bucket)) == [("source", "bucket")]


@pytest.mark.parametrize("bucket", ["abc", "calls-2024", "my.calls.bucket", "a" * 63])
def test_good_bucket_names_are_accepted(bucket: str) -> None:
    assert TranscriptionJobSpec.model_validate(with_source(bucket=bucket)).source.bucket == bucket


def test_bad_output_bucket_is_rejected() -> None:
    assert invalid_locations(spec(output={"bucket": "Transcripts"})) == [("output", "bucket")]


@pytest.mark.parametrize(
    "key",
    [
        "/incoming/a.wav",  # leading slash
        "incoming/\x00a.wav",
        "incoming/a\n.wav",
        "incoming/a.wav\n",
        "\tincoming/a.wav",
        "incoming/\x1fa.wav",
        "",
        "k" * 1025,
    ],
)
def test_bad_source_keys_are_rejected(key: str) -> None:
    assert invalid_locations(with_source(key=key)) == [("source", "key")]


@pytest.mark.parametrize("key", ["a.wav", "incoming/2024 calls/a b.wav", "звонки/запись.ogg", "k" * 1024])
def test_good_source_keys_are_accepted(key: str) -> None:
    assert TranscriptionJobSpec.model_validate(with_source(key=key)).source.key == key


@pytest.mark.parametrize("prefix", ["/out/", "out\n/"])
def test_bad_output_prefixes_are_rejected(prefix: str) -> None:
    assert invalid_locations(spec(output={"prefix": prefix})) == [("output", "prefix")]


@pytest.mark.parametrize("code", ["ru", "RU-ru", "ru-ru", "russian", "ru_RU", "ru-RUS", "", "AUTO", "ru-RU "])
def test_bad_language_codes_are_rejected(code: str) -> None:
    assert invalid_locations(with_recognition(languageCode=code)) == [("recognition", "languageCode")]


@pytest.mark.parametrize("code", ["ru-RU", "en-US", "kk-KZ", "auto", "fil-PH"])
def test_good_language_codes_are_accepted(code: str) -> None:
    job = TranscriptionJobSpec.model_validate(with_recognition(languageCode=code))

    assert job.recognition.language_code == code


def test_unknown_format_is_rejected() -> None:
    locations = invalid_locations(spec(output={"formats": ["json", "docx"]}))

    assert locations == [("output", "formats", 1)]


def test_empty_formats_are_rejected() -> None:
    assert invalid_locations(spec(output={"formats": []})) == [("output", "formats")]


@pytest.mark.parametrize("rate", [44100, 22050, 0])
def test_unsupported_sample_rates_are_rejected(rate: int) -> None:
    assert invalid_locations(with_recognition(sampleRateHertz=rate)) == [("recognition", "sampleRateHertz")]


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_supported_sample_rates_are_accepted(rate: int) -> None:
    job = TranscriptionJobSpec.model_validate(with_recognition(sampleRateHertz=rate))

    assert job.recognition.sample_rate_hertz == rate


@pytest.mark.parametrize("channels", [0, 9, -1])
def test_channel_counts_out_of_range_are_rejected(channels: int) -> None:
    locations = invalid_locations(with_recognition(audioChannelCount=channels))

    assert locations == [("recognition", "audioChannelCount")]


@pytest.mark.parametrize("channels", [1, 8])
def test_channel_counts_at_the_bounds_are_accepted(channels: int) -> None:
    job = TranscriptionJobSpec.model_validate(with_recognition(audioChannelCount=channels))

    assert job.recognition.audio_channel_count == channels


def test_unknown_encoding_is_rejected() -> None:
    locations = invalid_locations(with_recognition(audioEncoding="FLAC"))

    assert locations == [("recognition", "audioEncoding")]


@pytest.mark.parametrize(
    ("body", "location"),
    [
        (spec(importance=1), ("importance",)),
        (with_source(region="ru-central1"), ("source", "region")),
        (spec(output={"compress": True}), ("output", "compress")),
        (with_recognition(speakerLabels=True), ("recognition", "speakerLabels")),
    ],
)
def test_unknown_fields_are_rejected(body: dict[str, Any], location: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        TranscriptionJobSpec.model_validate(body)

    errors = caught.value.errors()
    assert [error["loc"] for error in errors] == [location]
    assert errors[0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("name", ["Creds", "creds_1", "-creds", "creds-"])
def test_bad_secret_names_are_rejected(name: str) -> None:
    assert invalid_locations(spec(credentialsSecret=name)) == [("credentialsSecret",)]


def test_spec_is_frozen() -> None:
    job = TranscriptionJobSpec.model_validate(spec())

    with pytest.raises(ValidationError):
        job.source.bucket = "other"  # type: ignore[misc]


# --- JobStatus -----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, {}])
def test_status_from_empty_body(body: dict[str, Any] | None) -> None:
    status = JobStatus.from_body(body)

    assert status.phase is None
    assert status.operation_id is None
    assert status.submitted_at is None
    assert status.next_check_at is None
    assert status.checks == 0
    assert status.conditions == []
    assert status.outputs is None
    assert status.observed_generation is None


def test_status_from_body_reads_camel_case_and_ignores_unknown_fields() -> None:
    body = {
        "phase": "Running",
        "operationId": "op-1",
        "submittedAt": "2026-01-01T00:00:00.000Z",
        "nextCheckAt": "2026-01-01T00:00:10.000Z",
        "checks": 3,
        "audio": {"encoding": "MP3"},
        "observedGeneration": 2,
        "preview": "written by a newer operator",
        "somethingElse": {"nested": True},
        "conditions": [
            {
                "type": "Submitted",
                "status": "True",
                "reason": "Submitted",
                "message": "ok",
                "lastTransitionTime": "2026-01-01T00:00:00.000Z",
                "observedGeneration": 2,
                "futureField": "x",
            }
        ],
    }

    status = JobStatus.from_body(body)

    assert status.phase is Phase.RUNNING
    assert status.operation_id == "op-1"
    assert status.submitted_at == "2026-01-01T00:00:00.000Z"
    assert status.next_check_at == "2026-01-01T00:00:10.000Z"
    assert status.checks == 3
    assert status.audio == {"encoding": "MP3"}
    assert status.observed_generation == 2
    assert status.conditions == [
        Condition(
            type="Submitted",
            status="True",
            reason="Submitted",
            message="ok",
            last_transition_time="2026-01-01T00:00:00.000Z",
            observed_generation=2,
        )
    ]


def test_status_from_body_does_not_keep_a_reference_to_the_body() -> None:
    body: dict[str, Any] = {"phase": "Pending"}

    status = JobStatus.from_body(body)
    body["phase"] = "Failed"

    assert status.phase is Phase.PENDING


def test_status_with_unknown_phase_is_rejected() -> None:
    with pytest.raises(ValidationError):
        JobStatus.from_body({"phase": "Exploded"})


# --- Phase ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "terminal"),
    [
        (Phase.PENDING, False),
        (Phase.QUEUED, False),
        (Phase.RUNNING, False),
        (Phase.SUCCEEDED, True),
        (Phase.FAILED, True),
    ],
)
def test_phase_terminal(phase: Phase, terminal: bool) -> None:
    assert phase.terminal is terminal


def test_phase_values_match_the_crd() -> None:
    assert [phase.value for phase in Phase] == ["Pending", "Queued", "Running", "Succeeded", "Failed"]


# --- AudioInfo -----------------------------------------------------------------------------------


def test_audio_info_to_status_is_camel_case_without_container() -> None:
    info = AudioInfo(
        encoding=AudioEncoding.LINEAR16_PCM,
        container=ContainerFormat.WAV,
        sample_rate_hertz=16000,
        channels=2,
        duration_seconds=12.5,
        size_bytes=400_044,
    )

    assert info.to_status() == {
        "encoding": "LINEAR16_PCM",
        "sampleRateHertz": 16000,
        "channels": 2,
        "durationSeconds": 12.5,
        "sizeBytes": 400_044,
    }


def test_audio_info_to_status_drops_none() -> None:
    info = AudioInfo(encoding=AudioEncoding.MP3, container=ContainerFormat.MP3)

    assert info.to_status() == {"encoding": "MP3", "channels": 1}


def test_audio_info_accepts_aliases() -> None:
    info = AudioInfo.model_validate(
        {"encoding": "OGG_OPUS", "container": "ogg", "sampleRateHertz": 48000, "durationSeconds": 3.0}
    )

    assert info.sample_rate_hertz == 48000
    assert info.duration_seconds == 3.0
    assert info.container is ContainerFormat.OGG
