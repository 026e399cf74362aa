"""TranscriptionBatch: every recording under a prefix, one child TranscriptionJob per object.

One task per batch walks the source prefix a page at a time (S3 key order, the last key handled kept
in the batch's status, so a restart goes on where it stopped) and gives each selected object one
child job, with a deterministic name: the same object never gets two jobs, whatever restarts,
overlapping scans or copied manifests do, because a second creation of a name is refused by the API
server. Children are created lazily, at most ``maxInFlight`` unfinished at once, and wait for their
turn in the scheduler like any job. An object whose transcripts exist already is skipped; with
``source.seedLog`` the seed script's markers are read: an operation still in flight (or finished
with no result kept) is adopted by the child, never submitted again; one finished with its result in
the seed's output prefix is skipped, unless that result is a failed operation (then the object is
transcribed anew). Our own transcripts are looked for first: an object that has them is skipped,
whatever the seed's marker says. A child that failed for a transient reason gets another attempt
(a new child, ``<name>-<attempt>``) until ``maxAttempts``.

The children's phases come from the jobs' watch stream (:meth:`BatchController.observe_job`),
after one paginated listing when the batch's task starts; the batch's status holds counts, never a
list of objects, and is written at most every :data:`STATUS_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from speechkit_operator.clients.kube import JobStore, KubeError
from speechkit_operator.clients.storage import ListedObject, ObjectStorage, StorageError
from speechkit_operator.constants import (
    ADOPT_OPERATION_ANNOTATION,
    ADOPT_SUBMITTED_AT_ANNOTATION,
    API_VERSION,
    ATTEMPT_ANNOTATION,
    BATCH_KIND,
    BATCH_LABEL,
    BATCH_UID_LABEL,
    JOB_KIND,
    OBJECT_LABEL,
)
from speechkit_operator.logic import batch_progress, batch_selection
from speechkit_operator.logic.output_keys import (
    MAX_KEY_BYTES,
    PER_TAG_INFIX,
    longest_output_key_bytes,
    output_base_key,
)
from speechkit_operator.logic.redaction import redact
from speechkit_operator.models.batch import (
    BatchFailure,
    BatchPhase,
    BatchStatus,
    TranscriptionBatchSpec,
    batch_owner_reference,
    child_job_spec,
)
from speechkit_operator.models.job import JobRef, Reason
from speechkit_operator.models.timestamps import format_time, utcnow
from speechkit_operator.workflow import JobWorkflow, Problem, format_validation_error

logger = logging.getLogger(__name__)

#: Seconds between two status writes of a batch (counts change with every child).
STATUS_INTERVAL = 2.0
#: Seconds before a scan that could not go on (storage down, a missing Secret) is tried again.
SCAN_RETRY = 30.0
#: The most bytes read of ``config.json`` and of a seed marker.
SMALL_FILE_LIMIT = 4096
#: Objects looked at (seed markers, existing outputs) at once during a scan.
LOOKUPS_AT_ONCE = 8
#: Keys listed to find the subtitles of an object transcribed with subtitles only (one per channel).
SUBTITLE_PROBE_KEYS = 100
#: Seconds before a page whose objects still have jobs being deleted (a batch deleted and applied
#: again: the garbage collector removes the old children) is looked at again.
OLD_JOB_RETRY = 5.0
#: Seconds an object waits for an old job of its name to go before the scan goes on without it (a
#: foreign finalizer can hold a job being deleted for ever): the object is skipped in this pass,
#: with the reason ``WaitingForOldJob`` in the batch's failures, and the next pass tries it again.
OLD_JOB_PATIENCE = 600.0
#: The largest seed result read to tell a failed operation from a transcribed one (the seed writes
#: an operation's JSON whatever it holds, an error included; a failed one is a few hundred bytes).
SEED_RESULT_LIMIT = 64 * 1024
#: A child's phase, in the order phases go: an event never moves a child back.
PHASE_RANK = {"": 0, "Pending": 1, "Queued": 2, "Running": 3, "Succeeded": 4, "Failed": 4}
ACTIVE_PHASES = ("", "Pending", "Queued", "Running")


@dataclass
class _Child:
    attempt: int
    phase: str
    #: Deleted after it succeeded (``ttlSecondsAfterFinished``): still counted, never created again.
    removed: bool = False


@dataclass(frozen=True)
class _Retry:
    """A child to create again: the object's next attempt, with the language the failed one had."""

    object_name: str
    key: str
    attempt: int
    language: str | None


@dataclass
class _Batch:
    ref: JobRef
    body: dict[str, Any]
    spec: TranscriptionBatchSpec | None
    problem: str | None
    status: BatchStatus
    generation: int | None
    #: Object name (shared by its attempts) -> the latest attempt's child.
    children: dict[str, _Child] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)
    #: Children being created (not seen yet), object name -> attempt: they count as in flight.
    creating: dict[str, int] = field(default_factory=dict)
    #: Children to create again, oldest first.
    retries: deque[_Retry] = field(default_factory=deque)
    #: Succeeded children deleted before this process listed the batch's children (from the
    #: status): counted as succeeded until the next pass counts their objects as skipped.
    removed_earlier: int = 0
    #: Succeeded children deleted since (their tombstones are in ``children``).
    removed_now: int = 0
    #: Children created in the pass under way (a pass that created none posts no event).
    created_in_pass: int = 0
    #: Something for the batch's task to do (a child moved, a retry queued, the spec changed).
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: A place for a child may have freed (a child finished or went, a reservation ended).
    room: asyncio.Event = field(default_factory=asyncio.Event)
    #: What ends a paused scan's wait early: the spec changed, the batch was deleted, a stop.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: bool = False
    deleted: bool = False
    task: asyncio.Task[None] | None = None
    listed: bool = False
    #: The generation whose invalid spec was reported.
    reported: int | None = None
    #: Why the scan is paused (reason, message), until it goes on.
    scan_problem: tuple[Reason, str] | None = None
    #: Job name -> when its object began waiting for an old job of that name to go (only the
    #: objects that wait, or gave up waiting: one given up waiting gives up at once next pass).
    old_jobs: dict[str, datetime] = field(default_factory=dict)


class BatchController:
    def __init__(self, workflow: JobWorkflow, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.workflow = workflow
        self.jobs: JobStore = workflow.jobs
        self.clock = clock
        self._batches: dict[str, _Batch] = {}
        self._stopping = False
        self._started = False

    # -- what the watch streams deliver --------------------------------------------------------

    def observe_batch(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        name, namespace, uid = meta.get("name"), meta.get("namespace"), meta.get("uid")
        if not name or not namespace or not uid:
            return
        batch = self._batches.get(uid)
        if deleted or meta.get("deletionTimestamp"):
            if batch is not None:
                batch.deleted = True
                _wake(batch)
                del self._batches[uid]
            return
        generation = meta.get("generation")
        spec, problem = _parse_spec(body.get("spec"))
        if batch is None:
            batch = self._batches[uid] = _Batch(
                ref=JobRef(namespace, name, uid=uid),
                body=dict(body),
                spec=spec,
                problem=problem,
                status=BatchStatus.from_body(body.get("status")),
                generation=int(generation) if generation else None,
            )
            batch.removed_earlier = batch.status.removed_succeeded
            if self._started:
                self._start(batch)
            return
        if generation and int(generation) != batch.generation:
            batch.generation = int(generation)
            batch.spec, batch.problem = spec, problem
            batch.dirty = True
            _wake(batch)

    def observe_job(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        """A job event: a batch's child moves its counts (and may need another attempt)."""
        meta = body.get("metadata") or {}
        owner = _batch_owner(meta)
        batch = self._batches.get(owner) if owner else None
        if batch is None:
            return
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        object_name = labels.get(OBJECT_LABEL) or meta.get("name") or ""
        attempt = _attempt(annotations)
        status = body.get("status") or {}
        phase = str(status.get("phase") or "")
        known = batch.children.get(object_name)
        if known is not None and known.attempt > attempt:
            return  # an earlier attempt's event
        if deleted or meta.get("deletionTimestamp"):
            if known is not None and known.attempt == attempt and not known.removed:
                if PHASE_RANK.get(phase, 0) > PHASE_RANK.get(known.phase, 0):
                    # The last word of the child (a watch may skip a modification before it).
                    batch.counts[known.phase] -= 1
                    known.phase = phase
                    batch.counts[phase] += 1
                if known.phase == "Succeeded":
                    # Its time to live after finishing: its transcripts stay, so does its count.
                    known.removed = True
                    batch.removed_now += 1
                else:
                    # Deleted by a person (a failed child is not deleted by its time to live):
                    # the next pass gives the object a new child.
                    batch.counts[known.phase] -= 1
                    del batch.children[object_name]
                self._changed(batch)
            return
        if known is not None and known.attempt == attempt:
            if PHASE_RANK.get(phase, 0) <= PHASE_RANK.get(known.phase, 0):
                return
            batch.counts[known.phase] -= 1
            known.phase = phase
        else:
            if known is not None:
                batch.counts[known.phase] -= 1
            if batch.creating.get(object_name, attempt) <= attempt:
                batch.creating.pop(object_name, None)  # its reservation becomes the child
            known = batch.children[object_name] = _Child(attempt, phase)
        batch.counts[phase] += 1
        if phase == "Failed":
            self._child_failed(batch, object_name, attempt, body)
        self._changed(batch)

    def _child_failed(self, batch: _Batch, object_name: str, attempt: int, body: Mapping[str, Any]) -> None:
        status = body.get("status") or {}
        spec = body.get("spec") or {}
        reason = str(status.get("reason") or "Failed")
        message = str(status.get("message") or "")
        key = str((spec.get("source") or {}).get("key") or "")
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        if ADOPT_OPERATION_ANNOTATION in annotations:
            # The seed script's operation: a new child would submit the object a second time.
            self._remember_failure(
                batch, key, reason, f"{message} (adopted from the seed script: not retried)"
            )
            return
        max_attempts = batch.spec.max_attempts if batch.spec is not None else 1
        if key and batch_progress.retry_decision(reason, attempt, max_attempts):
            language = (spec.get("recognition") or {}).get("languageCode")
            batch.retries.append(
                _Retry(object_name, key, attempt + 1, language if isinstance(language, str) else None)
            )
            return
        self._remember_failure(batch, key, reason, message)

    def _changed(self, batch: _Batch) -> None:
        batch.dirty = True
        batch.changed.set()
        batch.room.set()

    # -- running -------------------------------------------------------------------------------

    def start(self) -> None:
        self._started = True
        for batch in self._batches.values():
            self._start(batch)

    def _start(self, batch: _Batch) -> None:
        if batch.task is None:
            batch.task = asyncio.create_task(self._run(batch), name=f"batch-{batch.ref}")

    async def stop(self) -> None:
        self._stopping = True
        tasks = [batch.task for batch in self._batches.values() if batch.task is not None]
        for batch in self._batches.values():
            _wake(batch)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def __len__(self) -> int:
        return len(self._batches)

    async def _run(self, batch: _Batch) -> None:
        writer = asyncio.create_task(self._write_status_loop(batch))
        try:
            await self._list_children(batch)
            while not (self._stopping or batch.deleted):
                await self._step(batch)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            if not batch.deleted:
                with contextlib.suppress(Exception):
                    await self._write_status(batch)

    async def _step(self, batch: _Batch) -> None:
        """Retries, then the scan when one is due, then wait for a change or the next scan."""
        if batch.spec is None:
            if batch.reported != batch.generation:
                batch.reported = batch.generation
                batch.dirty = True
                await self._note(batch, "Warning", Reason.INVALID_SPEC, batch.problem or "invalid spec")
            await _wait(batch.changed)
            return
        try:
            await self._retry(batch)
            if self._scan_due(batch):
                await self._scan(batch)
                await self._scan_problem(batch, None, None)
        except _ScanStopped as stopped:
            if self._stopping or batch.deleted:
                return
            if stopped.message:
                await self._scan_problem(batch, stopped.reason, stopped.message, stopped.retry_in)
            # Paused: children moving on do not end the pause, a changed spec does.
            await _wait(batch.wake, stopped.retry_in)
            return
        except Exception as exc:
            logger.exception("batch %s: unexpected error", batch.ref)
            await self._scan_problem(
                batch, Reason.UNEXPECTED_ERROR, f"{type(exc).__name__}; see the operator's log"
            )
            await _wait(batch.wake, SCAN_RETRY)
            return
        await _wait(batch.changed, self._seconds_to_next_scan(batch))

    async def _scan_problem(
        self, batch: _Batch, reason: Reason | None, message: str | None, retry_in: float | None = None
    ) -> None:
        """Say (once per reason) why the scan is paused, or that it goes on again."""
        before = batch.scan_problem
        if reason and message:
            after = f", trying again in {retry_in:.0f}s" if retry_in else ""
            batch.scan_problem = (reason, f"scan paused{after}: {message}")
        else:
            batch.scan_problem = None
        if batch.scan_problem == before:
            return
        batch.dirty = True
        if batch.scan_problem is not None and (before is None or before[0] != reason):
            logger.warning("batch %s: %s (%s)", batch.ref, batch.scan_problem[1], reason)
            await self._note(batch, "Warning", batch.scan_problem[0], batch.scan_problem[1])

    async def _list_children(self, batch: _Batch) -> None:
        """The batch's children as the API server has them now (events keep them up to date)."""
        selector = f"{BATCH_UID_LABEL}={batch.ref.uid}"
        while not (batch.listed or batch.deleted or self._stopping):
            try:
                async for child in self.jobs.list_jobs(batch.ref.namespace, label_selector=selector):
                    self.observe_job(child)
                batch.listed = True
            except KubeError as exc:
                logger.warning("batch %s: its jobs could not be listed, trying again: %s", batch.ref, exc)
                await asyncio.sleep(3.0)

    # -- creating children ---------------------------------------------------------------------

    def _active(self, batch: _Batch) -> int:
        return sum(batch.counts[phase] for phase in ACTIVE_PHASES) + len(batch.creating)

    async def _reserve(self, batch: _Batch, object_name: str, attempt: int = 1) -> None:
        """Wait until one more child may be created (``maxInFlight``) and reserve its place, one per
        object: the reservation ends when the object's child is seen (:meth:`observe_job`) or when
        :meth:`_release` says nothing was created."""
        while True:
            spec = batch.spec
            if self._stopping or batch.deleted or spec is None:
                raise _ScanStopped(None)
            if batch_progress.room(spec.max_in_flight, self._active(batch)) > 0:
                batch.creating[object_name] = attempt
                return
            await _wait(batch.room)

    def _release(self, batch: _Batch, object_name: str) -> None:
        if batch.creating.pop(object_name, None) is not None:
            batch.room.set()

    async def _retry(self, batch: _Batch) -> None:
        """Create the children of the failed objects' next attempts; one that cannot be created
        now stays first in line."""
        while batch.retries and not (self._stopping or batch.deleted):
            retry = batch.retries[0]
            await self._reserve(batch, retry.object_name, retry.attempt)
            batch.retries.popleft()
            known = batch.children.get(retry.object_name)
            created = False
            try:
                if known is None or known.attempt < retry.attempt:
                    created = await self._create(
                        batch, retry.object_name, retry.key, attempt=retry.attempt, language=retry.language
                    )
            except _Skipped:
                pass
            except _OldJob as old:
                name = f"{retry.object_name}-{retry.attempt}"
                if not self._gave_up_waiting(batch, name, retry.key, old.message):
                    batch.retries.appendleft(retry)
                    raise _ScanStopped(OLD_JOB_RETRY, old.message, Reason.WAITING_FOR_OLD_JOBS) from None
            except _ScanStopped:
                batch.retries.appendleft(retry)
                raise
            finally:
                if not created:
                    self._release(batch, retry.object_name)
            if created:
                batch.old_jobs.pop(f"{retry.object_name}-{retry.attempt}", None)
                max_attempts = batch.spec.max_attempts if batch.spec is not None else retry.attempt
                await self._note(
                    batch,
                    "Normal",
                    Reason.RETRYING,
                    f"{retry.key}: attempt {retry.attempt} of {max_attempts}",
                )

    async def _create(
        self,
        batch: _Batch,
        object_name: str,
        key: str,
        *,
        attempt: int = 1,
        language: str | None = None,
        adopt: tuple[str, datetime | None] | None = None,
    ) -> bool:
        """Create the object's child (True), or find it exists (False). Its place is reserved."""
        spec = batch.spec
        assert spec is not None
        name = object_name if attempt == 1 else f"{object_name}-{attempt}"
        labels = {BATCH_UID_LABEL: str(batch.ref.uid), OBJECT_LABEL: object_name}
        if len(batch.ref.name) <= 63:
            labels[BATCH_LABEL] = batch.ref.name
        annotations = {ATTEMPT_ANNOTATION: str(attempt)}
        if adopt is not None:
            annotations[ADOPT_OPERATION_ANNOTATION] = adopt[0]
            if adopt[1] is not None:
                annotations[ADOPT_SUBMITTED_AT_ANNOTATION] = format_time(adopt[1])
        body = {
            "apiVersion": API_VERSION,
            "kind": JOB_KIND,
            "metadata": {
                "name": name,
                "namespace": batch.ref.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": BATCH_KIND,
                        "name": batch.ref.name,
                        "uid": batch.ref.uid,
                        "controller": True,
                    }
                ],
            },
            "spec": child_job_spec(spec, key, language),
        }
        try:
            created = await self.jobs.create_job(batch.ref.namespace, body)
        except KubeError as exc:
            if exc.gone:  # the namespace is going away
                raise _ScanStopped(None) from None
            raise _ScanStopped(
                SCAN_RETRY, f"creating job {name} failed: {exc}", Reason.KUBERNETES_UNAVAILABLE
            ) from None
        if created is None:
            return await self._exists(batch, name, key)
        self.observe_job(created)  # unless its event came first
        return True

    async def _exists(self, batch: _Batch, name: str, key: str) -> bool:
        """A job of that name exists: this batch's (its events count it), one being deleted or
        left by a batch that no longer exists (the garbage collector deletes it soon: the object
        waits for it, :class:`_OldJob`), or another live batch's or a person's, which transcribes
        the object already (a copied batch, say): then it is skipped here."""
        try:
            existing = await self.jobs.get(JobRef(batch.ref.namespace, name))
        except KubeError as exc:
            raise _ScanStopped(
                SCAN_RETRY, f"reading job {name} failed: {exc}", Reason.KUBERNETES_UNAVAILABLE
            ) from None
        if existing is None:
            raise _OldJob(f"job {name} was deleted meanwhile")
        meta = existing.get("metadata") or {}
        owner = _batch_owner(meta)
        if meta.get("deletionTimestamp"):
            raise _OldJob(f"job {name} is being deleted; its object gets a new job once it is gone")
        if owner == batch.ref.uid:
            self.observe_job(existing)
            return False
        if owner is not None and not await self._batch_lives(batch, owner, _owner_name(meta)):
            raise _OldJob(
                f"job {name} belongs to a TranscriptionBatch (uid {owner}) that no longer exists; "
                "its object gets a new job once the garbage collector has deleted it"
            )
        self._remember_failure(
            batch, key, Reason.TAKEN_BY_ANOTHER_JOB, f"job {name}, not this batch's, transcribes it"
        )
        raise _Skipped

    async def _batch_lives(self, batch: _Batch, uid: str, name: str) -> bool:
        """Whether the TranscriptionBatch ``uid`` (in the batch's namespace) exists and is not
        being deleted; asked of the API server, whatever the watch stream has delivered so far."""
        known = self._batches.get(uid)
        if known is not None and not known.deleted:
            return True
        try:
            found = await self.jobs.get_batch(batch.ref.namespace, name) if name else None
        except KubeError as exc:
            raise _ScanStopped(
                SCAN_RETRY,
                f"reading TranscriptionBatch uid {uid} failed: {exc}",
                Reason.KUBERNETES_UNAVAILABLE,
            ) from None
        meta = (found or {}).get("metadata") or {}
        return meta.get("uid") == uid and not meta.get("deletionTimestamp")

    # -- scanning ------------------------------------------------------------------------------

    def _scan_due(self, batch: _Batch) -> bool:
        status = batch.status
        if status.scan is not None and status.scan.after is not None:
            return True  # a pass under way
        if status.last_scan_at is None:
            return True
        return self._seconds_to_next_scan(batch) == 0.0

    def _seconds_to_next_scan(self, batch: _Batch) -> float | None:
        spec = batch.spec
        last = batch.status.last_scan_at
        if spec is None or spec.rescan_interval is None:
            return None if last is not None else 0.0
        if last is None:
            return 0.0
        due = last + timedelta(seconds=spec.rescan_interval)
        return max(0.0, (due - self.clock()).total_seconds())

    async def _scan(self, batch: _Batch) -> None:
        spec = batch.spec
        assert spec is not None
        source = spec.source
        try:
            storage = await self.workflow.storage_for(batch.ref, spec.template.storage_secret)
        except Problem as problem:
            raise _ScanStopped(SCAN_RETRY, problem.message, problem.reason) from None
        language = await self._language(batch, storage)
        if batch.status.scan is None:
            # A new pass: it counts the objects of deleted succeeded children as skipped.
            batch.removed_earlier = 0
            batch.created_in_pass = 0
        scan = batch.status.scan_state(self.clock())
        pass_number = scan.number
        output_prefix = spec.template.output.prefix
        logger.info(
            "batch %s: scanning s3://%s/%s (pass %d)", batch.ref, source.bucket, source.prefix, pass_number
        )
        lookups = asyncio.Semaphore(LOOKUPS_AT_ONCE)
        while True:
            await self._retry(batch)
            try:
                page = await storage.list_page(source.bucket, source.prefix, start_after=scan.after)
            except StorageError as exc:
                raise _ScanStopped(
                    SCAN_RETRY,
                    f"listing s3://{source.bucket}/{source.prefix} failed: {exc.message}",
                    Reason.STORAGE_UNAVAILABLE,
                ) from None
            if page.truncated and (
                not page.objects or (scan.after is not None and page.objects[0].key <= scan.after)
            ):
                raise _ScanStopped(
                    SCAN_RETRY,
                    f"listing s3://{source.bucket}/{source.prefix} does not move past "
                    f"{scan.after!r}: the storage seems to ignore StartAfter",
                    Reason.LISTING_STUCK,
                )
            chosen = [listed for listed in page.objects if batch_selection.selected(listed.key, source)]
            named = [
                (
                    listed,
                    batch_selection.child_name(source.bucket, listed.key, spec.output_bucket, output_prefix),
                )
                for listed in chosen
            ]
            outcomes = await asyncio.gather(
                *(
                    self._handle(batch, storage, listed, object_name, language, lookups)
                    for listed, object_name in named
                    if object_name not in batch.children
                ),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            waiting = [outcome for outcome in outcomes if isinstance(outcome, str)]
            if waiting:
                # The page is looked at again (its children created meanwhile are known by then).
                more = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
                raise _ScanStopped(OLD_JOB_RETRY, waiting[0] + more, Reason.WAITING_FOR_OLD_JOBS)
            # The page is done: its objects are counted and the listing resumes after it.
            skipped = sum(1 for outcome in outcomes if outcome is True)
            scan = scan.model_copy(
                update={"matched": scan.matched + len(chosen), "skipped": scan.skipped + skipped}
            )
            if page.objects:
                scan = scan.at(page.objects[-1].key)
            batch.status = batch.status.with_scan(scan)
            self._changed(batch)
            if not page.truncated:
                break
        batch.status = batch.status.scan_finished(scan, self.clock())
        self._changed(batch)
        await self._write_status(batch)
        if pass_number == 1 or batch.created_in_pass:
            await self._note(
                batch,
                "Normal",
                Reason.SCAN_COMPLETE,
                f"pass {pass_number}: {scan.matched} objects, {batch.created_in_pass} new jobs, "
                f"{scan.skipped} skipped",
            )

    async def _language(self, batch: _Batch, storage: ObjectStorage) -> str | None:
        """The language of the seed's ``config.json`` in the source prefix (None: none there)."""
        spec = batch.spec
        assert spec is not None
        key = batch_selection.seed_config_key(spec.source.prefix)
        try:
            data = await storage.read_small(spec.source.bucket, key, limit=SMALL_FILE_LIMIT)
        except StorageError as exc:
            raise _ScanStopped(
                SCAN_RETRY,
                f"s3://{spec.source.bucket}/{key} could not be read: {exc.message}",
                Reason.STORAGE_UNAVAILABLE if exc.transient else Reason.CONFIG_UNREADABLE,
            ) from None
        if data is None:
            return None
        try:
            return batch_selection.parse_seed_config(data)
        except ValueError as exc:
            raise _ScanStopped(
                SCAN_RETRY,
                f"s3://{spec.source.bucket}/{key} is not a valid config: {exc}",
                Reason.INVALID_CONFIG,
            ) from None

    async def _handle(
        self,
        batch: _Batch,
        storage: ObjectStorage,
        listed: ListedObject,
        object_name: str,
        language: str | None,
        lookups: asyncio.Semaphore,
    ) -> bool | str:
        """One object of the page, within ``maxInFlight``: True when skipped, a message when it
        waits for an old job of its name to go (:class:`_OldJob`)."""
        async with lookups:
            await self._reserve(batch, object_name)
            created = False
            try:
                outcome = await self._new_object(batch, storage, listed, object_name, language)
                created = outcome == "created"
                if batch.old_jobs:
                    batch.old_jobs.pop(object_name, None)
                return outcome == "skipped"
            except _OldJob as old:
                if self._gave_up_waiting(batch, object_name, listed.key, old.message):
                    return True
                return old.message
            finally:
                if not created:
                    self._release(batch, object_name)

    async def _new_object(
        self,
        batch: _Batch,
        storage: ObjectStorage,
        listed: ListedObject,
        object_name: str,
        language: str | None,
    ) -> Literal["created", "exists", "skipped"]:
        """Give a new object its child (adopting the seed's operation when it has one), or skip it:
        its transcripts exist, the seed finished it, or its key cannot be a job's."""
        spec = batch.spec
        assert spec is not None
        source, output = spec.source, spec.template.output
        if (problem := batch_selection.key_problem(listed.key)) is not None:
            self._remember_failure(batch, listed.key, Reason.UNUSABLE_KEY, problem)
            return "skipped"
        speakers = bool(spec.template.recognition.speaker_labeling)
        length = longest_output_key_bytes(listed.key, output.prefix, channels=1, speakers=speakers)
        if length > MAX_KEY_BYTES:
            self._remember_failure(
                batch,
                listed.key,
                Reason.UNUSABLE_KEY,
                f"the output prefix + the key + the output suffix is {length} bytes of UTF-8, more "
                f"than the {MAX_KEY_BYTES} that S3 keys may have",
            )
            return "skipped"
        adopt: tuple[str, datetime | None] | None = None
        try:
            # Our transcripts first: the seed's marker of an operation an earlier child adopted
            # still says in flight once that child succeeded (and was deleted after its TTL).
            if await _transcribed(
                storage, spec.output_bucket, listed.key, output.prefix, [fmt.value for fmt in output.formats]
            ):
                return "skipped"
            if source.seed_log is not None:
                seed = await self._seed_state(batch, storage, listed.key)
                if seed == "done":
                    return "skipped"
                adopt = seed
        except StorageError as exc:
            if exc.kind == "invalid":
                # The storage refuses a request about this object alone: it cannot be handled.
                self._remember_failure(batch, listed.key, Reason.UNUSABLE_KEY, exc.message)
                return "skipped"
            raise _ScanStopped(
                SCAN_RETRY,
                f"looking at {listed.key} failed: {exc.message}",
                Reason.STORAGE_UNAVAILABLE if exc.transient else Reason.STORAGE_ACCESS_DENIED,
            ) from None
        try:
            child_job_spec(spec, listed.key, language)
        except ValueError as exc:
            self._remember_failure(batch, listed.key, Reason.UNUSABLE_KEY, f"not a job's source: {exc}")
            return "skipped"
        try:
            created = await self._create(batch, object_name, listed.key, language=language, adopt=adopt)
        except _Skipped:
            return "skipped"
        if created:
            batch.created_in_pass += 1
        return "created" if created else "exists"

    async def _seed_state(
        self, batch: _Batch, storage: ObjectStorage, key: str
    ) -> Literal["done"] | tuple[str, datetime | None] | None:
        """What the seed script did with ``key``: ``"done"`` (its result is in the seed's output
        prefix), an operation to adopt (in flight, or finished with no result kept: SpeechKit may
        still have it) with when it was submitted, or None (no marker: the seed never sent it)."""
        spec = batch.spec
        assert spec is not None
        source, seed_log = spec.source, spec.source.seed_log
        assert seed_log is not None
        marker_key = batch_selection.seed_marker_key(key, source.prefix, seed_log)
        try:
            data = await storage.read_small(
                source.bucket, marker_key, limit=batch_selection.MAX_SEED_FILE_BYTES
            )
        except StorageError as exc:
            if exc.kind not in ("too_large", "invalid"):
                raise
            # Whether the seed has an operation running for it is unknown: never submitted.
            self._remember_failure(batch, key, Reason.SEED_MARKER_INVALID, exc.message)
            return "done"
        if data is None:
            return None
        try:
            marker = batch_selection.parse_seed_marker(data)
        except batch_selection.SeedMarkerWithoutOperation:
            return None  # the seed's submission never got an operation: nothing runs for it
        except ValueError as exc:
            # Unreadable: whether the seed has an operation running for it is unknown, and a new
            # submission could pay twice. Counted as skipped, with the reason.
            self._remember_failure(batch, key, Reason.SEED_MARKER_INVALID, f"{marker_key}: {exc}")
            return "done"
        seed_output = source.effective_seed_output or "out/"
        result_key = batch_selection.seed_result_key(key, source.prefix, seed_output)
        if marker.done and (result := await storage.head_or_none(source.bucket, result_key)) is not None:
            if result.size > SEED_RESULT_LIMIT or not await _seed_result_failed(
                storage, source.bucket, result_key
            ):
                return "done"
            # The seed writes an operation's JSON and marks it done whatever it held: a failed
            # operation has nothing to adopt or keep, so the object is transcribed anew.
            logger.warning(
                "batch %s: %s: the seed's result s3://%s/%s is a failed operation (%s): submitting it again",
                batch.ref,
                key,
                source.bucket,
                result_key,
                marker.operation_id,
            )
            return None
        head = await storage.head_or_none(source.bucket, marker_key)
        return marker.operation_id, head.last_modified if head is not None else None

    def _gave_up_waiting(self, batch: _Batch, name: str, key: str, message: str) -> bool:
        """Whether the object of ``key`` has waited :data:`OLD_JOB_PATIENCE` seconds for the old job
        ``name`` to go: then it is given up for this pass, with the reason in the batch's failures
        (and the next pass gives it up at once if that job is still there)."""
        now = self.clock()
        since = batch.old_jobs.setdefault(name, now)
        if (now - since).total_seconds() < OLD_JOB_PATIENCE:
            return False
        logger.warning("batch %s: %s gave up waiting for job %s to go: %s", batch.ref, key, name, message)
        self._remember_failure(
            batch,
            key,
            Reason.WAITING_FOR_OLD_JOB,
            f"{message}; skipped in this pass after waiting {OLD_JOB_PATIENCE:.0f}s for it (is a "
            "finalizer holding it?), the next pass tries again",
        )
        return True

    def _remember_failure(self, batch: _Batch, key: str, reason: str, message: str) -> None:
        failures = batch_progress.remember_failure(batch.status.failures, key, reason, message)
        batch.status = batch.status.model_copy(
            update={"failures": [BatchFailure.model_validate(entry) for entry in failures]}
        )
        batch.dirty = True

    # -- status --------------------------------------------------------------------------------

    async def _write_status_loop(self, batch: _Batch) -> None:
        while not batch.deleted:
            await asyncio.sleep(STATUS_INTERVAL)
            if batch.dirty:
                await self._write_status(batch)

    async def _write_status(self, batch: _Batch) -> None:
        batch.dirty = False
        phases = Counter(batch.counts)
        phases["Succeeded"] += batch.removed_earlier
        removed = batch.removed_earlier + batch.removed_now
        batch.status = batch.status.model_copy(update={"removed_succeeded": removed})
        patch = batch_progress.status_patch(
            batch.status,
            counts=batch_progress.BatchCounts.from_phases(phases, batch.status),
            spec=batch.spec,
            problem=batch.problem,
            active=self._active(batch) + len(batch.retries),
            generation=batch.generation,
            now=self.clock(),
        )
        if batch.scan_problem is not None and batch.problem is None:
            patch["reason"], message = batch.scan_problem
            patch["message"] = redact(message)
        try:
            written = await self.jobs.patch_batch_status(batch.ref, patch)
        except KubeError as exc:
            if exc.gone:
                batch.deleted = True
                _wake(batch)
                return
            batch.dirty = True
            logger.warning("batch %s: status not written, trying again: %s", batch.ref, exc)
            return
        before = batch.status.phase
        now_written = BatchStatus.from_body(written.get("status"))
        # Only what the write decided: the scan and the failures may have moved on meanwhile.
        batch.status = batch.status.model_copy(
            update={"conditions": now_written.conditions, "phase": now_written.phase}
        )
        if now_written.phase is BatchPhase.COMPLETE and before is not BatchPhase.COMPLETE:
            counts = now_written.counts
            await self._note(
                batch,
                "Normal",
                Reason.COMPLETE,
                f"{counts.discovered} objects: {counts.succeeded} succeeded, {counts.failed} failed, "
                f"{counts.skipped} skipped",
            )

    async def _note(
        self, batch: _Batch, type_: Literal["Normal", "Warning"], reason: Reason, message: str
    ) -> None:
        await self.jobs.post_event(batch.ref, type_, reason, redact(message), kind=BATCH_KIND)


async def _wait(event: asyncio.Event, seconds: float | None = None) -> None:
    """Until ``event`` is set (or ``seconds`` pass). One set before the wait began ends it at once:
    the event is cleared only after it was seen, so no wake-up is lost."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    event.clear()


def _wake(batch: _Batch) -> None:
    """Every wait of the batch's task ends: it was deleted, its spec changed, or the operator stops."""
    batch.changed.set()
    batch.room.set()
    batch.wake.set()


class _Skipped(Exception):
    """The object is skipped (another job of its name transcribes it)."""


class _OldJob(Exception):
    """A job of the object's name is on its way out (deleted, or left by a deleted batch): the
    object gets its child once that job is gone."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _ScanStopped(Exception):
    """The scan cannot go on now: tried again in ``retry_in`` seconds (None: when something changes)."""

    def __init__(self, retry_in: float | None, message: str = "", reason: Reason | None = None) -> None:
        super().__init__(message)
        self.retry_in = retry_in
        self.message = message
        self.reason = reason


def _parse_spec(raw: Any) -> tuple[TranscriptionBatchSpec | None, str | None]:
    try:
        return TranscriptionBatchSpec.model_validate(dict(raw or {})), None
    except ValidationError as exc:
        return None, format_validation_error(exc)


def _batch_owner(meta: Mapping[str, Any]) -> str | None:
    """The uid of the TranscriptionBatch that owns a job (None: none does)."""
    uid = batch_owner_reference(meta).get("uid")
    return str(uid) if uid else None


def _owner_name(meta: Mapping[str, Any]) -> str:
    return str(batch_owner_reference(meta).get("name") or "")


def _attempt(annotations: Mapping[str, Any]) -> int:
    value = annotations.get(ATTEMPT_ANNOTATION)
    try:
        return max(1, int(value)) if value is not None else 1
    except (TypeError, ValueError):
        return 1


async def _seed_result_failed(storage: ObjectStorage, bucket: str, key: str) -> bool:
    """Whether the seed's result at ``key`` is a failed operation: a JSON object with an ``error``
    and no ``response`` (what the seed writes when SpeechKit could not transcribe the audio). A
    result too large or unreadable as JSON counts as a transcription (nothing is paid twice)."""
    try:
        data = await storage.read_small(bucket, key, limit=SEED_RESULT_LIMIT)
    except StorageError as exc:
        if exc.kind in ("too_large", "invalid"):
            return False
        raise
    if data is None:
        return False
    try:
        result = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(result, dict) and result.get("error") is not None and result.get("response") is None


async def _transcribed(
    storage: ObjectStorage, bucket: str, key: str, prefix: str, formats: list[str]
) -> bool:
    """Whether the object's transcripts exist: the JSON (else the text) next to the key, as a job
    writes it; with subtitles only, the first format's file, which multichannel audio has once per
    channel (``<base>.channel-<tag>.srt``) or speaker (``<base>.speaker-<tag>.srt``), so those are listed."""
    base = output_base_key(key, prefix)
    for single in ("json", "txt"):
        if single in formats:
            return await storage.head_or_none(bucket, f"{base}.{single}") is not None
    wanted = re.compile(rf"\.(?:{PER_TAG_INFIX})?{re.escape(formats[0])}")
    page = await storage.list_page(bucket, f"{base}.", max_keys=SUBTITLE_PROBE_KEYS)
    return any(wanted.fullmatch(listed.key[len(base) :]) for listed in page.objects)
