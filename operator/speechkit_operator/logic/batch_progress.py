"""A TranscriptionBatch's bookkeeping: which failed children to try again, how far it is, how many
children it may start now, its conditions and the failures it shows.

Retrying a failed object means a new TranscriptionJob, hence a new SpeechKit operation, which is paid
for. So a failure is tried again only when its reason says the service, not the object, was at fault
and no operation can have done the work already. The two sets below name every reason a
TranscriptionJob can fail with (``tests/unit/test_batch_progress.py`` finds them in the code and fails
when one is in neither); a reason in neither set, from a newer operator say, is not retried.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from speechkit_operator.logic.conditions import ConditionStatus, set_condition
from speechkit_operator.logic.redaction import redact
from speechkit_operator.models.batch import (
    MAX_FAILURES,
    BatchConditionType,
    BatchFailure,
    BatchPhase,
    BatchStatus,
    TranscriptionBatchSpec,
)
from speechkit_operator.models.job import Reason
from speechkit_operator.models.timestamps import format_time

#: Failures a batch may try again, with a new child, up to ``maxAttempts``.
TRANSIENT_REASONS: frozenset[str] = frozenset(
    {
        # The operation ended with a server-side gRPC error, or SpeechKit kept answering 5xx until
        # the child gave up submitting (a submission answered 503 was certainly not processed).
        Reason.INTERNAL,
        Reason.UNAVAILABLE,
        Reason.UNKNOWN,
        Reason.ABORTED,
        Reason.RESOURCE_EXHAUSTED,
        # SpeechKit or the storage could not be reached until the child gave up submitting.
        Reason.SPEECH_API_UNREACHABLE,
        Reason.STORAGE_UNAVAILABLE,
        # The result expired unread (SpeechKit keeps results 3 days): only a new operation brings
        # the transcript, at a second price, but the first one brought nothing.
        Reason.RESULT_EXPIRED,
    }
)

#: Failures that a new child would repeat, or that may have been paid for already.
PERMANENT_REASONS: frozenset[str] = frozenset(
    {
        # The object: missing, unreadable, not audio SpeechKit takes.
        Reason.SOURCE_NOT_FOUND,
        Reason.SOURCE_UNREADABLE,
        Reason.EMPTY_AUDIO,
        Reason.UNKNOWN_AUDIO_FORMAT,
        Reason.UNSUPPORTED_AUDIO,
        Reason.AUDIO_ENCODING_MISMATCH,
        Reason.CORRUPT_AUDIO,
        Reason.AUDIO_TOO_LONG,
        # The spec, or SpeechKit refusing the request as it is (gRPC client errors).
        Reason.INVALID_SPEC,
        Reason.INVALID_ARGUMENT,
        Reason.NOT_FOUND,
        Reason.ALREADY_EXISTS,
        Reason.FAILED_PRECONDITION,
        Reason.OUT_OF_RANGE,
        Reason.UNIMPLEMENTED,
        Reason.OK,  # an operation "error" with code 0: nothing to retry
        # Permissions and configuration: the child already waited and retried; fix them, then
        # re-create the batch (or delete the failed children).
        Reason.PERMISSION_DENIED,
        Reason.UNAUTHENTICATED,
        Reason.INVALID_CREDENTIALS,
        Reason.INVALID_CREDENTIALS_SECRET,
        Reason.INVALID_STORAGE_SECRET,
        Reason.CREDENTIALS_SECRET_NOT_FOUND,
        Reason.CREDENTIALS_SECRET_UNREADABLE,
        Reason.STORAGE_SECRET_NOT_FOUND,
        Reason.STORAGE_SECRET_UNREADABLE,
        Reason.STORAGE_ENDPOINT_NOT_ALLOWED,
        Reason.TLS_CERTIFICATE_REJECTED,
        Reason.TLS_HANDSHAKE_FAILED,
        # An operation may have run, and been paid for: a lost submission answer; a finished
        # operation whose result could not be read or written; an operation cancelled or that lost
        # data.
        Reason.SUBMISSION_UNCERTAIN,
        Reason.MALFORMED_RESPONSE,
        Reason.OUTPUT_WRITE_FAILED,
        Reason.CANCELLED,
        Reason.DATA_LOSS,
        # The job's own activeDeadlineSeconds (4 days by default) ran out; the gRPC code
        # DEADLINE_EXCEEDED of an operation gets the same reason and cannot be told apart.
        Reason.DEADLINE_EXCEEDED,
        # A bug in the operator: a new child would meet it again.
        Reason.UNEXPECTED_ERROR,
        # The adopt annotation is not an operation id: the operation it meant may be running (and
        # paid for); a new child would submit the audio again. A batch writes only valid ids.
        Reason.INVALID_ADOPTION,
    }
)

#: The longest failure message kept in the batch's status.
MAX_FAILURE_MESSAGE = 256


def transient_failure(reason: str) -> bool:
    """Whether a child that failed with ``reason`` may be tried again (see :data:`TRANSIENT_REASONS`)."""
    return reason in TRANSIENT_REASONS


def retry_decision(reason: str, attempt: int, max_attempts: int) -> bool:
    """Whether to try an object again after its ``attempt``-th child (1-based) failed with
    ``reason``: a transient reason, and fewer than ``max_attempts`` children so far."""
    return transient_failure(reason) and attempt < max_attempts


def room(max_in_flight: int, active: int) -> int:
    """How many children may be created now, with ``active`` not finished yet."""
    return max(0, max_in_flight - active)


#: A child's phase -> the count it is in (an absent or unknown phase: not submitted yet).
_COUNT_OF_PHASE = {"Running": "running", "Succeeded": "succeeded", "Failed": "failed"}


@dataclass(frozen=True)
class BatchCounts:
    """Objects by where they are (``status.counts``); ``discovered`` is the sum of the others."""

    discovered: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.skipped

    @property
    def unfinished(self) -> int:
        return max(0, self.discovered - self.finished)

    def as_status(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_status(cls, counts: Mapping[str, Any] | None) -> BatchCounts:
        """From ``status.counts`` as read back; anything but a non-negative integer counts as 0."""
        values: dict[str, int] = {}
        for name in cls.__dataclass_fields__:
            value = (counts or {}).get(name)
            values[name] = (
                value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
            )
        return cls(**values)

    @classmethod
    def from_phases(cls, phases: Mapping[str, int], status: BatchStatus | None = None) -> BatchCounts:
        """From the number of children in each phase (one child per object: its latest attempt;
        ``""``, ``Pending``, ``Queued`` or an unknown phase count as queued) and the skipped objects
        of ``status``: the last finished pass's, or the pass under way's when it has more."""
        values = dict.fromkeys(("queued", "running", "succeeded", "failed"), 0)
        for phase, number in phases.items():
            values[_COUNT_OF_PHASE.get(phase, "queued")] += max(0, number)
        skipped = 0
        if status is not None:
            skipped = max(status.counts.skipped, status.scan.skipped if status.scan is not None else 0, 0)
        return cls(discovered=sum(values.values()) + skipped, skipped=skipped, **values)


def progress_percent(counts: BatchCounts) -> int:
    """Finished (succeeded, failed or skipped) of discovered, in whole percent rounded down (100 only
    when all are finished); 0 before anything is discovered."""
    if counts.discovered <= 0:
        return 0
    return max(0, min(100, counts.finished * 100 // counts.discovered))


def progress_text(counts: BatchCounts) -> str:
    """``status.progress``, for the printer column: ``42%``."""
    return f"{progress_percent(counts)}%"


def batch_phase(
    *, scan_complete: bool, run_once: bool, counts: BatchCounts, failed: bool = False, active: int = 0
) -> BatchPhase:
    """The phase (see :class:`~speechkit_operator.models.batch.BatchPhase`). ``active``: work the
    counts do not show, such as children being created or failed ones waiting for another attempt
    (counted as failed until then); any keeps the batch from completing."""
    if failed:
        return BatchPhase.FAILED
    if not scan_complete:
        return BatchPhase.SCANNING
    if counts.unfinished or active > 0:
        return BatchPhase.RUNNING
    return BatchPhase.COMPLETE if run_once else BatchPhase.WAITING


def _tally(counts: BatchCounts) -> str:
    return f"{counts.succeeded} succeeded, {counts.failed} failed, {counts.skipped} skipped"


def batch_conditions(
    conditions: Iterable[Mapping[str, Any]],
    *,
    scan_complete: bool,
    run_once: bool,
    counts: BatchCounts,
    now: str,
    generation: int | None,
    next_scan_at: str | None = None,
    active: int = 0,
) -> list[dict[str, Any]]:
    """``conditions`` with ``ScanComplete`` and ``Complete`` set (KEP-1623: ``lastTransitionTime``
    moves only when a status changes; the other conditions are kept).

    ``Complete`` is True when a run-once batch has listed its whole source and every object it found
    succeeded, failed or was skipped (and nothing is ``active``: see :func:`batch_phase`); a batch
    with ``rescanInterval`` is never complete.
    """
    scan: tuple[ConditionStatus, str, str]
    complete: tuple[ConditionStatus, str, str]
    if scan_complete:
        scan = (
            "True",
            Reason.SCAN_COMPLETE,
            f"the source was listed to its end: {counts.discovered} objects selected",
        )
    else:
        scan = ("False", Reason.SCANNING, f"listing the source: {counts.discovered} objects selected so far")
    if not scan_complete:
        complete = ("False", Reason.SCANNING, "the source is still being listed")
    elif counts.unfinished or active > 0:
        complete = (
            "False",
            Reason.IN_PROGRESS,
            f"{counts.finished} of {counts.discovered} objects finished ({_tally(counts)})",
        )
    elif not run_once:
        when = f" at {next_scan_at}" if next_scan_at else ""
        complete = (
            "False",
            Reason.WAITING_FOR_NEXT_SCAN,
            f"every object found so far is finished ({_tally(counts)}); waiting for the next scan{when}",
        )
    else:
        complete = ("True", Reason.FINISHED, f"all {counts.discovered} objects finished: {_tally(counts)}")
    result: list[dict[str, Any]] = [dict(condition) for condition in conditions]
    for type_, (status, reason, message) in (
        (BatchConditionType.SCAN_COMPLETE, scan),
        (BatchConditionType.COMPLETE, complete),
    ):
        result = set_condition(
            result,
            type=type_.value,
            status=status,
            reason=reason,
            message=message,
            now=now,
            generation=generation,
        )
    return result


def _entry(entry: Mapping[str, Any] | BatchFailure) -> dict[str, str]:
    if isinstance(entry, BatchFailure):
        return entry.model_dump()
    return {name: str(entry.get(name, "")) for name in ("key", "reason", "message")}


def remember_failure(
    failures: Iterable[Mapping[str, Any] | BatchFailure],
    key: str,
    reason: str,
    message: str,
    limit: int = MAX_FAILURES,
) -> list[dict[str, str]]:
    """The latest ``limit`` failures with this one added last: an earlier entry for the same key
    goes, and the message is redacted and cut to :data:`MAX_FAILURE_MESSAGE` characters. Takes the
    entries as read back (``BatchStatus.failures``) or as returned before."""
    kept = [entry for entry in map(_entry, failures) if entry["key"] != key]
    kept.append({"key": key, "reason": reason, "message": redact(message, limit=MAX_FAILURE_MESSAGE)})
    return kept[-limit:] if limit > 0 else []


def status_patch(
    status: BatchStatus,
    *,
    counts: BatchCounts,
    spec: TranscriptionBatchSpec | None,
    problem: str | None,
    active: int,
    generation: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The batch's whole status (a JSON merge patch: None clears a field) from what it holds
    (``status``: scan progress, failures, conditions) and the current ``counts``.

    ``problem`` is why the spec cannot be used (phase Failed, reason InvalidSpec); ``active`` as in
    :func:`batch_phase`. A pass is under way while ``status.scan`` is set; the scan is complete once
    one pass has finished and none is under way.
    """
    stamp = format_time(now)
    run_once = spec is None or spec.rescan_interval is None
    scan_complete = status.scan is None and status.last_scan_at is not None
    next_scan = None
    if spec is not None and spec.rescan_interval is not None and status.last_scan_at is not None:
        next_scan = status.last_scan_at + timedelta(seconds=spec.rescan_interval)
    next_text = format_time(next_scan) if next_scan is not None else None
    conditions = [c.model_dump(by_alias=True, exclude_none=True) for c in status.conditions]
    phase = batch_phase(
        scan_complete=scan_complete,
        run_once=run_once,
        counts=counts,
        failed=problem is not None,
        active=active,
    )
    if problem is not None:
        reason, message = Reason.INVALID_SPEC, problem
        conditions = set_condition(
            conditions,
            type=BatchConditionType.COMPLETE.value,
            status="False",
            reason=reason,
            message=redact(problem),
            now=stamp,
            generation=generation,
        )
    else:
        conditions = batch_conditions(
            conditions,
            scan_complete=scan_complete,
            run_once=run_once,
            counts=counts,
            now=stamp,
            generation=generation,
            next_scan_at=next_text,
            active=active,
        )
        reason, message = _summary(phase, status, counts, next_text)
    # Nones included: a merge patch clears what the pass no longer has.
    scan = status.scan.model_dump(by_alias=True, mode="json") if status.scan else None
    return {
        "phase": phase.value,
        "reason": reason,
        "message": redact(message),
        "counts": counts.as_status(),
        "progress": progress_text(counts),
        "lastScanAt": format_time(status.last_scan_at) if status.last_scan_at is not None else None,
        "nextScanAt": next_text,
        "scan": scan,
        "passes": status.passes,
        "removedSucceeded": status.removed_succeeded,
        "failures": [_entry(entry) for entry in status.failures][-MAX_FAILURES:],
        "conditions": conditions,
        "observedGeneration": generation,
    }


def _summary(
    phase: BatchPhase, status: BatchStatus, counts: BatchCounts, next_scan: str | None
) -> tuple[Reason, str]:
    if phase is BatchPhase.SCANNING:
        number = status.scan.number if status.scan is not None else status.passes + 1
        found = f"{counts.discovered} objects selected so far"
        return Reason.SCANNING, f"scanning the source (pass {number}): {found}, {_tally(counts)}"
    if phase is BatchPhase.RUNNING:
        return (
            Reason.IN_PROGRESS,
            f"{counts.finished} of {counts.discovered} objects finished ({_tally(counts)})",
        )
    if phase is BatchPhase.WAITING:
        when = f" at {next_scan}" if next_scan else ""
        return Reason.WAITING_FOR_NEXT_SCAN, f"{counts.discovered} objects, {_tally(counts)}; next scan{when}"
    return Reason.FINISHED, f"all {counts.discovered} objects finished: {_tally(counts)}"
