"""TranscriptionBatchSpec, child_job_spec and BatchStatus: defaults, aliases, validation."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from speechkit_operator.models.batch import (
    DEFAULT_EXTENSIONS,
    BatchPhase,
    BatchStatus,
    ScanProgress,
    TranscriptionBatchSpec,
    child_job_spec,
)
from speechkit_operator.models.job import OutputFormat, TranscriptionJobSpec


def batch(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": {"bucket": "calls", "prefix": "input/"}}
    body.update(overrides)
    return body


def with_source(**fields: Any) -> dict[str, Any]:
    return batch(source={"bucket": "calls", **fields})


def invalid_locations(body: dict[str, Any]) -> list[tuple[str | int, ...]]:
    with pytest.raises(ValidationError) as caught:
        TranscriptionBatchSpec.model_validate(body)
    return [error["loc"] for error in caught.value.errors()]


# --- defaults and aliases ------------------------------------------------------------------------


def test_defaults_of_a_minimal_spec() -> None:
    spec = TranscriptionBatchSpec.model_validate({"source": {"bucket": "calls"}})
    assert spec.source.prefix == ""
    assert spec.source.include == []
    assert spec.source.exclude == []
    assert spec.source.extensions == [".wav", ".ogg", ".opus", ".mp3"] == list(DEFAULT_EXTENSIONS)
    assert spec.source.seed_log is None
    assert spec.source.seed_output is None
    assert spec.source.effective_seed_output is None
    assert spec.template.output.prefix == "out/"
    assert spec.template.recognition.language_code == "ru-RU"
    assert not spec.template.language_is_explicit
    assert spec.rescan_interval is None
    assert spec.run_once
    assert spec.max_in_flight == 1000
    assert spec.max_attempts == 3
    assert spec.priority == 0
    assert spec.output_bucket == "calls"


def test_camel_case_fields_are_read() -> None:
    spec = TranscriptionBatchSpec.model_validate(
        {
            "source": {"bucket": "calls", "prefix": "input", "seedLog": "log", "seedOutput": "out"},
            "template": {
                "output": {"bucket": "texts", "prefix": "t/", "formats": ["txt"]},
                "recognition": {"languageCode": "en-US", "model": "deferred-general"},
                "credentialsSecret": "speech",
                "storageSecret": "s3",
                "activeDeadlineSeconds": 3600,
                "ttlSecondsAfterFinished": 60,
            },
            "rescanInterval": 300,
            "maxInFlight": 50,
            "maxAttempts": 5,
            "priority": -3,
        }
    )
    assert spec.source.seed_log == "log"
    assert spec.source.seed_output == "out"
    assert spec.template.output.formats == [OutputFormat.TXT]
    assert spec.template.language_is_explicit
    assert spec.template.credentials_secret == "speech"
    assert spec.template.storage_secret == "s3"
    assert spec.template.active_deadline_seconds == 3600
    assert spec.template.ttl_seconds_after_finished == 60
    assert (spec.rescan_interval, spec.max_in_flight, spec.max_attempts, spec.priority) == (300, 50, 5, -3)
    assert not spec.run_once
    assert spec.output_bucket == "texts"


@pytest.mark.parametrize(
    ("prefix", "seed_log", "seed_output", "effective"),
    [
        ("", "log/", None, "out/"),
        ("input/", "log/", None, "out/"),
        ("input", "log", None, "out"),  # the seed's own style: "out" + "/a.wav" + ".json"
        ("input", "log", "results", "results"),
        ("input", None, "results", "results"),
        ("input", None, None, None),
    ],
)
def test_effective_seed_output(
    prefix: str, seed_log: str | None, seed_output: str | None, effective: str | None
) -> None:
    fields: dict[str, Any] = {"prefix": prefix}
    if seed_log is not None:
        fields["seedLog"] = seed_log
    if seed_output is not None:
        fields["seedOutput"] = seed_output
    spec = TranscriptionBatchSpec.model_validate(with_source(**fields))
    assert spec.source.effective_seed_output == effective


def test_duplicate_extensions_are_dropped() -> None:
    spec = TranscriptionBatchSpec.model_validate(with_source(extensions=[".wav", ".WAV", ".wav"]))
    assert spec.source.extensions == [".wav", ".WAV"]


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "location"),
    [
        (with_source(bucket="Bad_Bucket"), ("source", "bucket")),
        (with_source(prefix="/abs/"), ("source", "prefix")),
        (with_source(prefix="a" * 513), ("source", "prefix")),
        (with_source(prefix="a/../b/"), ("source", "prefix")),
        (with_source(include=["/a.wav"]), ("source", "include", 0)),
        (with_source(include=[""]), ("source", "include", 0)),
        (with_source(include=["a" * 257]), ("source", "include", 0)),
        (with_source(include=["*.wav"] * 65), ("source", "include")),
        (with_source(exclude=["x\x01"]), ("source", "exclude", 0)),
        (with_source(extensions=[]), ("source", "extensions")),
        (with_source(extensions=["wav"]), ("source", "extensions", 0)),
        (with_source(extensions=[".w v"]), ("source", "extensions", 0)),
        (with_source(extensions=["." + "a" * 32]), ("source", "extensions", 0)),
        (with_source(extensions=[f".e{i}" for i in range(33)]), ("source", "extensions")),
        (with_source(seedLog=""), ("source", "seedLog")),
        (with_source(seedLog="../log/"), ("source", "seedLog")),
        (with_source(seedOutput="/out"), ("source", "seedOutput")),
        (with_source(unknown=1), ("source", "unknown")),
        (batch(template={"source": {"bucket": "calls", "key": "a.wav"}}), ("template", "source")),
        (batch(template={"priority": 3}), ("template", "priority")),
        (
            batch(template={"recognition": {"languageCode": "russian"}}),
            ("template", "recognition", "languageCode"),
        ),
        (batch(template={"output": {"formats": []}}), ("template", "output", "formats")),
        (batch(template={"credentialsSecret": "Not_A_Name"}), ("template", "credentialsSecret")),
        (batch(template={"activeDeadlineSeconds": 0}), ("template", "activeDeadlineSeconds")),
        (batch(rescanInterval=29), ("rescanInterval",)),
        (batch(rescanInterval=366 * 24 * 3600 + 1), ("rescanInterval",)),
        (batch(maxInFlight=0), ("maxInFlight",)),
        (batch(maxInFlight=100_001), ("maxInFlight",)),
        (batch(maxAttempts=0), ("maxAttempts",)),
        (batch(maxAttempts=21), ("maxAttempts",)),
        (batch(priority=1001), ("priority",)),
        (batch(unknown=True), ("unknown",)),
        ({"template": {}}, ("source",)),
    ],
)
def test_invalid_specs_name_the_field(body: dict[str, Any], location: tuple[str | int, ...]) -> None:
    assert location in invalid_locations(body)


@pytest.mark.parametrize("glob", ["[z-a].wav", "calls/[9-0]*/**"])
def test_globs_with_empty_ranges_are_refused(glob: str) -> None:
    with pytest.raises(ValidationError, match="is empty"):
        TranscriptionBatchSpec.model_validate(with_source(include=[glob]))


def test_glob_lists_hold_at_most_32_globs() -> None:
    TranscriptionBatchSpec.model_validate(with_source(include=["*.wav"] * 32, exclude=["x/**"] * 32))
    for field in ("include", "exclude"):
        assert ("source", field) in invalid_locations(with_source(**{field: ["*.wav"] * 33}))


@pytest.mark.parametrize(
    "glob",
    [
        "/".join(["*"] * 16),  # 16 segments
        "a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/*.wav",
        "**/x/**",
        "**/archive/old/**",  # two segments between two **
        "2024/**/archive/old/**/*.wav",
        "**/**",
        "a**b/**/c**d",  # ** inside a segment is *
        "x" * 256,
    ],
)
def test_globs_within_the_bounds_are_taken(glob: str) -> None:
    spec = TranscriptionBatchSpec.model_validate(with_source(include=[glob], exclude=[glob]))
    assert spec.source.include == [glob]


@pytest.mark.parametrize(
    ("glob", "message"),
    [
        ("/".join(["*"] * 17), "has 17 segments, more than the 16"),
        ("a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/*.wav", "has 17 segments, more than the 16"),
        ("**/a/**/b/**", "has 3 ** segments, more than the 2"),
        ("**/**/**", "has 3 ** segments, more than the 2"),
        ("**/a/b/c/**", "has 3 segments between its two **, more than the 2"),
        ("x/**/a/*/b/**/y", "has 3 segments between its two **, more than the 2"),
        # The review's hostile spec: 64 globs of 62 "*a*" segments after a "**".
        ("/".join(["**", *["*a*"] * 62, "x0"]), "has 64 segments, more than the 16"),
    ],
)
def test_globs_beyond_the_bounds_are_refused_with_the_bound(glob: str, message: str) -> None:
    for field in ("include", "exclude"):
        with pytest.raises(ValidationError, match=re.escape(message)):
            TranscriptionBatchSpec.model_validate(with_source(**{field: [glob]}))


@pytest.mark.parametrize(
    ("prefix", "seed_log", "seed_output", "refused"),
    [
        # The seed's own variables (S3_PREFIX=input, S3_PREFIX_LOG=log, S3_PREFIX_OUT=out), folders
        # on both sides, the whole bucket with folders: the markers are log/a.wav.json.
        ("input", "log", "out", None),
        ("input/", "log/", "out/", None),
        ("", "log/", "out/", None),
        ("calls/in", "seed/log", None, None),
        ("input", None, "out", None),
        # Mixed: looked for at loga.wav.json, log//a.wav.json, outa.wav.json.
        ("input/", "log", None, "seedLog 'log' and prefix 'input/' disagree about the trailing slash"),
        ("input", "log/", None, "seedLog 'log/' and prefix 'input' disagree about the trailing slash"),
        ("", "log", None, "seedLog 'log' and prefix '' disagree about the trailing slash"),
        ("input/", "log/", "out", "seedOutput 'out' and prefix 'input/' disagree"),
        ("input", None, "out/", "seedOutput 'out/' and prefix 'input' disagree"),
    ],
)
def test_seed_prefixes_end_with_a_slash_exactly_when_the_source_prefix_does(
    prefix: str, seed_log: str | None, seed_output: str | None, refused: str | None
) -> None:
    fields: dict[str, Any] = {"prefix": prefix}
    if seed_log is not None:
        fields["seedLog"] = seed_log
    if seed_output is not None:
        fields["seedOutput"] = seed_output
    if refused is None:
        TranscriptionBatchSpec.model_validate(with_source(**fields))
        return
    with pytest.raises(ValidationError, match=re.escape(refused)):
        TranscriptionBatchSpec.model_validate(with_source(**fields))


def test_the_slash_message_says_where_the_marker_would_be_looked_for_and_what_to_write() -> None:
    with pytest.raises(ValidationError) as mixed:
        TranscriptionBatchSpec.model_validate(with_source(prefix="input/", seedLog="log"))
    message = str(mixed.value)
    assert (
        "the marker of input/a.wav would be looked for at 'loga.wav.json', not at 'log/a.wav.json'" in message
    )
    assert "(prefix: input/, seedLog: log/)" in message
    assert "(prefix: input, seedLog: log)" in message
    with pytest.raises(ValidationError) as doubled:
        TranscriptionBatchSpec.model_validate(with_source(prefix="input", seedOutput="out/"))
    assert "the result of input/a.wav would be looked for at 'out//a.wav.json'" in str(doubled.value)
    with pytest.raises(ValidationError) as root:
        TranscriptionBatchSpec.model_validate(with_source(prefix="", seedLog="log"))
    assert "with the empty prefix, end seedLog with a slash (seedLog: log/)" in str(root.value)


@pytest.mark.parametrize("extension", [".json", ".TXT", ".srt", ".Vtt"])
def test_transcript_extensions_are_refused(extension: str) -> None:
    with pytest.raises(ValidationError, match="would transcribe its own outputs"):
        TranscriptionBatchSpec.model_validate(with_source(extensions=[".wav", extension]))


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"prefix": "log/input/", "seedLog": "log/"}, "seedLog"),
        ({"prefix": "", "seedLog": "l/"}, None),  # "" starts with nothing but ""
        ({"prefix": "input/", "seedLog": "input"}, "seedLog"),
        ({"prefix": "input/", "seedOutput": "input/"}, "seedOutput"),
        ({"prefix": "input/", "seedLog": "input/log/"}, None),  # inside the source: its keys are left out
    ],
)
def test_seed_prefixes_must_not_cover_the_source(fields: dict[str, str], name: str | None) -> None:
    if name is None:
        TranscriptionBatchSpec.model_validate(with_source(**fields))
        return
    with pytest.raises(ValidationError, match=f"{name} .* covers the whole source prefix"):
        TranscriptionBatchSpec.model_validate(with_source(**fields))


def test_the_spec_is_frozen() -> None:
    spec = TranscriptionBatchSpec.model_validate(batch())
    with pytest.raises(ValidationError):
        spec.max_in_flight = 5  # type: ignore[misc]


# --- child_job_spec ------------------------------------------------------------------------------


def test_child_spec_is_the_template_with_source_and_priority() -> None:
    spec = TranscriptionBatchSpec.model_validate(
        batch(
            template={
                "output": {"bucket": "texts", "prefix": "t/", "formats": ["json", "srt"]},
                "recognition": {"model": "deferred-general", "profanityFilter": True},
                "credentialsSecret": "speech",
                "storageSecret": "s3",
                "activeDeadlineSeconds": 7200,
                "ttlSecondsAfterFinished": 0,
            },
            priority=7,
        )
    )
    child = child_job_spec(spec, "input/a.wav")
    assert child == {
        "source": {"bucket": "calls", "key": "input/a.wav"},
        "output": {"bucket": "texts", "prefix": "t/", "formats": ["json", "srt"]},
        "recognition": {
            "languageCode": "ru-RU",
            "model": "deferred-general",
            "profanityFilter": True,
            "literatureText": False,
            "rawResults": False,
            "api": "v2",
        },
        "credentialsSecret": "speech",
        "storageSecret": "s3",
        "priority": 7,
        "activeDeadlineSeconds": 7200,
        "ttlSecondsAfterFinished": 0,
    }
    # What the API takes, and what a job reads back the same.
    job = TranscriptionJobSpec.model_validate(child)
    assert job.model_dump(by_alias=True, exclude_none=True, mode="json") == child


def test_child_spec_of_a_minimal_batch_leaves_absent_fields_out() -> None:
    child = child_job_spec(TranscriptionBatchSpec.model_validate({"source": {"bucket": "calls"}}), "a.wav")
    assert set(child) == {"source", "output", "recognition", "priority"}
    assert "bucket" not in child["output"]  # the source bucket, as for a job


@pytest.mark.parametrize(
    ("recognition", "override", "language"),
    [
        ({}, "en-US", "en-US"),  # the template says nothing: config.json decides
        ({"model": "general"}, "en-US", "en-US"),
        ({}, None, "ru-RU"),  # no config.json: the default
        ({"languageCode": "kk-KZ"}, "en-US", "kk-KZ"),  # the template's explicit choice wins
        ({"languageCode": "ru-RU"}, "en-US", "ru-RU"),  # even when it is the default value
        ({"languageCode": "auto"}, None, "auto"),
    ],
)
def test_config_language_overrides_only_an_absent_template_language(
    recognition: dict[str, Any], override: str | None, language: str
) -> None:
    spec = TranscriptionBatchSpec.model_validate(batch(template={"recognition": recognition}))
    assert child_job_spec(spec, "input/a.wav", override)["recognition"]["languageCode"] == language


def test_child_spec_refuses_what_a_job_refuses() -> None:
    spec = TranscriptionBatchSpec.model_validate(batch())
    with pytest.raises(ValueError, match=r"must not contain \. or \.\. path segments"):
        child_job_spec(spec, "input/../secret.wav")
    with pytest.raises(ValueError, match="languageCode"):
        child_job_spec(spec, "input/a.wav", "english")


# --- status --------------------------------------------------------------------------------------


def test_status_is_read_back_leniently() -> None:
    status = BatchStatus.from_body(
        {
            "phase": "Running",
            "counts": {"discovered": 5, "succeeded": 2, "future": 1},
            "scan": {"number": 2, "after": "input/b.wav", "matched": 2, "startedAt": "2024-05-01T10:00:00Z"},
            "passes": 1,
            "failures": [{"key": "input/c.wav", "reason": "Internal", "message": "boom", "at": "x"}],
            "progress": "40%",
            "lastScanAt": "2024-05-01T09:00:00.000Z",
            "nextScanAt": "not a time",
            "somethingNew": True,
        }
    )
    assert status.phase is BatchPhase.RUNNING
    assert status.counts.discovered == 5
    assert status.counts.queued == 0
    assert status.scan is not None
    assert (status.scan.number, status.scan.after, status.scan.matched) == (2, "input/b.wav", 2)
    assert status.scan.started_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert status.passes == 1
    assert status.failures[0].reason == "Internal"
    assert status.last_scan_at == datetime(2024, 5, 1, 9, tzinfo=UTC)
    assert status.next_scan_at is None  # unreadable: as if absent
    assert BatchStatus.from_body(None) == BatchStatus()
    naive = BatchStatus.from_body({"lastScanAt": "2024-05-01T09:00:00"})
    assert naive.last_scan_at == datetime(2024, 5, 1, 9, tzinfo=UTC)


def test_status_dump_uses_the_crd_names_and_times() -> None:
    status = BatchStatus(
        next_scan_at=datetime(2024, 5, 1, 11, 30, tzinfo=UTC),
        observed_generation=2,
        scan=ScanProgress(number=3, after="b.wav"),
    )
    dumped = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["nextScanAt"] == "2024-05-01T11:30:00.000Z"
    assert dumped["observedGeneration"] == 2
    assert dumped["scan"] == {"number": 3, "after": "b.wav", "matched": 0, "skipped": 0}
    assert BatchStatus.model_validate(dumped) == status


def test_a_pass_moves_through_the_status() -> None:
    started = datetime(2024, 5, 1, 10, tzinfo=UTC)
    status = BatchStatus(passes=2)
    scan = status.scan_state(started)
    assert (scan.number, scan.after, scan.matched, scan.skipped, scan.started_at) == (3, None, 0, 0, started)
    scan = scan.seen().seen().skip().at("in/b.wav")
    status = status.with_scan(scan)
    assert status.scan == ScanProgress(number=3, after="in/b.wav", matched=2, skipped=1, started_at=started)
    assert status.scan_state() is status.scan  # a pass under way resumes
    finished = status.scan_finished(scan, started + timedelta(minutes=5))
    assert finished.scan is None
    assert finished.passes == 3
    assert finished.last_scan_at == started + timedelta(minutes=5)
    assert finished.counts.skipped == 1
    assert finished.scan_state().number == 4
    assert status.passes == 2  # immutable: nothing changed in place
