"""A batch's bookkeeping: retries, progress, room, conditions, failures."""

from __future__ import annotations

import re
import typing
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from speechkit_operator.clients.speech.errors import grpc_reason
from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.logic import audio_probe
from speechkit_operator.logic.batch_progress import (
    MAX_FAILURE_MESSAGE,
    PERMANENT_REASONS,
    TRANSIENT_REASONS,
    BatchCounts,
    batch_conditions,
    batch_phase,
    progress_percent,
    progress_text,
    remember_failure,
    retry_decision,
    room,
    status_patch,
    transient_failure,
)
from speechkit_operator.logic.conditions import get_condition
from speechkit_operator.models.batch import BatchPhase, BatchStatus, ScanProgress, TranscriptionBatchSpec
from speechkit_operator.models.job import Reason, SecretRole

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "speechkit_operator"


# --------------------------------------------------------------------------------------------------
# Which failures are retried
# --------------------------------------------------------------------------------------------------


#: A reason as the code writes it: a member of :class:`Reason` (or, from older code, a literal).
_REASON = r'(?:"\w+"|Reason\.[A-Z][A-Z_]*\b)'


def _names(written: typing.Iterable[str]) -> set[str]:
    return {
        Reason[w.removeprefix("Reason.")].value if w.startswith("Reason.") else w.strip('"') for w in written
    }


def _reasons_a_job_can_fail_with() -> set[str]:
    """Every reason the operator's code can fail a TranscriptionJob with, found in its source."""
    workflow = (PACKAGE / "workflow.py").read_text(encoding="utf-8")
    errors = (PACKAGE / "clients" / "speech" / "errors.py").read_text(encoding="utf-8")
    credentials = (PACKAGE / "logic" / "credentials.py").read_text(encoding="utf-8")
    transitions = (PACKAGE / "logic" / "transitions.py").read_text(encoding="utf-8")
    found: set[str] = set()
    # Problem(Reason.X, ...), _fail(job, Reason.X, ...) and reason = Reason.X if ... else Reason.Y.
    found |= _names(re.findall(rf"\b_?Problem\(\s*({_REASON})", workflow))
    found |= _names(re.findall(rf"_fail\(\s*job,\s*({_REASON})", workflow))
    for pair in re.findall(rf"reason = ({_REASON}) if .* else ({_REASON})", workflow):
        found |= _names(pair)
    # A missing or unreadable Secret: Reason.secret_not_found(role), Reason.secret_unreadable(role).
    for role in re.findall(r"_read_secret\(\w+, \w+, SecretRole\.(\w+)\)", workflow):
        found |= {Reason.secret_not_found(SecretRole[role]), Reason.secret_unreadable(SecretRole[role])}
    # The reasons of the speech API's errors, and of broken Secrets.
    found |= _names(re.findall(rf"return ({_REASON})$", errors, flags=re.MULTILINE))
    for pair in re.findall(rf"return ({_REASON}) if .* else ({_REASON})", errors):
        found |= _names(pair)
    found |= _names(re.findall(rf"SecretProblem\(\s*({_REASON})", credentials))
    # Failed from the transitions (an uncertain submission that is not repeated).
    found |= _names(re.findall(rf"failed\(facts, ({_REASON})", transitions))
    # Operation errors and API errors by gRPC code, and the audio probe's verdicts.
    found |= {grpc_reason(code) for code in [*GrpcCode, 99]}
    found |= set(typing.get_args(audio_probe.ProbeFailure))
    return found


def test_the_search_for_reasons_finds_what_it_should() -> None:
    """Guards the regular expressions above: each kind of reason is found."""
    found = _reasons_a_job_can_fail_with()
    expected = {
        "InvalidSpec",
        "AudioTooLong",
        "SourceNotFound",
        "SourceUnreadable",
        "StorageUnavailable",
        "ResultExpired",
        "OutputWriteFailed",
        "MalformedResponse",
        "DeadlineExceeded",
        "UnexpectedError",
        "CredentialsSecretNotFound",
        "StorageSecretUnreadable",
        "SpeechApiUnreachable",
        "InvalidCredentials",
        "TlsCertificateRejected",
        "TlsHandshakeFailed",
        "InvalidCredentialsSecret",
        "StorageEndpointNotAllowed",
        "SubmissionUncertain",
        "Internal",
        "CorruptAudio",
    }
    assert expected <= found


def test_every_failure_reason_is_classified_once() -> None:
    found = _reasons_a_job_can_fail_with()
    assert TRANSIENT_REASONS.isdisjoint(PERMANENT_REASONS)
    unclassified = found - TRANSIENT_REASONS - PERMANENT_REASONS
    assert unclassified == set(), f"say whether a batch may retry these: {sorted(unclassified)}"


@pytest.mark.parametrize(
    "reason",
    [
        "Unavailable",
        "Internal",
        "Unknown",
        "Aborted",
        "ResourceExhausted",
        "SpeechApiUnreachable",
        "StorageUnavailable",
        "ResultExpired",
    ],
)
def test_service_trouble_is_transient(reason: str) -> None:
    assert transient_failure(reason)


@pytest.mark.parametrize(
    "reason",
    [
        "InvalidArgument",
        "NotFound",
        "PermissionDenied",
        "Unauthenticated",
        "UnsupportedAudio",
        "InvalidSpec",
        "SourceNotFound",
        "SubmissionUncertain",  # retrying could pay twice
        "DeadlineExceeded",  # the job's own deadline, and the operation's: the same reason
        "MalformedResponse",
        "Cancelled",
        "SomethingNewer",  # unknown reasons are not retried
    ],
)
def test_object_spec_and_permission_trouble_is_not(reason: str) -> None:
    assert not transient_failure(reason)


@pytest.mark.parametrize(
    ("reason", "attempt", "max_attempts", "retry"),
    [
        ("Unavailable", 1, 3, True),
        ("Unavailable", 2, 3, True),
        ("Unavailable", 3, 3, False),
        ("Unavailable", 1, 1, False),
        ("InvalidArgument", 1, 3, False),
        ("SubmissionUncertain", 1, 20, False),
    ],
)
def test_retry_decision(reason: str, attempt: int, max_attempts: int, retry: bool) -> None:
    assert retry_decision(reason, attempt, max_attempts) is retry


@pytest.mark.parametrize(
    ("limit", "active", "free"), [(10, 0, 10), (10, 7, 3), (10, 10, 0), (10, 12, 0), (1, 0, 1)]
)
def test_room(limit: int, active: int, free: int) -> None:
    assert room(limit, active) == free


# --------------------------------------------------------------------------------------------------
# Counts and progress
# --------------------------------------------------------------------------------------------------


def test_counts_from_status_are_lenient() -> None:
    counts = BatchCounts.from_status(
        {"discovered": 9, "queued": "3", "running": -1, "succeeded": True, "failed": 2}
    )
    assert counts == BatchCounts(discovered=9, failed=2)
    assert BatchCounts.from_status(None) == BatchCounts()
    assert BatchCounts(1, 2, 3, 4, 5, 6).as_status() == {
        "discovered": 1,
        "queued": 2,
        "running": 3,
        "succeeded": 4,
        "failed": 5,
        "skipped": 6,
    }


@pytest.mark.parametrize(
    ("counts", "percent"),
    [
        (BatchCounts(), 0),
        (BatchCounts(discovered=4, queued=4), 0),
        (BatchCounts(discovered=4, succeeded=1, failed=1, running=2), 50),
        (BatchCounts(discovered=3, succeeded=2, queued=1), 66),  # rounded down
        (BatchCounts(discovered=1000, succeeded=999, running=1), 99),  # 100 only when all finished
        (BatchCounts(discovered=5, succeeded=3, failed=1, skipped=1), 100),
        (BatchCounts(discovered=2, succeeded=5), 100),  # inconsistent counts stay in bounds
    ],
)
def test_progress(counts: BatchCounts, percent: int) -> None:
    assert progress_percent(counts) == percent
    assert progress_text(counts) == f"{percent}%"


@pytest.mark.parametrize(
    ("scan_complete", "run_once", "counts", "failed", "phase"),
    [
        (False, True, BatchCounts(discovered=2, running=2), False, BatchPhase.SCANNING),
        (True, True, BatchCounts(discovered=2, running=1, succeeded=1), False, BatchPhase.RUNNING),
        (True, True, BatchCounts(discovered=2, failed=1, succeeded=1), False, BatchPhase.COMPLETE),
        (True, True, BatchCounts(), False, BatchPhase.COMPLETE),
        (True, False, BatchCounts(discovered=2, succeeded=2), False, BatchPhase.WAITING),
        (True, False, BatchCounts(discovered=2, queued=2), False, BatchPhase.RUNNING),
        (True, True, BatchCounts(discovered=2, succeeded=2), True, BatchPhase.FAILED),
    ],
)
def test_batch_phase(
    scan_complete: bool, run_once: bool, counts: BatchCounts, failed: bool, phase: BatchPhase
) -> None:
    assert batch_phase(scan_complete=scan_complete, run_once=run_once, counts=counts, failed=failed) is phase


# --------------------------------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------------------------------

T0 = "2024-05-01T10:00:00Z"
T1 = "2024-05-01T11:00:00Z"


def _status_of(conditions: list[dict[str, typing.Any]], type_: str) -> tuple[str, str]:
    condition = get_condition(conditions, type_)
    assert condition is not None
    return condition["status"], condition["reason"]


def test_conditions_while_scanning() -> None:
    conditions = batch_conditions(
        [],
        scan_complete=False,
        run_once=True,
        counts=BatchCounts(discovered=3, queued=3),
        now=T0,
        generation=1,
    )
    assert _status_of(conditions, "ScanComplete") == ("False", "Scanning")
    assert _status_of(conditions, "Complete") == ("False", "Scanning")
    assert all(c["observedGeneration"] == 1 and c["lastTransitionTime"] == T0 for c in conditions)


def test_conditions_of_a_run_once_batch_in_progress_then_complete() -> None:
    running = batch_conditions(
        [],
        scan_complete=True,
        run_once=True,
        counts=BatchCounts(discovered=4, running=1, succeeded=3),
        now=T0,
        generation=1,
    )
    assert _status_of(running, "ScanComplete") == ("True", "ScanComplete")
    assert _status_of(running, "Complete") == ("False", "InProgress")
    assert "3 of 4 objects finished" in str(get_condition(running, "Complete"))
    done = batch_conditions(
        running,
        scan_complete=True,
        run_once=True,
        counts=BatchCounts(discovered=4, succeeded=3, failed=1),
        now=T1,
        generation=1,
    )
    complete = get_condition(done, "Complete")
    assert complete is not None
    assert (complete["status"], complete["reason"]) == ("True", "Finished")
    assert complete["lastTransitionTime"] == T1
    assert "3 succeeded, 1 failed, 0 skipped" in complete["message"]
    # ScanComplete did not change status: its transition time stays.
    scan = get_condition(done, "ScanComplete")
    assert scan is not None
    assert scan["lastTransitionTime"] == T0


def test_a_rescanning_batch_is_never_complete() -> None:
    conditions = batch_conditions(
        [],
        scan_complete=True,
        run_once=False,
        counts=BatchCounts(discovered=2, succeeded=2),
        now=T0,
        generation=3,
        next_scan_at=T1,
    )
    complete = get_condition(conditions, "Complete")
    assert complete is not None
    assert (complete["status"], complete["reason"]) == ("False", "WaitingForNextScan")
    assert "waiting for the next scan" in complete["message"]
    assert T1 in complete["message"]


def test_conditions_keep_the_others_and_do_not_modify_the_input() -> None:
    other = {"type": "Paused", "status": "True", "reason": "ByUser", "message": "", "lastTransitionTime": T0}
    given = [other]
    conditions = batch_conditions(
        given, scan_complete=True, run_once=True, counts=BatchCounts(), now=T1, generation=None
    )
    assert given == [other]
    assert conditions[0] == other
    assert {c["type"] for c in conditions} == {"Paused", "ScanComplete", "Complete"}
    assert all("observedGeneration" not in c for c in conditions[1:])


# --------------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------------


def test_remember_failure_keeps_the_latest_newest_last() -> None:
    failures: list[dict[str, str]] = []
    for index in range(12):
        failures = remember_failure(failures, f"k{index}", "Internal", f"boom {index}", limit=10)
    assert [f["key"] for f in failures] == [f"k{index}" for index in range(2, 12)]
    assert failures[-1] == {"key": "k11", "reason": "Internal", "message": "boom 11"}


def test_remember_failure_replaces_an_earlier_entry_for_the_key() -> None:
    failures = remember_failure([], "a", "Internal", "first")
    failures = remember_failure(failures, "b", "NotFound", "gone")
    failures = remember_failure(failures, "a", "Unavailable", "second")
    assert [(f["key"], f["reason"]) for f in failures] == [("b", "NotFound"), ("a", "Unavailable")]


def test_remember_failure_cuts_and_redacts_the_message() -> None:
    long = remember_failure([], "a", "Internal", "x" * 1000)
    assert len(long[0]["message"]) == MAX_FAILURE_MESSAGE
    assert long[0]["message"].endswith("…")
    secret = remember_failure([], "a", "Internal", "fetch https://s3/a.wav?X-Amz-Signature=abc failed")
    assert "abc" not in secret[0]["message"]


def test_remember_failure_takes_the_entries_as_read_back() -> None:
    status = BatchStatus.from_body({"failures": [{"key": "a", "reason": "NotFound", "message": "gone"}]})
    failures = remember_failure(status.failures, "b", "Internal", "boom")
    assert failures == [
        {"key": "a", "reason": "NotFound", "message": "gone"},
        {"key": "b", "reason": "Internal", "message": "boom"},
    ]


# --------------------------------------------------------------------------------------------------
# Counts from the children, and the whole status
# --------------------------------------------------------------------------------------------------


def test_counts_from_the_childrens_phases() -> None:
    phases = Counter(
        {"": 1, "Pending": 2, "Queued": 3, "Running": 4, "Succeeded": 5, "Failed": 6, "Later": 1}
    )
    counts = BatchCounts.from_phases(phases, BatchStatus.from_body({"counts": {"skipped": 7}}))
    assert counts == BatchCounts(discovered=29, queued=7, running=4, succeeded=5, failed=6, skipped=7)
    assert BatchCounts.from_phases(Counter({"Running": -1})) == BatchCounts()


def test_skipped_objects_are_the_larger_of_the_last_pass_and_the_current_one() -> None:
    status = BatchStatus.from_body({"counts": {"skipped": 3}, "scan": {"number": 2, "skipped": 1}})
    assert BatchCounts.from_phases({}, status).skipped == 3
    status = BatchStatus.from_body({"counts": {"skipped": 3}, "scan": {"number": 2, "skipped": 5}})
    assert BatchCounts.from_phases({}, status).skipped == 5


NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)


def _spec(**fields: typing.Any) -> TranscriptionBatchSpec:
    return TranscriptionBatchSpec.model_validate({"source": {"bucket": "calls"}, **fields})


def test_status_patch_while_scanning() -> None:
    status = BatchStatus().with_scan(ScanProgress(number=1, after="b.wav", matched=2, started_at=NOW))
    counts = BatchCounts(discovered=2, queued=1, running=1)
    patch = status_patch(status, counts=counts, spec=_spec(), problem=None, active=0, generation=4, now=NOW)
    assert patch["phase"] == "Scanning"
    assert patch["reason"] == "Scanning"
    assert "pass 1" in patch["message"]
    assert patch["counts"] == counts.as_status()
    assert patch["progress"] == "0%"
    assert patch["scan"] == {
        "number": 1,
        "after": "b.wav",
        "matched": 2,
        "skipped": 0,
        "startedAt": "2024-05-01T12:00:00.000Z",
    }
    assert patch["lastScanAt"] is None
    assert patch["nextScanAt"] is None
    assert patch["observedGeneration"] == 4
    assert _status_of(patch["conditions"], "ScanComplete") == ("False", "Scanning")


def test_status_patch_of_a_run_once_batch_after_its_scan() -> None:
    scan = ScanProgress(number=1, after="z.wav", matched=3)
    status = BatchStatus().with_scan(scan).scan_finished(scan, NOW)
    running = BatchCounts(discovered=3, running=1, succeeded=2)
    patch = status_patch(status, counts=running, spec=_spec(), problem=None, active=0, generation=1, now=NOW)
    assert (patch["phase"], patch["reason"]) == ("Running", "InProgress")
    assert patch["scan"] is None  # cleared by the merge patch
    assert patch["passes"] == 1
    assert patch["lastScanAt"] == "2024-05-01T12:00:00.000Z"
    assert patch["progress"] == "66%"
    done = BatchCounts(discovered=3, succeeded=2, failed=1)
    # A failed child waiting for another attempt keeps the batch from completing.
    waiting = status_patch(status, counts=done, spec=_spec(), problem=None, active=1, generation=1, now=NOW)
    assert waiting["phase"] == "Running"
    assert _status_of(waiting["conditions"], "Complete") == ("False", "InProgress")
    patch = status_patch(status, counts=done, spec=_spec(), problem=None, active=0, generation=1, now=NOW)
    assert (patch["phase"], patch["reason"]) == ("Complete", "Finished")
    assert patch["progress"] == "100%"
    assert _status_of(patch["conditions"], "Complete") == ("True", "Finished")


def test_status_patch_of_a_rescanning_batch_says_when_it_scans_next() -> None:
    scan = ScanProgress(number=4)
    status = BatchStatus(passes=3).with_scan(scan).scan_finished(scan, NOW)
    counts = BatchCounts(discovered=1, succeeded=1)
    patch = status_patch(
        status, counts=counts, spec=_spec(rescanInterval=600), problem=None, active=0, generation=1, now=NOW
    )
    assert patch["phase"] == "Waiting"
    assert patch["nextScanAt"] == "2024-05-01T12:10:00.000Z"
    assert "2024-05-01T12:10:00.000Z" in patch["message"]
    assert _status_of(patch["conditions"], "Complete") == ("False", "WaitingForNextScan")


def test_status_patch_of_an_invalid_spec() -> None:
    status = BatchStatus.from_body(
        {
            "failures": [{"key": "a", "reason": "Internal", "message": "boom"}],
            "conditions": [
                {"type": "ScanComplete", "status": "True", "reason": "ScanComplete", "lastTransitionTime": T0}
            ],
        }
    )
    patch = status_patch(
        status,
        counts=BatchCounts(),
        spec=None,
        problem="source.bucket: String should match pattern",
        active=0,
        generation=2,
        now=NOW,
    )
    assert (patch["phase"], patch["reason"]) == ("Failed", "InvalidSpec")
    assert patch["message"] == "source.bucket: String should match pattern"
    assert patch["failures"] == [{"key": "a", "reason": "Internal", "message": "boom"}]
    assert _status_of(patch["conditions"], "Complete") == ("False", "InvalidSpec")
    assert _status_of(patch["conditions"], "ScanComplete") == ("True", "ScanComplete")  # kept


def test_the_status_patch_is_what_the_crd_declares() -> None:
    """Every field it writes is one the status model reads back."""
    scan = ScanProgress(number=1, after="a.wav")
    status = BatchStatus().with_scan(scan)
    patch = status_patch(
        status,
        counts=BatchCounts(),
        spec=_spec(rescanInterval=60),
        problem=None,
        active=0,
        generation=1,
        now=NOW,
    )
    aliases = {field.alias or name for name, field in BatchStatus.model_fields.items()}
    assert set(patch) == aliases
    read_back = BatchStatus.from_body({k: v for k, v in patch.items() if v is not None})
    assert read_back.scan == scan
