"""``speechkit-operator transcribe``'s decisions that need no services: what SOURCE means, which keys
one object selects, the spec and its errors (naming the options), resume or new pass, what the
summary counts, and the command line with the cron script's variables side by side."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from speechkit_operator.cli import main
from speechkit_operator.clients.bucket_state import BucketJobStore
from speechkit_operator.logic.batch_selection import selected
from speechkit_operator.models.batch import TranscriptionBatchSpec
from speechkit_operator.transcribe import (
    LocalSource,
    Options,
    S3Source,
    Tracker,
    UsageError,
    _forget_finished,
    _Where,
    batch_uid,
    build_spec,
    escape_glob,
    fresh_status,
    load_run_settings,
    parse_source,
    single_object,
    state_prefix_for,
    summary_rows,
)

EXTENSIONS = (".wav", ".ogg", ".opus", ".mp3")


def spec_for(**overrides: object) -> TranscriptionBatchSpec:
    values: dict[str, object] = {
        "bucket": "calls",
        "prefix": "input/",
        "include": [],
        "output_prefix": "out/",
        "seed_log": None,
        "seed_output": None,
    }
    values.update(overrides)
    return build_spec(Options(), **values)  # type: ignore[arg-type]


def test_sources_are_s3_urls_or_existing_local_files_and_folders(tmp_path: Path) -> None:
    assert parse_source("s3://calls/input/", EXTENSIONS) == S3Source("calls", "input/")
    assert parse_source("s3://calls", EXTENSIONS) == S3Source("calls", "")
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "one.WAV").write_bytes(b"x")
    (tmp_path / "a" / "b" / "two.mp3").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("x")

    folder = parse_source(str(tmp_path / "a"), EXTENSIONS)

    assert isinstance(folder, LocalSource)
    assert [relative for _, relative in folder.files] == ["b/two.mp3", "one.WAV"]
    one = parse_source(str(tmp_path / "a" / "one.WAV"), EXTENSIONS)
    assert isinstance(one, LocalSource) and [relative for _, relative in one.files] == ["one.WAV"]
    for wrong, said in (
        ("s3:///input/", "no bucket"),
        ("gs://calls/input/", "only s3:// URLs"),
        (str(tmp_path / "missing"), "no such file or folder"),
        (str(tmp_path / "a" / "notes.txt"), "does not end with an audio extension"),
    ):
        with pytest.raises(UsageError, match=said):
            parse_source(wrong, EXTENSIONS)


@pytest.mark.parametrize(
    "key",
    ["input/call.wav", "call.wav", "input/deep/[draft] call?*.wav", "input/[[]].wav", "input/!x.wav"],
)
def test_one_object_selects_exactly_that_key(key: str) -> None:
    prefix, include = single_object(key)
    spec = spec_for(prefix=prefix, include=include)
    folder = key.rpartition("/")[0]
    neighbours = [
        f"{key}.copy.wav",  # starts with the key
        f"{folder}/other.wav" if folder else "other.wav",
        f"{folder}/x/{key.rpartition('/')[2]}" if folder else f"x/{key}",
        key.replace(".wav", "X.wav"),
    ]

    assert selected(key, spec.source)
    assert not [neighbour for neighbour in neighbours if selected(neighbour, spec.source)]


def test_escape_glob_uses_classes() -> None:
    assert escape_glob("a*b?c[d].wav") == "a[*]b[?]c[[]d].wav"


def test_spec_errors_name_the_option_not_the_field() -> None:
    with pytest.raises(UsageError) as language:
        build_spec(
            Options(language="english"),
            bucket="calls",
            prefix="input/",
            include=[],
            output_prefix="out/",
            seed_log=None,
            seed_output=None,
        )
    assert "--language" in str(language.value)
    with pytest.raises(UsageError) as formats:
        build_spec(
            Options(formats=("json", "docx")),
            bucket="calls",
            prefix="input/",
            include=[],
            output_prefix="out/",
            seed_log=None,
            seed_output=None,
        )
    assert "--formats" in str(formats.value)
    with pytest.raises(UsageError) as seed:
        spec_for(seed_log="input")
    assert "--seed-log (S3_PREFIX_LOG)" in str(seed.value)
    with pytest.raises(UsageError) as bucket:
        spec_for(bucket="Not_A_Bucket")
    assert "the bucket of SOURCE" in str(bucket.value)


def test_the_language_is_left_to_config_json_unless_given() -> None:
    assert not spec_for().template.language_is_explicit
    given = build_spec(
        Options(language="en-US", model="deferred-general"),
        bucket="calls",
        prefix="input/",
        include=[],
        output_prefix="out/",
        seed_log=None,
        seed_output=None,
    )
    assert given.template.language_is_explicit
    assert given.template.recognition.language_code == "en-US"
    assert given.template.recognition.model == "deferred-general"


def test_the_state_lives_beside_the_outputs_unless_told_and_its_uid_is_fixed() -> None:
    assert state_prefix_for(Options(), "out/") == "out/.speechkit/"
    assert state_prefix_for(Options(), "") == ".speechkit/"
    assert state_prefix_for(Options(state_prefix="state"), "out/") == "state/"
    assert batch_uid("calls", "out/.speechkit/") == batch_uid("calls", "out/.speechkit/")
    assert batch_uid("calls", "out/.speechkit/") != batch_uid("calls", "other/.speechkit/")


def test_an_interrupted_pass_over_the_same_source_is_resumed_anything_else_starts_a_new_one() -> None:
    spec = spec_for()
    source = spec.source.model_dump(by_alias=True, mode="json")
    under_way = {"passes": 2, "scan": {"number": 3, "after": "input/b.wav"}, "counts": {"skipped": 4}}
    finished = {"passes": 3, "lastScanAt": "2026-01-01T00:00:00Z", "counts": {"skipped": 4}}

    assert fresh_status({"spec": {"source": source}, "status": under_way}, spec) == (under_way, True)
    assert fresh_status({"spec": {"source": source}, "status": finished}, spec) == ({"passes": 3}, False)
    other = dict(source, prefix="elsewhere/")
    assert fresh_status({"spec": {"source": other}, "status": under_way}, spec) == ({"passes": 2}, False)
    assert fresh_status(None, spec) == ({}, False)


def job(name: str, key: str, *, attempt: int = 1, **status: object) -> dict[str, object]:
    return {
        "metadata": {
            "name": name if attempt == 1 else f"{name}-{attempt}",
            "labels": {"speechkit.dev/object": name},
            "annotations": {"speechkit.dev/attempt": str(attempt)},
        },
        "spec": {"source": {"bucket": "calls", "key": key}},
        "status": dict(status),
    }


def test_the_tracker_tells_earlier_operations_from_this_runs_and_keeps_the_latest_attempt() -> None:
    tracker = Tracker()
    tracker.observe_job(job("a", "input/a.wav", operationId="e03a", phase="Running"))  # an earlier run's
    tracker.observe_job(job("b", "input/b.wav"))
    tracker.observe_job(job("b", "input/b.wav", operationId="e03b", phase="Running", uncertainSubmissions=1))
    adopting = job("c", "input/c.wav")
    adopting["metadata"]["annotations"]["speechkit.dev/adopt-operation"] = "e03c"  # type: ignore[index]
    tracker.observe_job(adopting)
    adopting["status"] = {"operationId": "e03c", "phase": "Running"}
    tracker.observe_job(adopting)
    tracker.observe_job(job("d", "input/d.wav", phase="Failed", reason="Unavailable"))
    tracker.observe_job(
        job("d", "input/d.wav", attempt=2, phase="Failed", reason="CorruptAudio", message="bad")
    )
    tracker.observe_job(job("d", "input/d.wav", phase="Failed", reason="Unavailable"))  # a late echo
    tracker.observe_batch(
        {
            "status": {
                "phase": "Running",
                "counts": {"discovered": 5, "skipped": 1, "failed": 1, "running": 3},
                "failures": [
                    {"key": "input/e.wav", "reason": "SeedMarkerInvalid", "message": "not JSON"},
                    {"key": "input/d.wav", "reason": "CorruptAudio", "message": "bad"},
                    {"key": "input/f.wav", "reason": "Unavailable", "message": "retried since"},
                ],
            }
        }
    )

    assert tracker.submitted == {"b"}
    assert tracker.adopted == {"c"}
    assert tracker.with_operation() == 3
    assert [child.key for child in tracker.uncertain()] == ["input/b.wav"]
    assert tracker.failures() == [
        ("input/d.wav", "CorruptAudio", "bad"),
        ("input/e.wav", "SeedMarkerInvalid", "not JSON"),
    ]
    assert not tracker.complete.is_set()
    assert tracker.line() == "5 found (listing), 1 skipped, 3 submitted, 0 transcribed, 1 failed"
    tracker.observe_batch({"status": {"phase": "Complete", "lastScanAt": "2026-01-01T00:00:00Z"}})
    assert tracker.complete.is_set() and tracker.scan_complete


def test_the_summary_says_where_the_outputs_are_and_explains_uncertain_submissions() -> None:
    tracker = Tracker()
    tracker.observe_job(job("b", "input/b.wav"))
    tracker.observe_job(
        job("b", "input/b.wav", operationId="e03b", phase="Succeeded", uncertainSubmissions=1)
    )
    tracker.observe_batch({"status": {"counts": {"discovered": 2, "succeeded": 1, "skipped": 1}}})
    where = _Where(source="s3://calls/input/", spec=spec_for(), state_prefix="out/.speechkit/")

    rows = dict(summary_rows(tracker, where, 12.34, None, Path("transcripts"), ""))

    assert rows["outputs"] == "s3://calls/out/<key>.{json,txt,srt,vtt}"
    assert rows["state"] == "s3://calls/out/.speechkit/"
    assert rows["transcribed"] == "1" and rows["skipped"].startswith("1 ")
    assert rows["submitted"] == "1 in this run"
    assert "may have charged twice: input/b.wav" in rows["uncertain"]
    assert rows["elapsed"] == "12.3 s"


def test_s3_endpoint_becomes_the_storage_endpoint_and_bad_settings_are_usage_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_run_settings({"S3_ENDPOINT": "http://127.0.0.1:9000"})
    assert str(settings.storage_endpoint).rstrip("/") == "http://127.0.0.1:9000"
    monkeypatch.setenv("SPEECHKIT_OPERATOR_SUBMIT_QUOTA", "-1")
    with pytest.raises(UsageError, match="SPEECHKIT_OPERATOR_SUBMIT_QUOTA"):
        load_run_settings({"SPEECHKIT_OPERATOR_SUBMIT_QUOTA": "-1"})
    monkeypatch.delenv("SPEECHKIT_OPERATOR_SUBMIT_QUOTA")
    monkeypatch.setenv("SPEECHKIT_OPERATOR_SUBMIT_QUOTE", "1")
    with pytest.raises(UsageError, match="did you mean SPEECHKIT_OPERATOR_SUBMIT_QUOTA"):
        load_run_settings(dict(SPEECHKIT_OPERATOR_SUBMIT_QUOTE="1"))


def test_help_shows_the_cron_scripts_variables_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["transcribe", "--help"])

    assert exited.value.code == 0
    shown = capsys.readouterr().out
    for seed, here in (
        ("S3_BUCKET + S3_PREFIX", "SOURCE"),
        ("S3_PREFIX_LOG", "--seed-log"),
        ("S3_PREFIX_OUT", "--output-prefix"),
        ("S3_KEY, S3_SECRET", "AWS_ACCESS_KEY_ID"),
        ("API_SECRET", "SPEECHKIT_API_KEY"),
    ):
        line = next(line for line in shown.splitlines() if line.strip().startswith(seed))
        assert here in line
    assert "Not supported:" in shown and "--upload-prefix" in shown


def test_usage_errors_exit_2_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in ("API_SECRET", "SPEECHKIT_API_KEY", "SPEECHKIT_IAM_TOKEN", "SPEECHKIT_AUTHORIZED_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["transcribe", "s3://calls/input/", "--progress", "none"]) == 2
    assert "no SpeechKit credentials in the environment: set API_SECRET" in capsys.readouterr().err

    monkeypatch.setenv("API_SECRET", "key")
    for name in ("S3_KEY", "S3_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["transcribe", "s3://calls/input/", "--progress", "none"]) == 2
    assert "set S3_KEY and S3_SECRET" in capsys.readouterr().err

    monkeypatch.setenv("S3_KEY", "k")
    monkeypatch.setenv("S3_SECRET", "s")
    monkeypatch.delenv("S3_BUCKET", raising=False)
    assert main(["transcribe", "--progress", "none"]) == 2
    assert "no SOURCE" in capsys.readouterr().err

    (tmp_path / "a.wav").write_bytes(b"RIFF")
    assert main(["transcribe", str(tmp_path / "a.wav"), "--progress", "none"]) == 2
    err = capsys.readouterr().err
    assert "--bucket" in err and "--upload-prefix" in err and "required for local input" in err


class Leftovers:
    """The jobs a run stopped before it could drop them left: deletions are slow, and counted."""

    def __init__(self, jobs: list[dict[str, Any]]) -> None:
        self._jobs = jobs
        self.deleted: list[str] = []
        self.at_once = 0
        self.most_at_once = 0

    def jobs(self) -> list[dict[str, Any]]:
        return list(self._jobs)

    async def delete(self, ref: Any) -> None:
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        await asyncio.sleep(0.01)
        self.at_once -= 1
        self.deleted.append(ref.name)


async def test_a_new_pass_forgets_the_finished_jobs_left_sixteen_at_a_time() -> None:
    def job(name: str, phase: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
        meta = {"name": name, "namespace": "transcribe", "uid": name, "annotations": annotations or {}}
        return {"metadata": meta, "status": {"phase": phase}}

    jobs = [job(f"done-{index}", "Succeeded") for index in range(100)]
    jobs += [
        job("seeded", "Succeeded", {"speechkit.dev/adopt-operation": "e03seed"}),
        job("failed", "Failed"),
        job("running", "Running"),
    ]
    store = Leftovers(jobs)
    await _forget_finished(cast(BucketJobStore, store), retry_failed=False)
    assert sorted(store.deleted) == sorted(f"done-{index}" for index in range(100))
    assert 1 < store.most_at_once <= 16


def test_the_tracker_keeps_a_succeeded_job_the_store_dropped() -> None:
    tracker = Tracker()
    body = {
        "metadata": {"name": "a-1", "labels": {"speechkit.dev/object": "a-1"}},
        "spec": {"source": {"key": "input/a.wav"}},
        "status": {"phase": "Succeeded", "operationId": "op1"},
    }
    tracker.observe_job(body)
    tracker.observe_job(body, deleted=True)
    assert tracker.with_operation() == 1
