"""What the operator does for one job, with I/O: submit it, and check it once.

Handlers call :meth:`JobWorkflow.submit` and :meth:`JobWorkflow.check` and apply the
:class:`Outcome`; decisions are delegated to the pure functions in :mod:`speechkit_operator.logic`,
and I/O to the clients. Nothing here knows about kopf, so the polling mechanism can change freely.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from speechkit_operator.clients.secrets import SecretNotFoundError, SecretReader, SecretUnreadableError
from speechkit_operator.clients.speech.base import (
    AnonymousCredentials,
    Credentials,
    OperationState,
    RecognitionRequest,
    SpeechClient,
)
from speechkit_operator.clients.speech.errors import OperationNotFoundError, SpeechApiError
from speechkit_operator.clients.storage import ObjectStorage, StorageError, StorageFactory
from speechkit_operator.config import Settings
from speechkit_operator.logic import polling, transitions
from speechkit_operator.logic.audio_probe import (
    HEAD_BYTES,
    TAIL_BYTES,
    AudioProbeError,
    DeclaredAudio,
    needs_tail,
    probe_audio,
)
from speechkit_operator.logic.credentials import SecretProblem, parse_speech_credentials, parse_storage_secret
from speechkit_operator.logic.output_keys import output_base_key, s3_uri
from speechkit_operator.logic.redaction import redact
from speechkit_operator.logic.rendering import preview, render_outputs
from speechkit_operator.logic.timestamps import format_time, parse_time, utcnow
from speechkit_operator.logs import job_fields
from speechkit_operator.models.audio import AudioEncoding, AudioInfo
from speechkit_operator.models.job import JobStatus, Phase, TranscriptionJobSpec
from speechkit_operator.models.recognition import Transcript

logger = logging.getLogger(__name__)

#: How many recent submissions to remember per process (see ``JobWorkflow.submit``).
REMEMBERED_SUBMISSIONS = 10_000


@dataclass(frozen=True)
class JobRef:
    namespace: str
    name: str
    uid: str | None = None
    generation: int | None = None

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def log(self) -> dict[str, str]:
        """``extra=`` for log records about this job (namespace and name become fields)."""
        return job_fields(self.namespace, self.name)


@dataclass(frozen=True)
class Note:
    """An Event to post on the job."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass
class Outcome:
    status: dict[str, Any] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    #: Ask for the submit handler to run again after this many seconds.
    retry_in: float | None = None


class _Problem(Exception):
    """Why a step could not go on: permanent problems fail the job, others are retried later."""

    def __init__(
        self, reason: str, message: str, *, permanent: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after


def format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "spec"
        parts.append(f"spec.{where}: {item['msg']}")
    return "invalid spec: " + "; ".join(parts)


class JobWorkflow:
    def __init__(
        self,
        settings: Settings,
        *,
        speech: SpeechClient,
        storage: StorageFactory,
        secrets: SecretReader,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.speech = speech
        self.storage = storage
        self.secrets = secrets
        self.clock = clock
        self.policy = polling.PollPolicy.from_settings(settings)
        # uid -> the status that recorded its submission. kopf may hand a handler a body older than
        # the status it has just patched (a stale watch event, a failed patch retried); this makes
        # sure such a body never leads to a second submission within this process.
        self._submitted: OrderedDict[str, dict[str, Any]] = OrderedDict()

    # -- submission ----------------------------------------------------------------------------

    async def submit(
        self, job: JobRef, raw_spec: Mapping[str, Any], status: JobStatus, *, attempt: int = 0
    ) -> Outcome:
        """Submit the job once. A job with an operation id is never submitted again."""
        if status.operation_id or (status.phase is not None and status.phase.terminal):
            return Outcome()
        if job.uid is not None and job.uid in self._submitted:
            return Outcome(status=dict(self._submitted[job.uid]))
        try:
            spec = self._parse_spec(raw_spec)
            credentials = await self._credentials(job, spec)
            storage = await self._storage(job, spec)
            audio = await self._probe_source(spec, storage)
            request = self._request(spec, storage, audio)
            operation = await self._call_submit(request, credentials)
        except _Problem as problem:
            facts = self._facts(job, status)
            if problem.permanent:
                return self._fail(job, facts, problem.reason, problem.message, submitted=False)
            delay = max(self._retry_delay(attempt), polling.honoured_retry_after(problem.retry_after))
            return self._wait(facts, problem.reason, problem.message, delay)
        except Exception as exc:  # a bug or an unforeseen library error: visible, and retried
            logger.exception("job %s: unexpected error while submitting", job, extra=job.log)
            message = f"unexpected {type(exc).__name__} while submitting; see the operator's log"
            return self._wait(
                self._facts(job, status), "UnexpectedError", message, self._retry_delay(attempt)
            )

        # The operation id is the one thing never to lose: nothing slow comes between here and
        # the status patch that records it.
        facts = self._facts(job, status)
        first = polling.first_check_at(facts.now, audio.duration_seconds, audio.channels, self.policy)
        logger.info("job %s submitted as operation %s", job, operation.id, extra=job.log)
        recorded = transitions.submitted(facts, operation_id=operation.id, audio=audio, first_check=first)
        if job.uid is not None:
            self._submitted[job.uid] = recorded
            while len(self._submitted) > REMEMBERED_SUBMISSIONS:
                self._submitted.popitem(last=False)
        return Outcome(
            status=recorded,
            notes=[Note("Normal", "Submitted", f"submitted to SpeechKit as operation {operation.id}")],
        )

    def _parse_spec(self, raw_spec: Mapping[str, Any]) -> TranscriptionJobSpec:
        try:
            return TranscriptionJobSpec.model_validate(dict(raw_spec))
        except ValidationError as exc:
            raise _Problem("InvalidSpec", format_validation_error(exc), permanent=True) from None

    async def _credentials(self, job: JobRef, spec: TranscriptionJobSpec) -> Credentials:
        name = spec.credentials_secret or self.settings.default_credentials_secret
        try:
            data = await self._read_secret(job, name, "CredentialsSecret")
        except _Problem as problem:
            # A self-hosted service may run without API keys: a job that names no Secret, in a
            # namespace without the default one, goes without an Authorization header.
            missing = problem.reason == "CredentialsSecretNotFound"
            if missing and self.settings.backend == "self-hosted" and spec.credentials_secret is None:
                return AnonymousCredentials()
            raise
        try:
            return parse_speech_credentials(name, data)
        except SecretProblem as exc:
            # A Secret can be fixed without re-creating the job: wait for it.
            raise _Problem(exc.reason, exc.message, permanent=False) from None

    async def _storage(self, job: JobRef, spec: TranscriptionJobSpec) -> ObjectStorage:
        name = spec.storage_secret or self.settings.default_storage_secret
        data = await self._read_secret(job, name, "StorageSecret")
        try:
            config = parse_storage_secret(
                name,
                data,
                default_endpoint=str(self.settings.storage_endpoint).rstrip("/"),
                default_region=self.settings.storage_region,
            )
        except SecretProblem as exc:
            raise _Problem(exc.reason, exc.message, permanent=False) from None
        return self.storage.get(config)

    async def _read_secret(self, job: JobRef, name: str, role: str) -> Mapping[str, bytes]:
        try:
            return await self.secrets.read(job.namespace, name)
        except SecretNotFoundError as exc:
            raise _Problem(f"{role}NotFound", str(exc), permanent=False) from None
        except SecretUnreadableError as exc:
            raise _Problem(f"{role}Unreadable", str(exc), permanent=False) from None

    async def _probe_source(self, spec: TranscriptionJobSpec, storage: ObjectStorage) -> AudioInfo:
        bucket, key = spec.source.bucket, spec.source.key
        where = s3_uri(bucket, key)
        try:
            head = await storage.head(bucket, key)
            first = await storage.read_range(bucket, key, f"bytes=0-{HEAD_BYTES - 1}") if head.size else b""
            tail = None
            if head.size > len(first) and needs_tail(first):
                tail = await storage.read_range(bucket, key, f"bytes=-{TAIL_BYTES}")
        except StorageError as exc:
            if exc.transient:
                raise _Problem("StorageUnavailable", exc.message, permanent=False) from None
            reason = "SourceNotFound" if exc.kind == "not_found" else "SourceUnreadable"
            message = f"source {where} cannot be used: {exc.message}"
            raise _Problem(reason, message, permanent=True) from None
        recognition = spec.recognition
        declared = DeclaredAudio(
            encoding=recognition.audio_encoding,
            sample_rate_hertz=recognition.sample_rate_hertz,
            channel_count=recognition.audio_channel_count,
        )
        try:
            return probe_audio(first, head.size, declared, tail)
        except AudioProbeError as exc:
            raise _Problem(exc.reason, f"source {where}: {exc.message}", permanent=True) from None

    def _request(
        self, spec: TranscriptionJobSpec, storage: ObjectStorage, audio: AudioInfo
    ) -> RecognitionRequest:
        pcm = audio.encoding is AudioEncoding.LINEAR16_PCM
        recognition = spec.recognition
        return RecognitionRequest(
            audio_uri=storage.object_url(
                spec.source.bucket,
                spec.source.key,
                presign=self.settings.presign_source_urls,
                expires_in=self.settings.presign_expiry_seconds,
            ),
            language_code=recognition.language_code,
            model=recognition.model,
            audio_encoding=audio.encoding,
            sample_rate_hertz=audio.sample_rate_hertz if pcm else None,
            audio_channel_count=audio.channels if pcm else None,
            profanity_filter=recognition.profanity_filter,
            literature_text=recognition.literature_text,
            raw_results=recognition.raw_results,
        )

    async def _call_submit(self, request: RecognitionRequest, credentials: Credentials) -> OperationState:
        try:
            return await self.speech.submit(request, credentials)
        except SpeechApiError as exc:
            if exc.transient:
                raise _Problem(
                    exc.reason,
                    f"submission failed, will retry: {exc}",
                    permanent=False,
                    retry_after=exc.retry_after,
                ) from None
            raise _Problem(exc.reason, f"SpeechKit rejected the job: {exc}", permanent=True) from None

    def restore(self, job: JobRef, annotated_operation_id: str, status: JobStatus) -> Outcome:
        """A job whose operation id is in its annotation but not in its status: take it from there."""
        if status.operation_id or not annotated_operation_id:
            return Outcome()
        facts = self._facts(job, status)
        logger.warning(
            "job %s: restoring operation %s from its annotation", job, annotated_operation_id, extra=job.log
        )
        return Outcome(
            status=transitions.restored(facts, operation_id=annotated_operation_id),
            notes=[
                Note("Warning", "Restored", f"operation {annotated_operation_id} restored from annotation")
            ],
        )

    # -- checking ------------------------------------------------------------------------------

    def is_check_due(self, status: JobStatus) -> bool:
        """The *when*: a pure question of the job's status and the clock."""
        return status.phase is Phase.RUNNING and polling.check_due(
            self.clock(), parse_time(status.next_check_at)
        )

    async def check(self, job: JobRef, raw_spec: Mapping[str, Any], status: JobStatus) -> Outcome:
        """The *how*: look at the operation once and act on what it says."""
        if status.phase is not Phase.RUNNING or not status.operation_id:
            return Outcome()
        try:
            return await self._check(job, raw_spec, status)
        except Exception as exc:  # a bug or an unforeseen library error: visible, and backed off
            logger.exception("job %s: unexpected error while checking", job, extra=job.log)
            facts = self._facts(job, status)
            upcoming = polling.next_check_at(facts.now, status.checks + 1, self.policy)
            message = f"unexpected {type(exc).__name__} while checking; see the operator's log"
            return self._later(facts, status.checks, "UnexpectedError", message, upcoming)

    async def _check(self, job: JobRef, raw_spec: Mapping[str, Any], status: JobStatus) -> Outcome:
        assert status.operation_id is not None
        facts = self._facts(job, status)
        try:
            spec = self._parse_spec(raw_spec)
            credentials = await self._credentials(job, spec)
        except _Problem as problem:
            if problem.permanent:
                return self._fail(job, facts, problem.reason, problem.message)
            upcoming = polling.next_check_at(facts.now, status.checks + 1, self.policy)
            return self._later(facts, status.checks, problem.reason, problem.message, upcoming)

        checks = status.checks + 1
        try:
            operation = await self.speech.get_operation(status.operation_id, credentials)
        except OperationNotFoundError:
            return self._fail(
                job,
                facts,
                "ResultExpired",
                f"operation {status.operation_id} is unknown to SpeechKit: results are kept for 3 days",
            )
        except SpeechApiError as exc:
            message = f"checking operation {status.operation_id} failed: {exc}"
            if exc.http_status in (401, 403):
                # Credentials expired or rotated, a role briefly removed: SpeechKit keeps the result
                # for 3 days, so wait for the Secret to be fixed (re-read at the next check) rather
                # than throw the result away. An expired result ends the job as ResultExpired.
                self.secrets.forget(
                    job.namespace, spec.credentials_secret or self.settings.default_credentials_secret
                )
                upcoming = polling.next_check_at(facts.now, checks, self.policy, exc.retry_after)
                return self._later(
                    facts, checks, exc.reason, f"{message}; fix the credentials Secret", upcoming
                )
            if not exc.transient:
                return self._fail(job, facts, exc.reason, message)
            upcoming = polling.next_check_at(facts.now, checks, self.policy, exc.retry_after)
            return self._later(facts, checks, exc.reason, message, upcoming)

        verdict = transitions.judge_operation(operation)
        if isinstance(verdict, transitions.OperationFailed):
            return self._fail(job, facts, verdict.reason, verdict.message)
        if isinstance(verdict, transitions.StillRunning):
            upcoming = polling.next_check_at(facts.now, checks, self.policy)
            return Outcome(status=transitions.checked(facts, checks=checks, next_check=upcoming))
        channels = int((status.audio or {}).get("channels") or 1)
        return await self._finish(job, spec, facts, checks, verdict.operation, channels)

    async def _finish(
        self,
        job: JobRef,
        spec: TranscriptionJobSpec,
        facts: transitions.Facts,
        checks: int,
        operation: OperationState,
        channels: int,
    ) -> Outcome:
        """Write every requested transcript, then mark the job done. On failure, try again later
        (backing off like the checks): SpeechKit keeps the result for 3 days."""
        transcript = operation.transcript or Transcript()
        if channels > 1:
            # Multichannel audio gets per-channel outputs even when only one channel had speech.
            transcript = replace(transcript, channels=tuple(str(tag) for tag in range(1, channels + 1)))
        bucket = spec.output_bucket
        base_key = output_base_key(spec.source.key, spec.output.prefix)
        rendered = render_outputs(operation.response or {}, transcript, spec.output.formats, base_key)
        try:
            storage = await self._storage(job, spec)
            await asyncio.gather(
                *(storage.put(bucket, out.key, out.body, out.content_type) for out in rendered)
            )
        except _Problem as problem:
            upcoming = polling.next_check_at(facts.now, checks, self.policy)
            return self._later(facts, checks, problem.reason, problem.message, upcoming)
        except StorageError as exc:
            message = f"writing transcripts to s3://{bucket}/ failed: {exc.message}"
            upcoming = polling.next_check_at(facts.now, checks, self.policy)
            return self._later(facts, checks, "OutputWriteFailed", message, upcoming)
        outputs = {out.name: s3_uri(bucket, out.key) for out in rendered}
        logger.info("job %s succeeded: %d outputs", job, len(outputs), extra=job.log)
        return Outcome(
            status=transitions.succeeded(facts, checks=checks, outputs=outputs, preview=preview(transcript)),
            notes=[Note("Normal", "Succeeded", f"transcripts written to s3://{bucket}/{base_key}.*")],
        )

    # -- outcomes ------------------------------------------------------------------------------

    def _facts(self, job: JobRef, status: JobStatus) -> transitions.Facts:
        conditions = [c.model_dump(by_alias=True, exclude_none=True) for c in status.conditions]
        return transitions.Facts(now=self.clock(), generation=job.generation, conditions=conditions)

    def _retry_delay(self, attempt: int) -> float:
        return transitions.retry_delay(
            attempt, base=self.settings.submit_retry_base_seconds, cap=self.settings.submit_retry_max_seconds
        )

    def _fail(
        self, job: JobRef, facts: transitions.Facts, reason: str, message: str, *, submitted: bool = True
    ) -> Outcome:
        status = transitions.failed(facts, reason, message, submitted=submitted)
        logger.warning("job %s failed: %s: %s", job, reason, status["message"], extra=job.log)
        return Outcome(status=status, notes=[Note("Warning", "Failed", f"{reason}: {status['message']}")])

    def _wait(self, facts: transitions.Facts, reason: str, message: str, delay: float) -> Outcome:
        """Not submitted: the submit handler runs again after ``delay`` seconds."""
        status = transitions.waiting(facts, reason, f"{message}; retrying in {delay:.0f}s")
        return Outcome(
            status=status,
            notes=[Note("Warning", "RetryScheduled", f"{reason}: {status['message']}")],
            retry_in=delay,
        )

    def _later(
        self,
        facts: transitions.Facts,
        checks: int,
        reason: str,
        message: str,
        upcoming: datetime,
    ) -> Outcome:
        """Still running, but this look did not get through: look again at ``upcoming``."""
        text = redact(f"{message}; next check at {format_time(upcoming)}")
        return Outcome(
            status=transitions.checked(
                facts, checks=checks, next_check=upcoming, reason=reason, message=text
            ),
            notes=[Note("Warning", "RetryScheduled", f"{reason}: {text}")],
        )
