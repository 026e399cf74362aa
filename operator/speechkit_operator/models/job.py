"""The TranscriptionJob resource: its spec as the user writes it, and the status the operator writes.

Field names follow the CRD (camelCase); Python attributes are snake_case. The CRD in
``deploy/crds/`` enforces the same constraints on the API server; these models enforce them again
so that a spec that slipped past (KMock, an older CRD) still fails with a clear message.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.contracts.stt_v2 import AudioEncoding
from speechkit_operator.logs import job_fields

BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
KEY_PATTERN = r"^[^/\x00-\x1f][^\x00-\x1f]*$"
PREFIX_PATTERN = r"^([^/\x00-\x1f][^\x00-\x1f]*)?$"
LANGUAGE_PATTERN = r"^([a-z]{2,3}-[A-Z]{2}|auto)$"
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
#: A ``.`` or ``..`` path segment. HTTP clients resolve such segments (RFC 3986) before sending, so
#: ``a/../b.wav`` would read or write ``b.wav``: keys and prefixes with one are refused. The CRD's CEL
#: rules on ``source.key`` and ``output.prefix`` use the same regular expression.
DOT_SEGMENT_PATTERN = r"(^|/)[.][.]?(/|$)"
DOT_SEGMENT_MESSAGE = (
    "must not contain . or .. path segments (such as a/../b.wav or ./a.wav): HTTP clients resolve them, "
    "so another object would be used"
)


def _no_dot_segments(value: str) -> str:
    if re.search(DOT_SEGMENT_PATTERN, value):
        raise ValueError(DOT_SEGMENT_MESSAGE)
    return value


class OutputFormat(enum.StrEnum):
    JSON = "json"
    TXT = "txt"
    SRT = "srt"
    VTT = "vtt"


ALL_FORMATS: tuple[OutputFormat, ...] = tuple(OutputFormat)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class SourceSpec(_Model):
    bucket: Annotated[str, Field(pattern=BUCKET_PATTERN)]
    key: Annotated[str, Field(pattern=KEY_PATTERN, max_length=1024)]

    @field_validator("key")
    @classmethod
    def _key_has_no_dot_segments(cls, key: str) -> str:
        return _no_dot_segments(key)


class OutputSpec(_Model):
    bucket: Annotated[str | None, Field(pattern=BUCKET_PATTERN)] = None
    prefix: Annotated[str, Field(pattern=PREFIX_PATTERN, max_length=512)] = "out/"
    formats: Annotated[list[OutputFormat], Field(min_length=1)] = Field(
        default_factory=lambda: list(ALL_FORMATS)
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_has_no_dot_segments(cls, prefix: str) -> str:
        return _no_dot_segments(prefix)

    @field_validator("formats")
    @classmethod
    def _unique(cls, formats: list[OutputFormat]) -> list[OutputFormat]:
        return list(dict.fromkeys(formats))


class ApiVersion(enum.StrEnum):
    """Which SpeechKit async API a job uses."""

    V2 = "v2"
    V3 = "v3"


class LanguageRestrictionKind(enum.StrEnum):
    WHITELIST = "whitelist"
    BLACKLIST = "blacklist"


#: Languages a v3 language restriction may list.
MAX_RESTRICTED_LANGUAGES = 16
RESTRICTED_LANGUAGE_PATTERN = r"^[a-z]{2,3}-[A-Z]{2}$"


class LanguageRestriction(_Model):
    """API v3: the languages to expect (``whitelist``) or to rule out (``blacklist``)."""

    type: LanguageRestrictionKind
    languages: Annotated[
        list[Annotated[str, Field(pattern=RESTRICTED_LANGUAGE_PATTERN)]],
        Field(min_length=1, max_length=MAX_RESTRICTED_LANGUAGES),
    ]

    @field_validator("languages")
    @classmethod
    def _unique(cls, languages: list[str]) -> list[str]:
        return list(dict.fromkeys(languages))


#: Why a v3-only field is refused on a v2 job, and the other combinations the API refuses; the CRD's CEL
#: rules on ``spec.recognition`` say the same.
V3_ONLY_MESSAGE = (
    "textNormalization, phoneFormatting, languageRestriction and speakerLabeling are API v3 options: "
    "set recognition.api to v3, or remove them"
)
RAW_RESULTS_V3_MESSAGE = (
    "rawResults is an API v2 option; with api v3, textNormalization: false (the default) writes numbers "
    "in words"
)
SPEAKERS_MONO_MESSAGE = (
    "speakerLabeling works on mono audio only (SpeechKit labels up to two speakers in one channel): "
    "remove it or audioChannelCount"
)
RESTRICTION_LANGUAGE_MESSAGE = "languageRestriction replaces languageCode: set languageCode to auto with it"


class RecognitionSpec(_Model):
    language_code: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] = "ru-RU"
    model: Annotated[str, Field(min_length=1, max_length=64)] = "general"
    profanity_filter: bool = False
    literature_text: bool = False
    raw_results: bool = False
    audio_encoding: AudioEncoding | None = None
    sample_rate_hertz: Literal[8000, 16000, 48000] | None = None
    audio_channel_count: Annotated[int | None, Field(ge=1, le=8)] = None
    #: ``v2`` (longRunningRecognize) or ``v3`` (recognizeFileAsync). The fields below are v3's.
    api: ApiVersion = ApiVersion.V2
    #: Normalize the text (numbers as digits, dates, currencies); without it numbers come in words.
    text_normalization: bool | None = None
    #: With normalization, format phone numbers (SpeechKit's default); False turns it off.
    phone_formatting: bool | None = None
    language_restriction: LanguageRestriction | None = None
    #: Label up to two speakers of mono audio.
    speaker_labeling: bool | None = None

    @model_validator(mode="after")
    def _api_options(self) -> Self:
        v3_only = (
            self.text_normalization,
            self.phone_formatting,
            self.language_restriction,
            self.speaker_labeling,
        )
        if self.api is ApiVersion.V2 and any(value is not None for value in v3_only):
            raise ValueError(V3_ONLY_MESSAGE)
        if self.api is ApiVersion.V3 and self.raw_results:
            raise ValueError(RAW_RESULTS_V3_MESSAGE)
        if self.speaker_labeling and (self.audio_channel_count or 1) > 1:
            raise ValueError(SPEAKERS_MONO_MESSAGE)
        if self.language_restriction is not None and self.language_code != "auto":
            raise ValueError(RESTRICTION_LANGUAGE_MESSAGE)
        return self


#: The longest deadline and time-to-live a job may ask for (a year), so that times stay computable.
MAX_LIFETIME_SECONDS = 366 * 24 * 3600


class TranscriptionJobSpec(_Model):
    source: SourceSpec
    output: OutputSpec = Field(default_factory=OutputSpec)
    recognition: RecognitionSpec = Field(default_factory=RecognitionSpec)
    credentials_secret: Annotated[str | None, Field(pattern=SECRET_NAME_PATTERN)] = None
    storage_secret: Annotated[str | None, Field(pattern=SECRET_NAME_PATTERN)] = None
    #: Higher first among the jobs waiting for the quota; ties go by namespace turns, then age.
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    #: Seconds from the job's creation after which an unfinished job fails ``DeadlineExceeded``
    #: (its operation is cancelled); the operator's default applies when absent.
    active_deadline_seconds: Annotated[int | None, Field(ge=1, le=MAX_LIFETIME_SECONDS)] = None
    #: Seconds after the job finished (Succeeded or Failed) after which the operator deletes it;
    #: the transcripts stay in S3. The operator's default applies when absent (none: kept).
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0, le=MAX_LIFETIME_SECONDS)] = None

    @property
    def output_bucket(self) -> str:
        return self.output.bucket or self.source.bucket


class Phase(enum.StrEnum):
    PENDING = "Pending"
    #: Waiting for its turn within the quota.
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class ConditionType(enum.StrEnum):
    SUBMITTED = "Submitted"
    #: A submission whose answer was lost (a crash, a timeout, a 502/504): SpeechKit may have
    #: created an operation that the job does not know.
    SUBMISSION_UNCERTAIN = "SubmissionUncertain"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Reason(enum.StrEnum):
    """Every reason the operator writes: in a job's or a batch's ``status.reason``, its conditions,
    its failures and its Events. CamelCase words, compared as strings on the wire (a StrEnum).

    The reasons of the speech API's gRPC codes are members too (:meth:`from_grpc`), as are those of a
    missing or unreadable Secret (:meth:`secret_not_found`, :meth:`secret_unreadable`).
    """

    # -- a job's way: status reasons, conditions and Events ----------------------------------------
    QUEUED = "Queued"
    SUBMITTING = "Submitting"
    SUBMITTED = "Submitted"
    SUBMISSION_UNCERTAIN = "SubmissionUncertain"
    ADOPTED = "Adopted"
    RUNNING = "Running"
    #: Written by earlier operators; still read as a running job's reason.
    RESTORED = "Restored"
    SUCCEEDED = "Succeeded"
    #: Events: a job failed, a problem is retried later.
    FAILED = "Failed"
    RETRY_SCHEDULED = "RetryScheduled"

    # -- why a job waits or fails ------------------------------------------------------------------
    INVALID_SPEC = "InvalidSpec"
    INVALID_ADOPTION = "InvalidAdoption"
    UNEXPECTED_ERROR = "UnexpectedError"
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    SOURCE_NOT_FOUND = "SourceNotFound"
    SOURCE_UNREADABLE = "SourceUnreadable"
    AUDIO_TOO_LONG = "AudioTooLong"
    RESULT_EXPIRED = "ResultExpired"
    OUTPUT_WRITE_FAILED = "OutputWriteFailed"
    MALFORMED_RESPONSE = "MalformedResponse"
    INVALID_CREDENTIALS = "InvalidCredentials"
    SPEECH_API_UNREACHABLE = "SpeechApiUnreachable"
    TLS_CERTIFICATE_REJECTED = "TlsCertificateRejected"
    TLS_HANDSHAKE_FAILED = "TlsHandshakeFailed"
    INVALID_CREDENTIALS_SECRET = "InvalidCredentialsSecret"
    INVALID_STORAGE_SECRET = "InvalidStorageSecret"
    STORAGE_ENDPOINT_NOT_ALLOWED = "StorageEndpointNotAllowed"
    CREDENTIALS_SECRET_NOT_FOUND = "CredentialsSecretNotFound"
    CREDENTIALS_SECRET_UNREADABLE = "CredentialsSecretUnreadable"
    STORAGE_SECRET_NOT_FOUND = "StorageSecretNotFound"
    STORAGE_SECRET_UNREADABLE = "StorageSecretUnreadable"

    # -- the audio probe's verdicts ----------------------------------------------------------------
    EMPTY_AUDIO = "EmptyAudio"
    UNKNOWN_AUDIO_FORMAT = "UnknownAudioFormat"
    UNSUPPORTED_AUDIO = "UnsupportedAudio"
    AUDIO_ENCODING_MISMATCH = "AudioEncodingMismatch"
    CORRUPT_AUDIO = "CorruptAudio"

    # -- gRPC codes of the speech API, CamelCase (GrpcCode.reason): see from_grpc -------------------
    OK = "Ok"
    #: Also the Event of a job deleted while its operation ran.
    CANCELLED = "Cancelled"
    UNKNOWN = "Unknown"
    INVALID_ARGUMENT = "InvalidArgument"
    #: Also the job's own ``activeDeadlineSeconds``: the two cannot be told apart.
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    NOT_FOUND = "NotFound"
    ALREADY_EXISTS = "AlreadyExists"
    PERMISSION_DENIED = "PermissionDenied"
    RESOURCE_EXHAUSTED = "ResourceExhausted"
    FAILED_PRECONDITION = "FailedPrecondition"
    ABORTED = "Aborted"
    OUT_OF_RANGE = "OutOfRange"
    UNIMPLEMENTED = "Unimplemented"
    INTERNAL = "Internal"
    UNAVAILABLE = "Unavailable"
    DATA_LOSS = "DataLoss"
    UNAUTHENTICATED = "Unauthenticated"

    # -- a batch: its conditions, its Events and the objects it skips or retries -------------------
    SCANNING = "Scanning"
    SCAN_COMPLETE = "ScanComplete"
    IN_PROGRESS = "InProgress"
    WAITING_FOR_NEXT_SCAN = "WaitingForNextScan"
    FINISHED = "Finished"
    COMPLETE = "Complete"
    RETRYING = "Retrying"
    WAITING_FOR_OLD_JOBS = "WaitingForOldJobs"
    WAITING_FOR_OLD_JOB = "WaitingForOldJob"
    KUBERNETES_UNAVAILABLE = "KubernetesUnavailable"
    LISTING_STUCK = "ListingStuck"
    CONFIG_UNREADABLE = "ConfigUnreadable"
    INVALID_CONFIG = "InvalidConfig"
    STORAGE_ACCESS_DENIED = "StorageAccessDenied"
    UNUSABLE_KEY = "UnusableKey"
    SEED_MARKER_INVALID = "SeedMarkerInvalid"
    TAKEN_BY_ANOTHER_JOB = "TakenByAnotherJob"

    @classmethod
    def from_grpc(cls, code: int | None) -> Reason:
        """The reason of a gRPC code as the API sends it: 3 -> ``InvalidArgument``; UNKNOWN's for a
        code that is none of the standard ones (or none at all)."""
        return cls((GrpcCode.from_wire(code) or GrpcCode.UNKNOWN).reason)

    @classmethod
    def secret_not_found(cls, role: SecretRole) -> Reason:
        """``CredentialsSecretNotFound`` or ``StorageSecretNotFound``."""
        return cls(f"{role.value}NotFound")

    @classmethod
    def secret_unreadable(cls, role: SecretRole) -> Reason:
        """``CredentialsSecretUnreadable`` or ``StorageSecretUnreadable``."""
        return cls(f"{role.value}Unreadable")


class SecretRole(enum.StrEnum):
    """Which Secret a job reads: its reasons are named after it (:meth:`Reason.secret_not_found`)."""

    CREDENTIALS = "CredentialsSecret"
    STORAGE = "StorageSecret"


class Condition(_Model):
    """A KEP-1623 condition."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


@dataclass(frozen=True)
class JobRef:
    """Which job: where it lives, its uid (a re-created job of the same name is another job), and
    the generation its spec is at."""

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


class SubmissionIntent(_Model):
    """Written to the status before a submission is sent, cleared when its answer is recorded.
    Found without an operation id after a crash, it means the submission may or may not have
    reached SpeechKit (the API has no idempotency key)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    nonce: str
    holder: str = ""
    started_at: str


class JobStatus(_Model):
    """The part of ``status`` the operator reads back to decide what to do next."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    phase: Phase | None = None
    reason: str | None = None
    operation_id: str | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    last_check_at: str | None = None
    next_check_at: str | None = None
    checks: int = 0
    next_attempt_at: str | None = None
    submission: SubmissionIntent | None = None
    uncertain_submissions: int = 0
    audio: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None
    #: The language SpeechKit detected (API v3, or ``auto``), once the job succeeded.
    detected_language: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None

    @classmethod
    def from_body(cls, status: Any) -> JobStatus:
        return cls.model_validate(dict(status or {}))


class JobStatusPatch(_Model):
    """What a transition writes into ``status``: a JSON merge patch. Only the fields given are
    written; a field given as None is deleted (``nextCheckAt: null``). :meth:`to_patch` is the one
    place a patch becomes the wire's JSON (camelCase keys; conditions without empty fields)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    phase: Phase
    reason: Reason
    message: str
    observed_generation: int | None = None
    operation_id: str | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    last_check_at: str | None = None
    next_check_at: str | None = None
    next_attempt_at: str | None = None
    checks: int | None = None
    submission: SubmissionIntent | None = None
    uncertain_submissions: int | None = None
    audio: dict[str, Any] | None = None
    outputs: dict[str, str] | None = None
    preview: str | None = None
    detected_language: str | None = None
    #: The whole list (a merge patch replaces lists).
    conditions: list[Condition] | None = None

    def to_patch(self) -> dict[str, Any]:
        patch = self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude={"conditions"})
        if "conditions" in self.model_fields_set:
            patch["conditions"] = (
                None
                if self.conditions is None
                else [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in self.conditions]
            )
        return patch
