"""The TranscriptionBatch resource: every recording under an S3 prefix, one child TranscriptionJob each.

Field names follow the CRD ``deploy/crds/transcriptionbatches.speechkit.dev.yaml`` (camelCase);
Python attributes are snake_case. As with the job, the CRD enforces the same constraints on the API
server and ``tests/unit/test_deploy.py`` fails when the two drift apart.

The ``template`` is a TranscriptionJob spec without ``source`` and ``priority``: each child gets the
template, ``source: {bucket, key}`` and the batch's ``priority`` (:func:`child_job_spec`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from speechkit_operator.constants import API_VERSION, BATCH_KIND
from speechkit_operator.models.glob import compile_glob
from speechkit_operator.models.job import (
    BUCKET_PATTERN,
    DOT_SEGMENT_MESSAGE,
    DOT_SEGMENT_PATTERN,
    MAX_LIFETIME_SECONDS,
    PREFIX_PATTERN,
    SECRET_NAME_PATTERN,
    Condition,
    OutputSpec,
    RecognitionSpec,
    TranscriptionJobSpec,
)
from speechkit_operator.models.timestamps import format_time, parse_time

#: Include/exclude globs: relative to the prefix, so no leading slash; no control characters.
GLOB_PATTERN = r"^[^/\x00-\x1f][^\x00-\x1f]*$"
#: A file extension such as ``.wav`` or ``.opus`` (matched ignoring case).
EXTENSION_PATTERN = r"^[.][A-Za-z0-9][A-Za-z0-9._-]*$"
DEFAULT_EXTENSIONS: tuple[str, ...] = (".wav", ".ogg", ".opus", ".mp3")
#: What the batch's children (and the seed script) write: never taken for audio, so that a batch
#: whose outputs land under its own source prefix does not transcribe its transcripts.
TRANSCRIPT_EXTENSIONS: tuple[str, ...] = (".json", ".txt", ".srt", ".vtt")
#: The seed script's results prefix when ``seedLog`` is set and ``seedOutput`` is not (``out`` when
#: the source prefix has no trailing slash, as the seed's own ``S3_PREFIX=input`` style has).
DEFAULT_SEED_OUTPUT = "out/"

MAX_PREFIX_LENGTH = 512
#: Bounds on the globs (each list, each glob), so that matching a listed key against all of them
#: stays cheap whatever they are (specs are untrusted, and every key of every page is matched on
#: the operator's event loop): 64 globs of the worst shape these allow take a few milliseconds for
#: a key of 1,000 segments (tests/unit/test_batch_selection.py).
MAX_GLOBS = 32
MAX_GLOB_LENGTH = 256
#: Segments (the parts between slashes) of one glob.
MAX_GLOB_SEGMENTS = 16
#: ``**`` segments of one glob, and segments between two of them (``**/archive/old/**``): only a
#: run of segments between two ``**`` has to be searched for along the key.
MAX_GLOB_DOUBLE_STARS = 2
MAX_SEGMENTS_BETWEEN_DOUBLE_STARS = 2
MAX_EXTENSIONS = 32
MAX_EXTENSION_LENGTH = 32
MIN_RESCAN_SECONDS = 30
DEFAULT_MAX_IN_FLIGHT = 1000
MAX_IN_FLIGHT = 100_000
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS = 20
#: The status keeps this many of the latest failures.
MAX_FAILURES = 10

Glob = Annotated[str, Field(pattern=GLOB_PATTERN, min_length=1, max_length=MAX_GLOB_LENGTH)]
Extension = Annotated[str, Field(pattern=EXTENSION_PATTERN, max_length=MAX_EXTENSION_LENGTH)]
SeedPrefix = Annotated[str | None, Field(pattern=PREFIX_PATTERN, min_length=1, max_length=MAX_PREFIX_LENGTH)]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _no_dot_segments(value: str | None) -> str | None:
    if value is not None and re.search(DOT_SEGMENT_PATTERN, value):
        raise ValueError(DOT_SEGMENT_MESSAGE)
    return value


def seed_slash_problem(name: str, seed: str, prefix: str) -> str | None:
    """Why the seed prefix ``seed`` (``seedLog`` or ``seedOutput``, the ``name``) cannot go with the
    source ``prefix``, or None.

    The seed script glues its variables to the keys as they are: the marker of a key is
    ``S3_PREFIX_LOG + key[len(S3_PREFIX):] + ".json"``, its result ``S3_PREFIX_OUT`` + the same,
    and so are :func:`~speechkit_operator.logic.batch_selection.seed_marker_key` and
    ``seed_result_key``. Its own style is ``S3_PREFIX=input``, ``S3_PREFIX_LOG=log``: the key after
    the prefix starts with ``/`` and the marker is ``log/a.wav.json``. A prefix ending with ``/``
    (or empty) takes the ``/`` away from the key, so the seed prefix must end with one instead. When
    the two disagree, the keys looked for are ``loga.wav.json`` or ``log//a.wav.json``, which the
    script never writes in its own style: the marker would not be found and the object submitted
    again although the script's operation may be running. So both must end with ``/``, or neither
    (the empty prefix counting as ending with one)."""
    folder = not prefix or prefix.endswith("/")
    if seed.endswith("/") == folder:
        return None
    example = f"{prefix}a.wav" if folder else f"{prefix}/a.wav"
    what = "marker" if name == "seedLog" else "result"
    looked_for = f"{seed}{example[len(prefix) :]}.json"
    meant = f"{seed.rstrip('/')}/a.wav.json"
    if not prefix:
        fix = f"with the empty prefix, end {name} with a slash ({name}: {seed}/)"
    elif folder:
        fix = (
            f"write both with a trailing slash (prefix: {prefix}, {name}: {seed}/) or both without, as "
            f"the script's variables are (prefix: {prefix[:-1]}, {name}: {seed})"
        )
    else:
        fix = (
            f"write both without a trailing slash, as the script's variables are (prefix: {prefix}, "
            f"{name}: {seed[:-1]}), or both with one (prefix: {prefix}/, {name}: {seed})"
        )
    return (
        f"{name} {seed!r} and prefix {prefix!r} disagree about the trailing slash: the seed script "
        f"glues them to the key as they are, so the {what} of {example} would be looked for at "
        f"{looked_for!r}, not at {meant!r}; {fix}"
    )


def glob_shape_problem(glob: str) -> str | None:
    """Why ``glob`` is too deep for a batch (see :data:`MAX_GLOB_SEGMENTS` and the two after it),
    or None. The CRD's CEL rules on ``include`` and ``exclude`` say the same."""
    segments = glob.split("/")
    if len(segments) > MAX_GLOB_SEGMENTS:
        return (
            f"glob {glob!r} has {len(segments)} segments, more than the {MAX_GLOB_SEGMENTS} a glob may "
            "have (a segment is what lies between two slashes)"
        )
    stars = [index for index, segment in enumerate(segments) if segment == "**"]
    if len(stars) > MAX_GLOB_DOUBLE_STARS:
        return (
            f"glob {glob!r} has {len(stars)} ** segments, more than the {MAX_GLOB_DOUBLE_STARS} a glob "
            "may have (**/tmp/** already covers tmp at any depth, and anything under it)"
        )
    if len(stars) == 2 and stars[1] - stars[0] - 1 > MAX_SEGMENTS_BETWEEN_DOUBLE_STARS:
        return (
            f"glob {glob!r} has {stars[1] - stars[0] - 1} segments between its two **, more than the "
            f"{MAX_SEGMENTS_BETWEEN_DOUBLE_STARS} allowed (as in **/archive/old/**)"
        )
    return None


class BatchSourceSpec(_Model):
    """Where the recordings are, and which of them to transcribe."""

    bucket: Annotated[str, Field(pattern=BUCKET_PATTERN)]
    #: A plain string prefix, as S3 lists it: ``calls`` also covers ``calls-old/``; ``calls/`` does not.
    prefix: Annotated[str, Field(pattern=PREFIX_PATTERN, max_length=MAX_PREFIX_LENGTH)] = ""
    #: Globs on the key relative to the prefix (see models/glob.py); empty: every key.
    include: Annotated[list[Glob], Field(max_length=MAX_GLOBS)] = Field(default_factory=list)
    exclude: Annotated[list[Glob], Field(max_length=MAX_GLOBS)] = Field(default_factory=list)
    extensions: Annotated[list[Extension], Field(min_length=1, max_length=MAX_EXTENSIONS)] = Field(
        default_factory=lambda: list(DEFAULT_EXTENSIONS)
    )
    #: The seed script's marker prefix (its ``S3_PREFIX_LOG``): objects it submitted are not
    #: submitted again. Keys under it are never selected. It ends with ``/`` exactly when
    #: ``prefix`` does or is empty (:func:`seed_slash_problem`).
    seed_log: SeedPrefix = None
    #: The seed script's results prefix (its ``S3_PREFIX_OUT``); see :attr:`effective_seed_output`.
    #: The same rule about the trailing slash.
    seed_output: SeedPrefix = None

    @field_validator("prefix", "seed_log", "seed_output")
    @classmethod
    def _prefix_has_no_dot_segments(cls, value: str | None) -> str | None:
        return _no_dot_segments(value)

    @field_validator("include", "exclude")
    @classmethod
    def _globs_compile(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            if (problem := glob_shape_problem(glob)) is not None:
                raise ValueError(problem)
            compile_glob(glob)
        return globs

    @field_validator("extensions")
    @classmethod
    def _audio_extensions(cls, extensions: list[str]) -> list[str]:
        for extension in extensions:
            if extension.lower() in TRANSCRIPT_EXTENSIONS:
                raise ValueError(
                    f"{extension} is what transcripts and the seed's files end in, not audio: "
                    "a batch would transcribe its own outputs"
                )
        return list(dict.fromkeys(extensions))

    @model_validator(mode="after")
    def _seed_prefixes_do_not_cover_the_source(self) -> BatchSourceSpec:
        for name, seed in (("seedLog", self.seed_log), ("seedOutput", self.seed_output)):
            if seed is None:
                continue
            # Under a prefix without a trailing slash the script's keys are seed + "/" + ...
            folder = seed if not self.prefix or self.prefix.endswith("/") else f"{seed}/"
            if self.prefix.startswith(folder):
                raise ValueError(
                    f"{name} {seed!r} covers the whole source prefix {self.prefix!r}: every key would be "
                    f"taken for one of the seed script's files; give {name} its own prefix"
                )
        return self

    @model_validator(mode="after")
    def _seed_prefixes_end_like_the_source_prefix(self) -> BatchSourceSpec:
        problems = [
            problem
            for name, seed in (("seedLog", self.seed_log), ("seedOutput", self.seed_output))
            if seed is not None and (problem := seed_slash_problem(name, seed, self.prefix)) is not None
        ]
        if problems:
            raise ValueError(". Also: ".join(problems))
        return self

    @property
    def effective_seed_output(self) -> str | None:
        """``seedOutput``; when only ``seedLog`` is set, ``out/`` (``out`` under a prefix without a
        trailing slash, whose relative keys start with ``/`` in the seed's concatenation)."""
        if self.seed_output is not None or self.seed_log is None:
            return self.seed_output
        if self.prefix and not self.prefix.endswith("/"):
            return DEFAULT_SEED_OUTPUT.rstrip("/")
        return DEFAULT_SEED_OUTPUT


class BatchTemplate(_Model):
    """A TranscriptionJob spec without ``source`` and ``priority``: what every child gets."""

    output: OutputSpec = Field(default_factory=OutputSpec)
    #: ``languageCode`` has no default in the CRD, so that an explicit one can be told from an absent
    #: one (``model_fields_set``): only an absent one yields to the source prefix's config.json.
    recognition: RecognitionSpec = Field(default_factory=RecognitionSpec)
    credentials_secret: Annotated[str | None, Field(pattern=SECRET_NAME_PATTERN)] = None
    storage_secret: Annotated[str | None, Field(pattern=SECRET_NAME_PATTERN)] = None
    active_deadline_seconds: Annotated[int | None, Field(ge=1, le=MAX_LIFETIME_SECONDS)] = None
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0, le=MAX_LIFETIME_SECONDS)] = None

    @property
    def language_is_explicit(self) -> bool:
        return "language_code" in self.recognition.model_fields_set


class TranscriptionBatchSpec(_Model):
    source: BatchSourceSpec
    template: BatchTemplate = Field(default_factory=BatchTemplate)
    #: Seconds between scans of the source; absent: one scan, then the batch completes.
    rescan_interval: Annotated[int | None, Field(ge=MIN_RESCAN_SECONDS, le=MAX_LIFETIME_SECONDS)] = None
    #: Children not yet finished at any one time.
    max_in_flight: Annotated[int, Field(ge=1, le=MAX_IN_FLIGHT)] = DEFAULT_MAX_IN_FLIGHT
    #: Tries per object; only transient failures are tried again (logic/batch_progress.py).
    max_attempts: Annotated[int, Field(ge=1, le=MAX_ATTEMPTS)] = DEFAULT_MAX_ATTEMPTS
    #: Passed to every child (higher first among the jobs waiting for the quota).
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0

    @property
    def output_bucket(self) -> str:
        return self.template.output.bucket or self.source.bucket

    @property
    def run_once(self) -> bool:
        return self.rescan_interval is None


def child_job_spec(
    batch: TranscriptionBatchSpec, key: str, language_override: str | None = None
) -> dict[str, Any]:
    """The spec of the child TranscriptionJob for ``key`` (camelCase, every default written out):
    the template, ``source: {bucket, key}`` and the batch's priority. ``language_override`` (the
    source prefix's config.json) replaces the template's language only when the template does not
    set one. Raises ValueError (a pydantic ValidationError) when the result is not a valid job spec,
    for example a key with ``..`` segments or a malformed override."""
    template = batch.template
    recognition = template.recognition.model_dump(by_alias=True, exclude_none=True, mode="json")
    if language_override is not None and not template.language_is_explicit:
        recognition["languageCode"] = language_override
    body: dict[str, Any] = {
        "source": {"bucket": batch.source.bucket, "key": key},
        "output": template.output.model_dump(by_alias=True, exclude_none=True, mode="json"),
        "recognition": recognition,
        "credentialsSecret": template.credentials_secret,
        "storageSecret": template.storage_secret,
        "priority": batch.priority,
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "ttlSecondsAfterFinished": template.ttl_seconds_after_finished,
    }
    spec = TranscriptionJobSpec.model_validate(
        {name: value for name, value in body.items() if value is not None}
    )
    return spec.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------------


class BatchPhase(enum.StrEnum):
    """Where a batch is.

    - ``Scanning``: a pass over the source's listing is under way (children may run meanwhile).
    - ``Running``: the listing is done; some discovered objects are not finished yet.
    - ``Waiting``: a batch with ``rescanInterval`` has finished everything it found and waits for
      its next scan (it never completes).
    - ``Complete``: a run-once batch listed everything and every object it found succeeded, failed
      or was skipped. Failed objects do not make the batch ``Failed``: they are counted.
    - ``Failed``: the batch itself cannot go on (its source cannot be listed, say); see ``message``.
    """

    SCANNING = "Scanning"
    RUNNING = "Running"
    WAITING = "Waiting"
    COMPLETE = "Complete"
    FAILED = "Failed"


class BatchConditionType(enum.StrEnum):
    #: The current pass over the source's listing has reached its end.
    SCAN_COMPLETE = "ScanComplete"
    #: A run-once batch is done with every object it found.
    COMPLETE = "Complete"


class _Status(_Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


def _lenient_time(value: Any) -> Any:
    """A time read back from the status: ISO 8601 text (naive meaning UTC) or a datetime; None when
    unreadable, so that a hand-edited status does not stop the batch."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        return parse_time(value)
    return None


def _lenient_count(value: Any) -> int:
    """A count read back from the status: anything but a non-negative integer is 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


#: A time in the status: a datetime in Python, written as ``2024-05-01T10:00:00.000Z``.
Moment = Annotated[
    datetime | None,
    BeforeValidator(_lenient_time),
    PlainSerializer(lambda moment: format_time(moment) if moment else None, when_used="json"),
]


class BatchStatusCounts(_Status):
    """Objects by where they are. ``discovered`` counts the selected objects found so far; each is
    also in exactly one of the other counts."""

    discovered: int = 0
    #: Found, but its child is not created yet, or not submitted yet.
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    #: Its child failed, for good (a permanent reason, or out of attempts).
    failed: int = 0
    #: Not transcribed: the seed script had done it, its transcripts exist already, or its key
    #: cannot be a job's source. The last finished pass's number (or the current pass's if larger).
    skipped: int = 0


class ScanProgress(_Status):
    """The pass over the source's listing under way (``status.scan``), so that a restart resumes it.

    Immutable: :meth:`at`, :meth:`seen` and :meth:`skip` return the next state.
    """

    #: Which pass this is: 1 for the first.
    number: int = 1
    #: The last key handled in this pass (S3 lists keys in order: the listing resumes after it).
    after: str | None = None
    #: Selected keys found so far in this pass.
    matched: int = 0
    #: Of those, the ones skipped (see BatchStatusCounts.skipped).
    skipped: int = 0
    started_at: Moment = None

    def at(self, key: str) -> ScanProgress:
        return self.model_copy(update={"after": key})

    def seen(self) -> ScanProgress:
        return self.model_copy(update={"matched": self.matched + 1})

    def skip(self) -> ScanProgress:
        return self.model_copy(update={"skipped": self.skipped + 1})


class BatchFailure(_Status):
    key: str
    reason: str
    message: str = ""


class BatchStatus(_Status):
    """The part of ``status`` the operator reads back."""

    phase: BatchPhase | None = None
    reason: str | None = None
    message: str | None = None
    counts: BatchStatusCounts = Field(default_factory=BatchStatusCounts)
    #: ``42%``: finished (succeeded, failed or skipped) of discovered, for the printer column.
    progress: str | None = None
    #: When the last pass over the listing reached its end.
    last_scan_at: Moment = None
    #: With ``rescanInterval``: when the next pass starts.
    next_scan_at: Moment = None
    #: The pass under way; None between passes.
    scan: ScanProgress | None = None
    #: Passes over the whole listing completed.
    passes: int = 0
    #: Succeeded children deleted after finishing (``ttlSecondsAfterFinished``), still counted as
    #: succeeded; the next pass counts their objects as skipped (their transcripts exist).
    removed_succeeded: Annotated[int, BeforeValidator(_lenient_count)] = 0
    #: The latest failures, newest last, at most MAX_FAILURES.
    failures: list[BatchFailure] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None

    @classmethod
    def from_body(cls, status: Any) -> BatchStatus:
        return cls.model_validate(dict(status or {}))

    def scan_state(self, now: datetime | None = None) -> ScanProgress:
        """The pass under way, or a new one (numbered after the completed ones) starting ``now``."""
        if self.scan is not None:
            return self.scan
        return ScanProgress(number=self.passes + 1, started_at=now)

    def with_scan(self, scan: ScanProgress) -> BatchStatus:
        return self.model_copy(update={"scan": scan})

    def scan_finished(self, scan: ScanProgress, now: datetime) -> BatchStatus:
        """The pass ``scan`` reached the end of the listing at ``now``: no pass under way, one more
        completed, and its skipped objects are the count of skipped ones."""
        counts = self.counts.model_copy(update={"skipped": scan.skipped})
        return self.model_copy(
            update={"scan": None, "passes": scan.number, "last_scan_at": now, "counts": counts}
        )


def batch_owner_reference(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ownerReference of the TranscriptionBatch that owns an object, from its metadata ({}:
    none does)."""
    for owner in meta.get("ownerReferences") or []:
        if (
            isinstance(owner, Mapping)
            and owner.get("kind") == BATCH_KIND
            and owner.get("apiVersion") == API_VERSION
        ):
            return owner
    return {}
