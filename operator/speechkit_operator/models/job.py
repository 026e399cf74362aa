"""The TranscriptionJob resource: its spec as the user writes it, and the status the operator writes.

Field names follow the CRD (camelCase); Python attributes are snake_case. The CRD in
``deploy/crds/`` enforces the same constraints on the API server; these models enforce them again
so that a spec that slipped past (KMock, an older CRD) still fails with a clear message.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

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


class RecognitionSpec(_Model):
    language_code: Annotated[str, Field(pattern=LANGUAGE_PATTERN)] = "ru-RU"
    model: Annotated[str, Field(min_length=1, max_length=64)] = "general"
    profanity_filter: bool = False
    literature_text: bool = False
    raw_results: bool = False
    audio_encoding: AudioEncoding | None = None
    sample_rate_hertz: Literal[8000, 16000, 48000] | None = None
    audio_channel_count: Annotated[int | None, Field(ge=1, le=8)] = None


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
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None

    @classmethod
    def from_body(cls, status: Any) -> JobStatus:
        return cls.model_validate(dict(status or {}))
