"""What the operator does for one job, with I/O: each step the scheduler asks for.

- :meth:`JobWorkflow.submit`: prepare (spec, Secrets, a look at the audio), then, one at a time per
  quota scope, write the intent, send the submission and record its answer. A crash between the
  intent and the record leaves the intent in the status: the job then knows its submission may exist.
- :meth:`JobWorkflow.resolve_uncertain`: an intent found without an operation id.
- :meth:`JobWorkflow.check`: look at the operation once; write transcripts when it is done.
- :meth:`JobWorkflow.deadline`, :meth:`JobWorkflow.delete`, :meth:`JobWorkflow.cancel`.

Every step returns a :class:`StepResult`: the job as the API server now has it (when the step wrote
it) and when the scheduler should come back. Status is written only when the phase or the reason
changes, so a job costs a handful of writes however long it runs. Decisions come from the pure
functions in :mod:`speechkit_operator.logic`; nothing here knows about kopf.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets as random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError

from speechkit_operator.clients.kube import JobStore, KubeError
from speechkit_operator.clients.secrets import SecretNotFoundError, SecretReader, SecretUnreadableError
from speechkit_operator.clients.speech.base import SpeechClient
from speechkit_operator.clients.speech.errors import (
    CredentialsError,
    MalformedResponseError,
    OperationNotFoundError,
    SpeechApiError,
)
from speechkit_operator.clients.storage import ObjectStorage, StorageError, StorageFactory
from speechkit_operator.config import Settings
from speechkit_operator.constants import ADOPT_OPERATION_ANNOTATION
from speechkit_operator.contracts.operation import OPERATION_ID_PATTERN
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.logic import lifecycle, polling, transitions
from speechkit_operator.logic.audio_probe import (
    HEAD_BYTES,
    TAIL_BYTES,
    AudioProbeError,
    DeclaredAudio,
    needs_tail,
    probe_audio,
)
from speechkit_operator.logic.credentials import SecretProblem, parse_speech_credentials, parse_storage_secret
from speechkit_operator.logic.output_keys import (
    MAX_KEY_BYTES,
    longest_output_key_bytes,
    output_base_key,
    s3_uri,
)
from speechkit_operator.logic.prediction import ProcessingRates
from speechkit_operator.logic.redaction import redact
from speechkit_operator.logic.rendering import preview, render_json, render_outputs
from speechkit_operator.metrics import OperatorMetrics
from speechkit_operator.models.audio import AudioInfo, ContainerFormat
from speechkit_operator.models.credentials import AnonymousCredentials, ApiKeyCredentials, Credentials
from speechkit_operator.models.job import (
    ApiVersion,
    ConditionType,
    JobRef,
    JobStatus,
    JobStatusPatch,
    Phase,
    Reason,
    SecretRole,
    TranscriptionJobSpec,
)
from speechkit_operator.models.operation import OperationState, RecognitionRequest
from speechkit_operator.models.recognition import Transcript
from speechkit_operator.models.timestamps import format_time, parse_time, utcnow

logger = logging.getLogger(__name__)

#: Writes of a submission's answer are retried this long before the submission is left uncertain.
RECORD_RETRY_SECONDS = 60.0
#: After the Kubernetes API could not be reached, a job is looked at again this much later.
KUBE_RETRY_SECONDS = 3.0
#: The longest audio SpeechKit accepts (4 hours); longer probed durations are refused.
MAX_AUDIO_SECONDS = 4 * 3600.0


@dataclass(frozen=True)
class Note:
    """An Event to post on the job."""

    type: Literal["Normal", "Warning"]
    reason: Reason
    message: str


@dataclass
class StepResult:
    """What a step did: the job as written (None when nothing was written), and when to come back."""

    body: dict[str, Any] | None = None
    next_check: datetime | None = None
    next_attempt: datetime | None = None
    #: Checks made so far (the status has them only as of its last write).
    checks: int | None = None
    #: The job changed under us (a resourceVersion conflict): read it again before deciding.
    stale: bool = False
    #: The job is gone from the API server.
    gone: bool = False
    #: A failed submission attempt that counts towards ``max_submit_attempts``.
    attempt_failed: bool = False
    #: SpeechKit was called (a submission or a check): the call counts against the quota.
    called: bool = False
    #: A call that failed may still have reached SpeechKit: it counts against the quota, but
    #: teaches the budget nothing.
    spent: bool = False
    #: SpeechKit answered 429: wait this many seconds (0: it did not say) and slow down.
    throttled: float | None = None
    #: Not submitted: the job's credentials bill another quota scope than it was queued in.
    scope: str | None = None
    #: Calls made beyond the one the step's token paid for (a v3 check that read its results).
    extra_calls: int = 0


@dataclass(frozen=True)
class Job:
    """A job as the scheduler knows it."""

    ref: JobRef
    spec: Mapping[str, Any]
    status: JobStatus
    resource_version: str | None = None
    #: Checks made since the last status write, in this process.
    checks: int = 0
    #: Failed submission attempts in this process.
    attempts: int = 0
    #: The quota scope whose budget this step was given (None: not budgeted).
    scope: str | None = None
    #: An operation submitted elsewhere that the job takes over instead of submitting (the adopt
    #: annotation as written: :meth:`JobWorkflow.adopt` checks it), and when it was submitted
    #: (None: unknown).
    adopt: str | None = None
    adopt_submitted_at: datetime | None = None


class Problem(Exception):
    """Why a step could not go on: permanent problems fail the job, others are retried later."""

    def __init__(
        self, reason: Reason, message: str, *, permanent: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass
class _Prepared:
    spec: TranscriptionJobSpec
    credentials: Credentials
    audio: AudioInfo
    request: RecognitionRequest


def format_validation_error(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "spec"
        parts.append(f"spec.{where}: {item['msg']}")
    return "invalid spec: " + "; ".join(parts)


@dataclass
class _Gates:
    """One submission in flight per quota scope: a crash leaves at most one uncertain."""

    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __call__(self, scope: str) -> asyncio.Lock:
        return self.locks.setdefault(scope, asyncio.Lock())


class JobWorkflow:
    def __init__(
        self,
        settings: Settings,
        *,
        speech: SpeechClient,
        speech_v3: SpeechClient | None = None,
        storage: StorageFactory,
        secrets: SecretReader,
        jobs: JobStore,
        identity: str = "",
        metrics: OperatorMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.speech = speech
        #: The client of jobs with ``recognition.api: v3``; None: such jobs fail with a clear reason.
        self.speech_v3 = speech_v3
        self.storage = storage
        self.secrets = secrets
        self.jobs = jobs
        self.identity = identity or random.token_hex(6)
        self.metrics = metrics or OperatorMetrics()
        self.clock = clock
        self.policy = polling.PollPolicy.from_settings(settings)
        self._gates = _Gates()
        #: Each model's processing pace, learned from finished jobs (see :meth:`load_rates`).
        self.rates = ProcessingRates(default=settings.seconds_per_audio_minute / 60.0)
        self._rates_saved_at: datetime | None = None
        self._rates_dirty = False
        #: Where the rates are kept: (namespace, ConfigMap name), or None.
        self.rates_store: tuple[str, str] | None = None
        # uid -> the status that records its submission, kept until it is written: an answer that
        # could not be recorded is written again, never submitted again, while this process lives.
        self._unrecorded: dict[str, JobStatusPatch] = {}
        #: Nonces of intents whose write failed, so that nothing was submitted after them.
        self._unsent_intents: set[str] = set()

    # -- submission ----------------------------------------------------------------------------

    def scope_of(self, job: Job) -> str | None:
        """The quota scope the job's calls count against, or None when it has to be looked up
        (:meth:`look_up_scope`: quotas per folder)."""
        del job
        if self.settings.backend == "cloud" and self.settings.quota_scope == "folder-id":
            return None
        return self.settings.backend

    async def look_up_scope(self, job: Job) -> str:
        """The quota scope of a job whose credentials decide it: ``folder:<folder-id>``, or the
        shared scope when its Secret names no folder or cannot be read yet (its submission then
        says why)."""
        scope = self.scope_of(job)
        if scope is not None:
            return scope
        try:
            credentials = await self._credentials(job.ref, self._parse_spec(job.spec))
        except Problem:
            return self.settings.backend
        return self._folder_scope(credentials)

    def _folder_scope(self, credentials: Credentials) -> str:
        folder = getattr(credentials, "folder_id", None)
        return f"folder:{folder}" if folder else self.settings.backend

    async def submit(self, job: Job) -> StepResult:
        """Submit the job once. A job with an operation id or an intent is never submitted here."""
        status = job.status
        if job.ref.uid and (recorded := self._unrecorded.get(job.ref.uid)):
            return await self._record(job, recorded, None)
        if status.operation_id or status.submission is not None or (status.phase and status.phase.terminal):
            return StepResult()
        try:
            prepared = await self._prepare(job)
        except Problem as problem:
            return await self._not_submitted(job, problem)
        except Exception as exc:  # a bug or an unforeseen library error: visible, and retried
            logger.exception("job %s: unexpected error while preparing", job.ref, extra=job.ref.log)
            message = (
                f"unexpected {type(exc).__name__} while preparing the submission; see the operator's log"
            )
            return await self._not_submitted(job, Problem(Reason.UNEXPECTED_ERROR, message, permanent=False))

        scope = self.scope_of(job) or self._folder_scope(prepared.credentials)
        if job.scope is not None and scope != job.scope:
            # Queued under another folder (its Secret was missing or changed): not this budget's.
            return StepResult(scope=scope)
        async with self._gates(scope):
            facts = self._facts(job)
            nonce = random.token_hex(8)
            try:
                body = await self.jobs.patch_status(
                    job.ref,
                    transitions.intent(facts, nonce=nonce, holder=self.identity).to_patch(),
                    resource_version=job.resource_version,
                )
            except KubeError as exc:
                if exc.conflict:
                    return StepResult(stale=True)
                if exc.gone:
                    return StepResult(gone=True)
                # The intent may have been written although its answer was lost: nothing was sent.
                # Not a failed attempt (nor a call): tried again soon.
                self._unsent_intents.add(nonce)
                logger.warning(
                    "job %s: could not record the intent to submit, trying again in %.0fs: %s",
                    job.ref,
                    KUBE_RETRY_SECONDS,
                    exc,
                    extra=job.ref.log,
                )
                return StepResult(next_attempt=self.clock() + timedelta(seconds=KUBE_RETRY_SECONDS))
            job = replace(job, status=JobStatus.from_body(body.get("status")), resource_version=_rv(body))
            try:
                operation = await self._speech(prepared.spec).submit(prepared.request, prepared.credentials)
            except SpeechApiError as exc:
                self.metrics.call("submit", exc.http_status or 0)
                failed = await self._submission_failed(job, exc)
                failed.spent = failed.throttled is None and not exc.certainly_unprocessed
                return failed
            except Exception as exc:
                logger.exception("job %s: unexpected error while submitting", job.ref, extra=job.ref.log)
                failed = await self._uncertain(job, f"unexpected {type(exc).__name__} while submitting")
                failed.spent = True
                return failed
            self.metrics.call("submit", 200)
            expected = self.rates.predict(
                prepared.spec.recognition.model, prepared.audio.duration_seconds, prepared.audio.channels
            )
            first = polling.first_check_at(
                self.clock(),
                prepared.audio.duration_seconds,
                prepared.audio.channels,
                self.policy,
                expected_seconds=expected,
            )
            recorded = transitions.submitted(
                self._facts(job), operation_id=operation.id, audio=prepared.audio, first_check=first
            )
            logger.info("job %s submitted as operation %s", job.ref, operation.id, extra=job.ref.log)
            result = await self._record(job, recorded, first)
            result.called = True
            return result

    async def adopt(self, job: Job) -> StepResult:
        """Take over the operation the job was created for (the seed script submitted it): record
        it as the job's own, as if submitted when the seed did; nothing is sent to SpeechKit. The
        audio is probed for its channels (the outputs depend on them); a problem with it does not
        stop the adoption: the operation exists and its result is what the user wants.

        An annotation that is not an operation id (empty, uppercase, a typo) fails the job for good,
        ``InvalidAdoption``, without submitting it: whoever wrote it meant an operation that may be
        running and paid for, and a submission would pay for the audio again."""
        status = job.status
        if (
            job.adopt is None
            or status.operation_id
            or status.submission is not None
            or (status.phase and status.phase.terminal)
        ):
            return StepResult()
        if re.fullmatch(OPERATION_ID_PATTERN, job.adopt) is None:
            return await self._fail(
                job, Reason.INVALID_ADOPTION, _invalid_adoption(job.adopt), submitted=False
            )
        audio: AudioInfo | None = None
        try:
            audio = (await self._prepare(job)).audio
        except Problem as problem:
            logger.info(
                "job %s: adopting operation %s without audio details: %s",
                job.ref,
                job.adopt,
                problem.message,
                extra=job.ref.log,
            )
        now = self.clock()
        submitted_at = min(job.adopt_submitted_at or now, now)
        recorded = transitions.adopted(
            self._facts(job), operation_id=job.adopt, submitted_at=submitted_at, audio=audio, first_check=now
        )
        try:
            body = await self.jobs.patch_status(
                job.ref, recorded.to_patch(), resource_version=job.resource_version
            )
        except KubeError as exc:
            if exc.conflict:
                return StepResult(stale=True)
            if exc.gone:
                return StepResult(gone=True)
            raise
        logger.info("job %s adopted operation %s", job.ref, job.adopt, extra=job.ref.log)
        await self._notes(
            job.ref,
            [
                Note(
                    "Normal",
                    Reason.ADOPTED,
                    f"took over operation {job.adopt}, submitted elsewhere; not submitted again",
                )
            ],
        )
        return StepResult(body=body, next_check=now, checks=0)

    async def _record(self, job: Job, recorded: JobStatusPatch, first: datetime | None) -> StepResult:
        """Write the submission's answer; retried for a while, and kept in memory meanwhile."""
        if job.ref.uid:
            self._unrecorded[job.ref.uid] = recorded
        deadline = asyncio.get_running_loop().time() + RECORD_RETRY_SECONDS
        delay = 0.5
        while True:
            try:
                body = await self.jobs.patch_status(job.ref, recorded.to_patch())
                break
            except KubeError as exc:
                if exc.gone:
                    # Deleted while its submission was in flight: nobody will read the result.
                    await self._cancel_quietly(job, str(recorded.operation_id))
                    self._unrecorded.pop(job.ref.uid or "", None)
                    return StepResult(gone=True)
                if asyncio.get_running_loop().time() + delay > deadline:
                    logger.error(  # noqa: TRY400 - the reason is in the message, no traceback
                        "job %s: operation %s could not be recorded: %s",
                        job.ref,
                        recorded.operation_id,
                        exc,
                        extra=job.ref.log,
                    )
                    return StepResult(next_attempt=self.clock() + timedelta(seconds=10))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 8.0)
        self._unrecorded.pop(job.ref.uid or "", None)
        operation_id = recorded.operation_id
        await self._notes(
            job.ref, [Note("Normal", Reason.SUBMITTED, f"submitted to SpeechKit as operation {operation_id}")]
        )
        return StepResult(body=body, next_check=first, checks=0)

    async def _submission_failed(self, job: Job, exc: SpeechApiError) -> StepResult:
        if isinstance(exc, CredentialsError):
            problem = Problem(exc.reason, f"the credentials cannot be used: {exc}", permanent=False)
            return await self._not_submitted(job, problem, clear_intent=True)
        if not exc.transient:
            return await self._fail(job, exc.reason, f"SpeechKit rejected the job: {exc}", submitted=False)
        if exc.http_status == 429:
            # Over the quota: the job keeps its place; the budget slows down and waits.
            wait = polling.honoured_retry_after(exc.retry_after)
            facts = self._facts(job)
            upcoming = facts.now + timedelta(seconds=wait)
            message = f"SpeechKit's submission quota is exhausted; retrying at {format_time(upcoming)}"
            try:
                body = await self._write(job.ref, transitions.waiting(facts, exc.reason, message, upcoming))
            except KubeError as write_error:
                if write_error.gone:
                    return StepResult(gone=True, throttled=wait)
                # The budget must hear of the 429 all the same; the intent stays, known unsent.
                if job.status.submission is not None:
                    self._unsent_intents.add(job.status.submission.nonce)
                return StepResult(next_attempt=upcoming, throttled=wait)
            return StepResult(body=body, next_attempt=upcoming, throttled=wait)
        if exc.certainly_unprocessed:
            problem = Problem(
                exc.reason,
                f"submission failed, will retry: {exc}",
                permanent=False,
                retry_after=exc.retry_after,
            )
            return await self._not_submitted(job, problem, clear_intent=True)
        return await self._uncertain(job, f"the answer to the submission was lost ({exc})")

    async def resolve_uncertain(self, job: Job) -> StepResult:
        """An intent without an operation id: the process that wrote it died before the answer came."""
        if job.ref.uid and (recorded := self._unrecorded.get(job.ref.uid)):
            return await self._record(job, recorded, None)
        intent = job.status.submission
        if job.status.operation_id or intent is None:
            return StepResult()
        if intent.nonce in self._unsent_intents:
            # Its write seemed to fail, so nothing was sent after it: clear it, nothing is uncertain.
            self._unsent_intents.discard(intent.nonce)
            facts = self._facts(job)
            message = "the intent to submit was written, but nothing was sent; submitting now"
            body = await self._write(
                job.ref, transitions.waiting(facts, Reason.SUBMITTING, message, facts.now)
            )
            return StepResult(body=body, next_attempt=facts.now)
        return await self._uncertain(
            job, f"the operator stopped while submitting (intent {intent.nonce} of {intent.started_at})"
        )

    async def _uncertain(self, job: Job, why: str) -> StepResult:
        recorded = job.status.uncertain_submissions + 1
        decision = lifecycle.after_uncertain(
            recorded, self.settings.uncertain_submission_policy, self.settings.max_uncertain_submissions
        )
        facts = self._facts(job)
        if decision == "resubmit":
            message = (
                f"{why}; SpeechKit may have created an operation that this job does not know: "
                "submitting once more"
            )
            # Not at once: a burst of 5xx answers is over before the job tries again.
            upcoming = facts.now + timedelta(seconds=self._retry_delay(recorded - 1))
            patch = transitions.uncertain(facts, recorded=recorded, message=message, next_attempt=upcoming)
            next_attempt: datetime | None = upcoming
        else:
            message = (
                f"{why}; SpeechKit may have created an operation that this job does not know"
                + (f" ({recorded} uncertain submissions)" if recorded > 1 else "")
                + ": not submitting again"
            )
            patch = transitions.uncertain_failed(facts, recorded=recorded, message=message)
            next_attempt = None
        logger.warning("job %s: submission uncertain: %s", job.ref, message, extra=job.ref.log)
        body = await self._write(job.ref, patch)
        await self._notes(job.ref, [Note("Warning", Reason.SUBMISSION_UNCERTAIN, redact(message))])
        return StepResult(body=body, next_attempt=next_attempt)

    async def _prepare(self, job: Job) -> _Prepared:
        spec = self._parse_spec(job.spec)
        credentials = await self._credentials(job.ref, spec)
        storage = await self._storage(job.ref, spec)
        audio = await self._probe_source(spec, storage)
        length = longest_output_key_bytes(
            spec.source.key,
            spec.output.prefix,
            channels=audio.channels,
            speakers=bool(spec.recognition.speaker_labeling),
        )
        if length > MAX_KEY_BYTES:
            raise Problem(
                Reason.INVALID_SPEC,
                f"invalid spec: output.prefix + source.key + the longest output suffix is {length} bytes "
                f"of UTF-8, more than the {MAX_KEY_BYTES} that S3 keys may have",
                permanent=True,
            )
        if spec.recognition.speaker_labeling and audio.channels > 1:
            raise Problem(
                Reason.INVALID_SPEC,
                f"invalid spec: recognition.speakerLabeling works on mono audio only, and the audio has "
                f"{audio.channels} channels: remove speakerLabeling to recognise each channel, or mix the "
                "audio down to one channel",
                permanent=True,
            )
        self._speech(spec)  # a v3 job without a v3 client fails here, before anything is submitted
        return _Prepared(spec, credentials, audio, self._request(spec, storage, audio))

    def _reader(self, spec: TranscriptionJobSpec) -> SpeechClient:
        """The client that looks at the job's operation: the v3 client reads v2 operations too, so an
        adopted operation (one the cron script started with v2) is read whichever API the job names."""
        return self.speech_v3 if self.speech_v3 is not None else self._speech(spec)

    def _speech(self, spec: TranscriptionJobSpec) -> SpeechClient:
        """The client of the job's API version."""
        if spec.recognition.api is not ApiVersion.V3:
            return self.speech
        if self.speech_v3 is None:
            raise Problem(
                Reason.INVALID_SPEC, "recognition.api v3 is not available in this operator", permanent=True
            )
        return self.speech_v3

    def _parse_spec(self, raw_spec: Mapping[str, Any]) -> TranscriptionJobSpec:
        try:
            return TranscriptionJobSpec.model_validate(dict(raw_spec))
        except ValidationError as exc:
            raise Problem(Reason.INVALID_SPEC, format_validation_error(exc), permanent=True) from None

    async def _credentials(self, job: JobRef, spec: TranscriptionJobSpec) -> Credentials:
        own_key = self.settings.self_hosted_api_key
        key = own_key.get_secret_value().strip() if own_key is not None else ""
        if self.settings.backend == "self-hosted" and spec.credentials_secret is None and key:
            # The operator's own key to its own recognition service (the chart sets it).
            return ApiKeyCredentials(api_key=key)
        name = spec.credentials_secret or self.settings.default_credentials_secret
        try:
            data = await self._read_secret(job, name, SecretRole.CREDENTIALS)
        except Problem as problem:
            # A self-hosted service may run without API keys: a job that names no Secret, in a
            # namespace without the default one, goes without an Authorization header.
            missing = problem.reason == Reason.CREDENTIALS_SECRET_NOT_FOUND
            if missing and self.settings.backend == "self-hosted" and spec.credentials_secret is None:
                return AnonymousCredentials()
            raise
        try:
            return parse_speech_credentials(name, data)
        except SecretProblem as exc:
            # A Secret can be fixed without re-creating the job: wait for it.
            raise Problem(exc.reason, exc.message, permanent=False) from None

    async def _storage(self, job: JobRef, spec: TranscriptionJobSpec) -> ObjectStorage:
        return await self.storage_for(job, spec.storage_secret)

    async def storage_for(self, owner: JobRef, secret: str | None) -> ObjectStorage:
        """The storage client for the Secret ``secret`` (else the default) in ``owner``'s
        namespace; :class:`Problem` when the Secret is missing or unusable."""
        name = secret or self.settings.default_storage_secret
        data = await self._read_secret(owner, name, SecretRole.STORAGE)
        try:
            config = parse_storage_secret(
                name,
                data,
                default_endpoint=str(self.settings.storage_endpoint).rstrip("/"),
                default_region=self.settings.storage_region,
                allowed_endpoints=self.settings.storage_endpoints,
            )
        except SecretProblem as exc:
            raise Problem(exc.reason, exc.message, permanent=False) from None
        return self.storage.get(config)

    async def _read_secret(self, job: JobRef, name: str, role: SecretRole) -> Mapping[str, bytes]:
        try:
            return await self.secrets.read(job.namespace, name)
        except SecretNotFoundError as exc:
            raise Problem(Reason.secret_not_found(role), str(exc), permanent=False) from None
        except SecretUnreadableError as exc:
            raise Problem(Reason.secret_unreadable(role), str(exc), permanent=False) from None

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
                raise Problem(Reason.STORAGE_UNAVAILABLE, exc.message, permanent=False) from None
            reason = Reason.SOURCE_NOT_FOUND if exc.kind == "not_found" else Reason.SOURCE_UNREADABLE
            message = f"source {where} cannot be used: {exc.message}"
            raise Problem(reason, message, permanent=True) from None
        recognition = spec.recognition
        declared = DeclaredAudio(
            encoding=recognition.audio_encoding,
            sample_rate_hertz=recognition.sample_rate_hertz,
            channel_count=recognition.audio_channel_count,
        )
        try:
            audio = probe_audio(first, head.size, declared, tail)
        except AudioProbeError as exc:
            raise Problem(exc.reason, f"source {where}: {exc.message}", permanent=True) from None
        if audio.duration_seconds is not None and audio.duration_seconds > MAX_AUDIO_SECONDS:
            raise Problem(
                Reason.AUDIO_TOO_LONG,
                f"source {where}: the audio lasts {audio.duration_seconds:.0f} s by its headers, more than "
                f"the {MAX_AUDIO_SECONDS / 3600:.0f} hours SpeechKit accepts (or the file is corrupt)",
                permanent=True,
            )
        return audio

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
            wav_container=audio.container is ContainerFormat.WAV,
            profanity_filter=recognition.profanity_filter,
            literature_text=recognition.literature_text,
            raw_results=recognition.raw_results,
            text_normalization=recognition.text_normalization,
            phone_formatting=recognition.phone_formatting,
            language_restriction=(
                None
                if recognition.language_restriction is None
                else (
                    recognition.language_restriction.type.value,
                    tuple(recognition.language_restriction.languages),
                )
            ),
            speaker_labeling=bool(recognition.speaker_labeling),
        )

    async def _not_submitted(self, job: Job, problem: Problem, *, clear_intent: bool = False) -> StepResult:
        """Not submitted: fail a permanent problem; retry a transient one later, within the cap."""
        if problem.permanent:
            return await self._fail(job, problem.reason, problem.message, submitted=False)
        attempts = job.attempts + 1
        if attempts >= self.settings.max_submit_attempts:
            message = f"gave up after {attempts} attempts to submit: {problem.message}"
            return await self._fail(job, problem.reason, message, submitted=False)
        delay = max(self._retry_delay(attempts - 1), polling.honoured_retry_after(problem.retry_after))
        facts = self._facts(job)
        upcoming = facts.now + timedelta(seconds=delay)
        message = f"{problem.message}; retrying at {format_time(upcoming)} (attempt {attempts})"
        result = StepResult(next_attempt=upcoming, attempt_failed=True)
        # A repeated problem writes nothing (the status says it, with the first retry's time).
        changed = job.status.reason != problem.reason
        if changed or clear_intent:
            result.body = await self._write(
                job.ref, transitions.waiting(facts, problem.reason, message, upcoming)
            )
            if changed:
                await self._notes(
                    job.ref, [Note("Warning", Reason.RETRY_SCHEDULED, f"{problem.reason}: {redact(message)}")]
                )
        return result

    async def queued(self, job: Job, *, position: int, eta: datetime) -> StepResult:
        """The job waits for the quota: say where it stands, once (a write, no Event)."""
        if job.status.phase is Phase.QUEUED or job.status.submission is not None:
            return StepResult()
        patch = transitions.queued(self._facts(job), position=position, eta=eta)
        try:
            body = await self.jobs.patch_status(
                job.ref, patch.to_patch(), resource_version=job.resource_version
            )
        except KubeError:
            return StepResult()  # the job changed meanwhile: saying it waits can wait
        return StepResult(body=body)

    # -- checking ------------------------------------------------------------------------------

    async def check(self, job: Job) -> StepResult:
        """Look at the operation once and act on what it says."""
        if not job.status.operation_id or (job.status.phase is not None and job.status.phase.terminal):
            # Nothing to look at: come back much later rather than at once.
            return StepResult(next_check=self.clock() + timedelta(minutes=5))
        try:
            return await self._check(job)
        except KubeError:
            raise  # the apiserver is unavailable: the scheduler looks again soon
        except Exception as exc:  # a bug or an unforeseen library error: visible, and backed off
            logger.exception("job %s: unexpected error while checking", job.ref, extra=job.ref.log)
            message = f"unexpected {type(exc).__name__} while checking; see the operator's log"
            return await self._later(job, job.checks, Reason.UNEXPECTED_ERROR, message)

    async def _check(self, job: Job) -> StepResult:
        status = job.status
        assert status.operation_id is not None
        try:
            spec = self._parse_spec(job.spec)
            speech = self._reader(spec)
            credentials = await self._credentials(job.ref, spec)
        except Problem as problem:
            if problem.permanent:
                return await self._fail(job, problem.reason, problem.message)
            # Not a check: SpeechKit was not asked. Back off as the checks do.
            return await self._later(job, job.checks, problem.reason, problem.message, counted=False)
        scope = self.scope_of(job) or self._folder_scope(credentials)
        if job.scope is not None and scope != job.scope:
            return StepResult(scope=scope)  # its folder's budget pays for its checks

        checks = job.checks + 1
        try:
            operation = await speech.get_operation(status.operation_id, credentials)
        except SpeechApiError as exc:
            self.metrics.call("operation", exc.http_status or 0)
            result = await self._check_failed(job, spec, status.operation_id, checks, exc)
            result.called = True
            return result
        self.metrics.call("operation", 200)
        result = await self._checked(job, spec, checks, operation)
        result.called = True
        result.extra_calls = max(0, operation.calls - 1)
        return result

    async def _check_failed(
        self, job: Job, spec: TranscriptionJobSpec, operation_id: str, checks: int, exc: SpeechApiError
    ) -> StepResult:
        if isinstance(exc, OperationNotFoundError):
            message = f"operation {operation_id} is unknown to SpeechKit: results are kept for 3 days"
            return await self._fail(job, Reason.RESULT_EXPIRED, message, checks=checks)
        if isinstance(exc, MalformedResponseError):
            if exc.body is not None and exc.body.get("done") is True:
                return await self._malformed(job, spec, exc, checks)
            return await self._later(job, checks, exc.reason, f"checking operation {operation_id}: {exc}")
        message = f"checking operation {operation_id} failed: {exc}"
        if exc.http_status == 429:
            # Over the check quota: no write; the budget slows down and the check comes later.
            wait = polling.honoured_retry_after(exc.retry_after)
            upcoming = self.clock() + timedelta(seconds=max(wait, self.policy.initial_interval_seconds))
            return StepResult(next_check=upcoming, checks=job.checks, throttled=wait)
        if isinstance(exc, CredentialsError) or exc.http_status in (401, 403):
            # Credentials expired, rotated or broken: SpeechKit keeps the result for 3 days, so wait
            # for the Secret to be fixed (re-read at the next check) rather than throw the result
            # away. An expired result ends the job as ResultExpired.
            self.secrets.forget(
                job.ref.namespace, spec.credentials_secret or self.settings.default_credentials_secret
            )
            reason = exc.reason if exc.http_status in (401, 403) else Reason.INVALID_CREDENTIALS
            return await self._later(
                job, checks, reason, f"{message}; fix the credentials Secret", retry_after=exc.retry_after
            )
        if not exc.transient:
            return await self._fail(job, exc.reason, message, checks=checks)
        return await self._later(job, checks, exc.reason, message, retry_after=exc.retry_after)

    async def _checked(
        self, job: Job, spec: TranscriptionJobSpec, checks: int, operation: OperationState
    ) -> StepResult:
        status = job.status
        verdict = transitions.judge_operation(operation)
        if isinstance(verdict, transitions.OperationFailed):
            return await self._fail(job, verdict.reason, verdict.message, checks=checks)
        if isinstance(verdict, transitions.StillRunning):
            upcoming = polling.next_check_at(self.clock(), checks, self.policy)
            if status.reason not in (Reason.SUBMITTED, Reason.RUNNING, Reason.RESTORED):
                # A transient problem is over: say so once.
                body = await self._write(
                    job.ref,
                    transitions.checked(self._facts(job), checks=checks, next_check=upcoming),
                )
                return StepResult(body=body, next_check=upcoming, checks=checks)
            return StepResult(next_check=upcoming, checks=checks)
        channels = int((status.audio or {}).get("channels") or 1)
        return await self._finish(job, spec, checks, verdict.operation, channels)

    async def _finish(
        self, job: Job, spec: TranscriptionJobSpec, checks: int, operation: OperationState, channels: int
    ) -> StepResult:
        """Write every requested transcript, then mark the job done. A write that may succeed later
        is retried with the checks' backoff (SpeechKit keeps the result for 3 days); one that never
        can (no such bucket, a key S3 refuses) fails the job."""
        transcript = operation.transcript or Transcript()
        if spec.recognition.speaker_labeling:
            transcript = replace(transcript, speakers=True)
        elif channels > 1:
            # Multichannel audio gets per-channel outputs even when only one channel had speech.
            transcript = replace(transcript, channels=tuple(str(tag) for tag in range(1, channels + 1)))
        bucket = spec.output_bucket
        base_key = output_base_key(spec.source.key, spec.output.prefix)
        rendered = render_outputs(operation.response or {}, transcript, spec.output.formats, base_key)
        try:
            storage = await self._storage(job.ref, spec)
            # Every write runs to its end: none is left running unwatched when another one fails.
            written = await asyncio.gather(
                *(storage.put(bucket, out.key, out.body, out.content_type) for out in rendered),
                return_exceptions=True,
            )
            for failure in written:
                if isinstance(failure, BaseException):
                    raise failure
        except Problem as problem:
            return await self._later(job, checks, problem.reason, problem.message)
        except StorageError as exc:
            message = f"writing transcripts to s3://{bucket}/ failed: {exc.message}"
            if exc.kind in ("not_found", "invalid"):
                return await self._fail(
                    job, Reason.OUTPUT_WRITE_FAILED, f"{message}; it cannot succeed", checks=checks
                )
            return await self._later(job, checks, Reason.OUTPUT_WRITE_FAILED, message)
        outputs = {out.name: s3_uri(bucket, out.key) for out in rendered}
        logger.info("job %s succeeded: %d outputs", job.ref, len(outputs), extra=job.ref.log)
        finished = parse_time(operation.modified_at)
        if finished is not None:
            self.metrics.detection_latency.observe(max(0.0, (self.clock() - finished).total_seconds()))
        self.metrics.checks_per_job.observe(checks)
        if job.adopt is None:  # an adopted operation's true submission time is not known
            await self._learn(spec, job.status, finished)
        patch = transitions.succeeded(
            self._facts(job),
            checks=checks,
            outputs=outputs,
            preview=preview(transcript),
            detected_language=transcript.language_code,
        )
        body = await self._write(job.ref, patch)
        await self._notes(
            job.ref, [Note("Normal", Reason.SUCCEEDED, f"transcripts written to s3://{bucket}/{base_key}.*")]
        )
        return StepResult(body=body, checks=checks)

    async def _malformed(
        self, job: Job, spec: TranscriptionJobSpec, exc: MalformedResponseError, checks: int
    ) -> StepResult:
        """A finished operation whose result has an unknown shape: keep the raw answer, then fail."""
        bucket = spec.output_bucket
        key = f"{output_base_key(spec.source.key, spec.output.prefix)}.json"
        kept = ""
        try:
            storage = await self._storage(job.ref, spec)
            await storage.put(bucket, key, render_json(exc.body or {}), "application/json")
            kept = f"; the raw answer is in {s3_uri(bucket, key)}"
        except (Problem, StorageError) as problem:
            kept = f"; the raw answer could not be kept ({problem})"
        return await self._fail(job, Reason.MALFORMED_RESPONSE, f"{exc}{kept}", checks=checks)

    async def _learn(self, spec: TranscriptionJobSpec, status: JobStatus, finished: datetime | None) -> None:
        """One more sample of the model's pace (submission to the operation's end); saved at most
        once a minute."""
        submitted = parse_time(status.submitted_at)
        audio = status.audio or {}
        if submitted is None or finished is None:
            return
        took = (finished - submitted).total_seconds()
        if not self.rates.learn(
            spec.recognition.model, audio.get("durationSeconds"), int(audio.get("channels") or 1), took
        ):
            return
        self._rates_dirty = True
        now = self.clock()
        if self._rates_saved_at is None or now - self._rates_saved_at >= timedelta(seconds=60):
            await self.save_rates()

    async def load_rates(self) -> None:
        """The paces kept by an earlier process (at startup)."""
        if self.rates_store is None:
            return
        namespace, name = self.rates_store
        try:
            data = await self.jobs.read_config(namespace, name)
        except KubeError as exc:
            logger.warning("the learned processing paces could not be read: %s", exc)
            return
        if data and "rates.json" in data:
            self.rates = ProcessingRates.from_json(data["rates.json"], default=self.rates.default)
            logger.info("learned processing paces: %s", ", ".join(sorted(self.rates.rates)) or "none")

    async def save_rates(self) -> None:
        if self.rates_store is None or not self._rates_dirty:
            return
        namespace, name = self.rates_store
        try:
            await self.jobs.write_config(namespace, name, {"rates.json": self.rates.to_json()})
        except KubeError as exc:
            logger.warning("the learned processing paces could not be kept: %s", exc)
            return
        self._rates_saved_at = self.clock()
        self._rates_dirty = False

    # -- the end of a job ----------------------------------------------------------------------

    async def deadline(self, job: Job, seconds: int) -> StepResult:
        """The job ran out of time: cancel its operation (best effort) and fail it."""
        if job.status.phase is not None and job.status.phase.terminal:
            return StepResult()
        message = f"the job did not finish within its deadline of {seconds} s from its creation"
        if operation_id := self._operation_of(job):
            cancelled = await self._cancel_quietly(job, operation_id)
            message += f"; operation {operation_id} " + (
                "cancelled" if cancelled else "could not be cancelled"
            )
        return await self._fail(
            job, Reason.DEADLINE_EXCEEDED, message, submitted=job.status.operation_id is not None
        )

    async def delete(self, job: Job) -> StepResult:
        """``ttlSecondsAfterFinished`` has passed: delete the job (its transcripts stay in S3)."""
        logger.info(
            "job %s: deleting it, its time to live after finishing has passed", job.ref, extra=job.ref.log
        )
        try:
            await self.jobs.delete(job.ref)
        except KubeError as exc:
            logger.warning("job %s: could not delete it: %s", job.ref, exc, extra=job.ref.log)
            return StepResult(next_attempt=self.clock() + timedelta(seconds=60))
        return StepResult(gone=True)

    def _operation_of(self, job: Job) -> str | None:
        """The job's operation id: in its status, or only in memory when its record failed."""
        if job.status.operation_id:
            return job.status.operation_id
        recorded = self._unrecorded.pop(job.ref.uid or "", None)
        return recorded.operation_id if recorded else None

    async def cancel(self, job: Job) -> None:
        """The job was deleted while its operation ran: cancel the operation, best effort. Never an
        adopted one: it was submitted elsewhere (the seed script's, paid for), and a batch deleted
        to be applied again adopts it anew."""
        if job.status.phase is not None and job.status.phase.terminal:
            return
        operation_id = self._operation_of(job)
        if not operation_id:
            return
        if _adopted(job):
            logger.info(
                "job %s deleted: operation %s is adopted (submitted elsewhere), not cancelled",
                job.ref,
                operation_id,
                extra=job.ref.log,
            )
            return
        cancelled = await self._cancel_quietly(job, operation_id)
        verdict = "cancelled" if cancelled else "could not be cancelled (best effort)"
        await self._notes(
            job.ref,
            [
                Note(
                    "Normal" if cancelled else "Warning",
                    Reason.CANCELLED,
                    f"job deleted: operation {operation_id} {verdict}",
                )
            ],
        )

    async def _cancel_quietly(self, job: Job, operation_id: str) -> bool:
        try:
            spec = self._parse_spec(job.spec)
            credentials = await self._credentials(job.ref, spec)
            await self._speech(spec).cancel(operation_id, credentials)
        except (Problem, SpeechApiError) as exc:
            logger.warning(
                "job %s: operation %s not cancelled: %s", job.ref, operation_id, exc, extra=job.ref.log
            )
            return False
        logger.info("job %s: operation %s cancelled", job.ref, operation_id, extra=job.ref.log)
        return True

    # -- outcomes ------------------------------------------------------------------------------

    def _facts(self, job: Job) -> transitions.Facts:
        conditions = [c.model_dump(by_alias=True, exclude_none=True) for c in job.status.conditions]
        return transitions.Facts(now=self.clock(), generation=job.ref.generation, conditions=conditions)

    def _retry_delay(self, attempt: int) -> float:
        return transitions.retry_delay(
            attempt, base=self.settings.submit_retry_base_seconds, cap=self.settings.submit_retry_max_seconds
        )

    async def _write(self, job: JobRef, patch: JobStatusPatch) -> dict[str, Any] | None:
        """Write the job's status (``patch``, made JSON). A KubeError leaves the step: the scheduler
        forgets a job that is gone (deleted, or another one under its name) and looks again soon at
        the others."""
        return await self.jobs.patch_status(job, patch.to_patch())

    async def _notes(self, job: JobRef, notes: list[Note]) -> None:
        for note in notes:
            await self.jobs.post_event(job, note.type, note.reason, redact(note.message))

    async def _fail(
        self, job: Job, reason: Reason, message: str, *, submitted: bool = True, checks: int | None = None
    ) -> StepResult:
        status = transitions.failed(self._facts(job), reason, message, submitted=submitted)
        if checks is not None:
            status = transitions.finished_checking(status, checks=checks)
        logger.warning("job %s failed: %s: %s", job.ref, reason, status.message, extra=job.ref.log)
        body = await self._write(job.ref, status)
        await self._notes(job.ref, [Note("Warning", Reason.FAILED, f"{reason}: {status.message}")])
        return StepResult(body=body, checks=checks)

    async def _later(
        self,
        job: Job,
        checks: int,
        reason: Reason,
        message: str,
        *,
        retry_after: float | None = None,
        counted: bool = True,
    ) -> StepResult:
        """Still running, but this look did not get through: look again later, backing off. The
        status and an Event change only when the reason does."""
        backoff = checks if counted else job.checks + 1
        upcoming = polling.next_check_at(self.clock(), max(1, backoff), self.policy, retry_after)
        result = StepResult(next_check=upcoming, checks=checks)
        if job.status.reason != reason:
            text = redact(f"{message}; next check at {format_time(upcoming)}")
            patch = transitions.checked(
                self._facts(job), checks=checks, next_check=upcoming, reason=reason, message=text
            )
            result.body = await self._write(job.ref, patch)
            await self._notes(job.ref, [Note("Warning", Reason.RETRY_SCHEDULED, f"{reason}: {text}")])
        return result


def _adopted(job: Job) -> bool:
    """Whether the job took over an operation submitted elsewhere (its adopt annotation, or its
    Submitted condition says Adopted: the annotation may have been edited since)."""
    if job.adopt is not None:
        return True
    return any(
        condition.type == ConditionType.SUBMITTED and condition.reason == Reason.ADOPTED
        for condition in job.status.conditions
    )


def _invalid_adoption(value: str) -> str:
    """Why a job whose adopt annotation is not an operation id failed, and what to do about it."""
    shown = repr(value) if len(value) <= 70 else repr(value[:69]) + "…"
    return (
        f"the annotation {ADOPT_OPERATION_ANNOTATION}: {shown} is not a SpeechKit operation id "
        "(1 to 64 lowercase ASCII letters and digits, such as e03sup6d5h7rq5f3tmeh), so the job was "
        "not submitted: the operation it was meant to take over may be running. To transcribe the "
        "object with a new (paid) operation, delete the job and create it without the annotation; "
        "to take the operation over, create it with the operation's id"
    )


def _rv(body: Mapping[str, Any]) -> str | None:
    version = (body.get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None
