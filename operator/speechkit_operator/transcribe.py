"""``speechkit-operator transcribe``: one TranscriptionBatch, run once in the foreground, without
Kubernetes. The direct replacement of the seed cron script.

The same code as the operator's does the work: the :class:`~speechkit_operator.batches.BatchController`
lists the source and creates one job per object (deterministic names, the seed's markers adopted,
existing transcripts skipped, transient failures tried again), the
:class:`~speechkit_operator.scheduler.Scheduler` submits them within the quotas, one at a time with
an intent written first, and the :class:`~speechkit_operator.workflow.JobWorkflow` checks them and
writes the transcripts. Only the places change: the job objects and the batch's status live in the
bucket (:class:`~speechkit_operator.clients.bucket_state.BucketJobStore`, under
``<output prefix>.speechkit/`` by default), credentials come from environment variables
(:class:`~speechkit_operator.clients.env_secrets.EnvSecrets`), Events go to the log. So a run that
is interrupted (Ctrl-C, a crash, SIGKILL) is resumed by the next one from the bucket: a job with an
intent or an operation id is never submitted blindly again (an intent left without an answer counts
as an uncertain submission, as in the operator), and a lock object keeps two runs from overlapping.

Each run is one pass over the source: a run whose previous pass ended starts a new one (new objects
get jobs, transcribed ones are skipped), forgetting the jobs that succeeded (their transcripts are the
record; jobs that adopted a seed operation are kept, so that the seed's marker is never taken for a
new operation to adopt); a run whose previous pass was interrupted goes on from the last key handled.
A job that succeeded (and did not adopt an operation) is deleted at once, from memory and from the
bucket: a run holds only its unfinished jobs, whatever the number of objects.

Exit status: 0 when every object was transcribed or skipped, 1 when some failed, 2 for a usage or
configuration error, 3 when the lock was lost during the run, 4 when another run holds the lock
(nothing was done), 130 when interrupted (run again to resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO, cast

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from speechkit_operator.batches import BatchController
from speechkit_operator.clients.bucket_state import BucketJobStore, BucketLock, LockHeldError
from speechkit_operator.clients.env_secrets import EnvSecrets, storage_endpoint
from speechkit_operator.clients.kube import JobStore, KubeError
from speechkit_operator.clients.secrets import SecretNotFoundError, SecretReader, SecretUnreadableError
from speechkit_operator.clients.speech.auth import load_ca_bundle
from speechkit_operator.clients.speech.v2 import SpeechKitV2Client
from speechkit_operator.clients.speech.v3 import SpeechKitV3Client
from speechkit_operator.clients.storage import ObjectStorage, StorageError, StorageFactory
from speechkit_operator.config import Settings
from speechkit_operator.constants import (
    ADOPT_OPERATION_ANNOTATION,
    API_VERSION,
    ATTEMPT_ANNOTATION,
    BATCH_KIND,
    OBJECT_LABEL,
)
from speechkit_operator.context import instance_identity
from speechkit_operator.envconfig import ConfigurationError, load_settings
from speechkit_operator.logic.batch_selection import key_problem
from speechkit_operator.logic.credentials import SecretProblem, parse_storage_secret
from speechkit_operator.logic.output_keys import PER_TAG_INFIX, output_base_key
from speechkit_operator.logs import PlainFormatter, configure_logging
from speechkit_operator.models.batch import (
    DEFAULT_EXTENSIONS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_IN_FLIGHT,
    TranscriptionBatchSpec,
)
from speechkit_operator.models.job import JobRef
from speechkit_operator.scheduler import Scheduler
from speechkit_operator.workflow import JobWorkflow

logger = logging.getLogger(__name__)

#: Where the synthetic batch and its jobs "live" (names in the state and in log lines).
NAMESPACE = "transcribe"
BATCH_NAME = "transcribe"
#: The state prefix, after the output prefix, unless ``--state-prefix`` says otherwise.
STATE_DIR = ".speechkit/"
DEFAULT_FORMATS: tuple[str, ...] = ("json", "txt", "srt", "vtt")
#: State objects of finished jobs deleted at once before a new pass.
FORGETS_AT_ONCE = 16
#: The largest transcript copied to ``--local-output``.
MAX_TRANSCRIPT_BYTES = 512 * 1024 * 1024
#: The suffix of an output key after ``<prefix><source key>``.
OUTPUT_SUFFIX = re.compile(rf"^\.(?:{PER_TAG_INFIX})?(json|txt|srt|vtt)$")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCK_LOST = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130

ProgressMode = Literal["auto", "rich", "plain", "none"]
#: Events logged as warnings (nothing else logs them).
LOGGED_EVENTS = frozenset({"RetryScheduled"})
#: Why the batch controller skips an object with a reason (kept in the batch's failures).
SKIP_REASONS = frozenset({"UnusableKey", "SeedMarkerInvalid", "TakenByAnotherJob", "WaitingForOldJob"})

#: The seed script's variables and what they become here (for --help and the README).
SEED_MAPPING: tuple[tuple[str, str], ...] = (
    ("S3_BUCKET + S3_PREFIX", "SOURCE (s3://$S3_BUCKET/$S3_PREFIX when SOURCE is omitted)"),
    ("S3_PREFIX_LOG", "--seed-log (default: $S3_PREFIX_LOG): the seed's operations are adopted"),
    ("S3_PREFIX_OUT", "--seed-output and --output-prefix (default: $S3_PREFIX_OUT/, else out/)"),
    ("S3_KEY, S3_SECRET", "storage keys (or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"),
    ("API_SECRET", "SpeechKit API key (or SPEECHKIT_API_KEY; SPEECHKIT_IAM_TOKEN)"),
    ("config.json {'lang': ...}", "the language, unless --language is given (else ru-RU)"),
)


class UsageError(Exception):
    """The command line or the environment cannot work: exit status 2, with this message."""

    code = EXIT_USAGE


class LockedError(UsageError):
    """Another run holds the lock: exit status 4 (cron started a run while the last one works)."""

    code = EXIT_LOCKED


# --------------------------------------------------------------------------------------------------
# What to do
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The command line, as parsed (see ``speechkit-operator transcribe --help``)."""

    source: str | None = None
    bucket: str | None = None
    upload_prefix: str | None = None
    local_output: Path = Path("transcripts")
    output_bucket: str | None = None
    output_prefix: str | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS
    language: str | None = None
    model: str = "general"
    api: str = "v2"
    text_normalization: bool = False
    speaker_labeling: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    seed_log: str | None = None
    seed_output: str | None = None
    no_seed: bool = False
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    state_prefix: str | None = None
    force_unlock: bool = False
    retry_failed: bool = False
    lock_seconds: float = 60.0
    progress: ProgressMode = "auto"
    progress_interval: float = 10.0
    verbose: int = 0
    quiet: bool = False


@dataclass(frozen=True)
class S3Source:
    bucket: str
    path: str


@dataclass(frozen=True)
class LocalSource:
    path: Path
    #: (local file, its key relative to the upload prefix), in order.
    files: tuple[tuple[Path, str], ...]


def parse_source(text: str, extensions: Sequence[str]) -> S3Source | LocalSource:
    """``s3://bucket[/prefix-or-key]``, or an existing local file or folder (its audio files, by
    extension, ignoring case). UsageError otherwise."""
    if text.startswith("s3://"):
        bucket, _, path = text.removeprefix("s3://").partition("/")
        if not bucket:
            raise UsageError(f"{text}: no bucket; write s3://BUCKET/PREFIX/ or s3://BUCKET/KEY")
        return S3Source(bucket, path)
    if "://" in text:
        raise UsageError(f"{text}: only s3:// URLs and local files or folders are supported")
    local = Path(text)
    lowered = tuple(extension.lower() for extension in extensions)
    if local.is_file():
        if not local.name.lower().endswith(lowered):
            raise UsageError(f"{text} does not end with an audio extension ({', '.join(extensions)})")
        return LocalSource(local, ((local, local.name),))
    if local.is_dir():
        files = tuple(
            (file, file.relative_to(local).as_posix())
            for file in sorted(local.rglob("*"))
            if file.is_file() and file.name.lower().endswith(lowered)
        )
        return LocalSource(local, files)
    raise UsageError(f"{text}: no such file or folder (and not an s3:// URL)")


def escape_glob(name: str) -> str:
    """A glob that matches exactly ``name`` (the batch's globs have no escapes: classes do it)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def single_object(key: str) -> tuple[str, list[str]]:
    """The source prefix and include globs that select exactly ``key``: its folder (so that the
    seed's ``config.json`` and markers are where the seed keeps them) and its name."""
    folder, _, name = key.rpartition("/")
    return (f"{folder}/" if folder else ""), [escape_glob(name)]


def _folder(prefix: str) -> str:
    """A prefix that names a folder ends with ``/`` (``out`` is taken for ``out/``)."""
    return prefix if not prefix or prefix.endswith("/") else f"{prefix}/"


#: Spec fields -> the option that sets them (messages name the option).
_OPTION_OF_FIELD = {
    "source.bucket": "the bucket of SOURCE",
    "source.prefix": "the prefix of SOURCE",
    "source.include": "--include",
    "source.exclude": "--exclude",
    "source.extensions": "--extensions",
    "source.seedLog": "--seed-log (S3_PREFIX_LOG)",
    "source.seedOutput": "--seed-output (S3_PREFIX_OUT)",
    "source": "SOURCE",
    "template.output.bucket": "--output-bucket",
    "template.output.prefix": "--output-prefix",
    "template.output.formats": "--formats",
    "template.recognition.languageCode": "--language",
    "template.recognition.model": "--model",
    "template.recognition": "--api, --text-normalization, --speaker-labeling",
    "maxInFlight": "--max-in-flight",
    "maxAttempts": "--max-attempts",
}


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"] if not isinstance(part, int))
        option = next(
            (name for field_, name in _OPTION_OF_FIELD.items() if where.startswith(field_)), where or "SOURCE"
        )
        message = item["msg"].removeprefix("Value error, ")
        # Checks across fields name them in the message: name the options instead.
        for field_, name in (
            ("seedLog", "--seed-log (S3_PREFIX_LOG)"),
            ("seedOutput", "--seed-output (S3_PREFIX_OUT)"),
        ):
            message = re.sub(rf"\b{field_}\b", name, message)
        problems.append(f"{option}: {message}")
    return "; ".join(problems)


def build_spec(
    options: Options,
    *,
    bucket: str,
    prefix: str,
    include: Sequence[str],
    output_prefix: str,
    seed_log: str | None,
    seed_output: str | None,
) -> TranscriptionBatchSpec:
    """The batch's spec, validated as the CRD would (UsageError naming the option otherwise)."""
    recognition: dict[str, Any] = {"model": options.model, "api": options.api}
    if options.language is not None:
        recognition["languageCode"] = options.language
    # Only when asked for: on v2 the model refuses them, saying they are v3's.
    if options.text_normalization:
        recognition["textNormalization"] = True
    if options.speaker_labeling:
        recognition["speakerLabeling"] = True
    output: dict[str, Any] = {"prefix": output_prefix, "formats": list(options.formats)}
    if options.output_bucket:
        output["bucket"] = options.output_bucket
    source: dict[str, Any] = {
        "bucket": bucket,
        "prefix": prefix,
        "include": list(include),
        "exclude": list(options.exclude),
        "extensions": list(options.extensions or DEFAULT_EXTENSIONS),
    }
    if seed_log is not None:
        source["seedLog"] = seed_log
    if seed_output is not None:
        source["seedOutput"] = seed_output
    try:
        return TranscriptionBatchSpec.model_validate(
            {
                "source": source,
                "template": {"output": output, "recognition": recognition},
                "maxInFlight": options.max_in_flight,
                "maxAttempts": options.max_attempts,
            }
        )
    except ValidationError as exc:
        raise UsageError(f"invalid options: {_describe(exc)}") from None


def state_prefix_for(options: Options, output_prefix: str) -> str:
    """``--state-prefix``, else ``<output prefix>.speechkit/``."""
    if options.state_prefix is not None:
        return _folder(options.state_prefix)
    return f"{output_prefix}{STATE_DIR}"


def batch_uid(bucket: str, state_prefix: str) -> str:
    """The batch's uid: fixed per state location, so that a rerun owns the jobs it finds there."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"speechkit-transcribe:s3://{bucket}/{state_prefix}"))


def fresh_status(
    previous: Mapping[str, Any] | None, spec: TranscriptionBatchSpec
) -> tuple[dict[str, Any], bool]:
    """The status this run starts from, and whether it resumes a pass: the previous run's status
    when its pass over the same source was interrupted, else a new pass (numbered after the
    previous ones)."""
    previous = previous or {}
    status = dict(previous.get("status") or {})
    old_source = (previous.get("spec") or {}).get("source")
    same_source = old_source == spec.source.model_dump(by_alias=True, mode="json")
    if status.get("scan") and same_source:
        return status, True
    passes = status.get("passes")
    return ({"passes": passes} if isinstance(passes, int) and passes >= 0 else {}), False


# --------------------------------------------------------------------------------------------------
# What happens: counts for the progress bars and the summary
# --------------------------------------------------------------------------------------------------


@dataclass
class _Child:
    name: str
    key: str
    attempt: int
    phase: str = ""
    reason: str = ""
    message: str = ""
    operation: str | None = None
    adopted: bool = False
    uncertain: int = 0


@dataclass
class Tracker:
    """The run as the store's events show it: each object's latest job, the batch's status."""

    children: dict[str, _Child] = field(default_factory=dict)
    #: Job names that had an operation when the run started (submitted by an earlier run).
    earlier: set[str] = field(default_factory=set)
    #: Jobs whose operation appeared during this run: submitted, or adopted from the seed.
    submitted: set[str] = field(default_factory=set)
    adopted: set[str] = field(default_factory=set)
    status: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    seen: set[str] = field(default_factory=set)
    complete: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[tuple[str, str, str, str]] = field(default_factory=list)

    def observe_job(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        meta = body.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name:
            return
        labels = meta.get("labels") or {}
        annotations = meta.get("annotations") or {}
        status = body.get("status") or {}
        object_name = str(labels.get(OBJECT_LABEL) or name)
        try:
            attempt = int(annotations.get(ATTEMPT_ANNOTATION) or 1)
        except (TypeError, ValueError):
            attempt = 1
        operation = status.get("operationId") or None
        first = name not in self.seen
        self.seen.add(name)
        if first and operation:
            self.earlier.add(name)
        elif operation and name not in self.earlier:
            if annotations.get(ADOPT_OPERATION_ANNOTATION) == operation:
                self.adopted.add(name)
            else:
                self.submitted.add(name)
        known = self.children.get(object_name)
        if deleted:
            # A succeeded job is deleted as soon as it succeeds (the store drops it): it stays here.
            if known is not None and known.name == name and known.phase != "Succeeded":
                del self.children[object_name]
            return
        if known is not None and known.attempt > attempt:
            return
        key = str(((body.get("spec") or {}).get("source") or {}).get("key") or "")
        try:
            uncertain = int(status.get("uncertainSubmissions") or 0)
        except (TypeError, ValueError):
            uncertain = 0
        self.children[object_name] = _Child(
            name=name,
            key=key,
            attempt=attempt,
            phase=str(status.get("phase") or ""),
            reason=str(status.get("reason") or ""),
            message=str(status.get("message") or ""),
            operation=str(operation) if operation else None,
            adopted=bool(operation) and annotations.get(ADOPT_OPERATION_ANNOTATION) == operation,
            uncertain=uncertain,
        )

    def observe_batch(self, body: Mapping[str, Any]) -> None:
        self.status = dict(body.get("status") or {})
        if self.status.get("phase") in ("Complete", "Failed"):
            self.complete.set()

    def on_event(self, ref: JobRef, type_: str, reason: str, message: str, kind: str) -> None:
        """An Event the operator would post: kept, and logged at DEBUG (the workflow and the batch
        log what matters themselves), except a job's retries, which only Events tell: a key
        SpeechKit refuses, a missing object, an unreachable storage show as warnings."""
        self.events.append((ref.name, type_, reason, message))
        level = logging.WARNING if (type_ == "Warning" and reason in LOGGED_EVENTS) else logging.DEBUG
        logger.log(level, "%s %s: %s", kind, reason, message, extra=ref.log)

    # -- what the bars and the summary show ----------------------------------------------------

    def counts(self) -> dict[str, int]:
        raw = self.status.get("counts") or {}
        return {
            name: int(raw.get(name) or 0)
            for name in ("discovered", "queued", "running", "succeeded", "failed", "skipped")
        }

    @property
    def scan_complete(self) -> bool:
        return not self.status.get("scan") and bool(self.status.get("lastScanAt"))

    def with_operation(self) -> int:
        return sum(1 for child in self.children.values() if child.operation)

    def failures(self) -> list[tuple[str, str, str]]:
        """(key, reason, message) of every object that failed, then of every object skipped with a
        reason (an unreadable seed marker, a key that cannot be a job's)."""
        failed = sorted(
            (child.key, child.reason, child.message)
            for child in self.children.values()
            if child.phase == "Failed"
        )
        keys = {key for key, _, _ in failed}
        skipped = [
            (str(entry.get("key") or ""), str(entry.get("reason") or ""), str(entry.get("message") or ""))
            for entry in self.status.get("failures") or []
            if isinstance(entry, Mapping) and entry.get("key") not in keys
        ]
        return failed + [entry for entry in skipped if entry[1] in SKIP_REASONS]

    def uncertain(self) -> list[_Child]:
        return sorted((child for child in self.children.values() if child.uncertain), key=lambda c: c.key)

    def line(self) -> str:
        counts = self.counts()
        listed = "listed" if self.scan_complete else "listing"
        return (
            f"{counts['discovered']} found ({listed}), {counts['skipped']} skipped, "
            f"{self.with_operation()} submitted, {counts['succeeded']} transcribed, {counts['failed']} failed"
        )


# --------------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------------


class _Display:
    """Progress bars per phase on a terminal (rich), else a plain line every ``interval`` seconds."""

    def __init__(self, console: Console, tracker: Tracker, mode: ProgressMode, interval: float) -> None:
        self.console = console
        self.tracker = tracker
        self.mode: ProgressMode = mode
        self.interval = interval
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self._last_line = ""
        self._last_time = 0.0

    def __enter__(self) -> _Display:
        if self.mode == "rich":
            self.progress = Progress(
                TextColumn("{task.description:<12}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                refresh_per_second=4,
            )
            self.progress.start()
            for name in ("listed", "submitted", "transcribed", "failed"):
                self.tasks[name] = self.progress.add_task(name, total=None)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.update(force=True)
        if self.progress is not None:
            self.progress.stop()

    def update(self, *, force: bool = False) -> None:
        tracker = self.tracker
        counts = tracker.counts()
        if self.progress is not None:
            found = counts["discovered"]
            total = found if tracker.scan_complete else None
            to_submit = max(0, found - counts["skipped"])
            update = self.progress.update
            update(self.tasks["listed"], completed=found, total=total)
            update(
                self.tasks["submitted"],
                completed=tracker.with_operation(),
                total=to_submit if tracker.scan_complete else None,
            )
            update(self.tasks["transcribed"], completed=counts["succeeded"] + counts["skipped"], total=total)
            update(self.tasks["failed"], completed=counts["failed"], total=total)
            self.progress.refresh()
            return
        if self.mode == "plain":
            line = tracker.line()
            now = time.monotonic()
            if line != self._last_line and (force or now - self._last_time >= self.interval):
                self.console.print(f"transcribe: {line}", markup=False, highlight=False)
                self._last_line, self._last_time = line, now


class _ConsoleHandler(logging.Handler):
    """Log records printed through the console, above the progress bars."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(PlainFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


def _configure_logging(options: Options, console: Console, mode: ProgressMode) -> None:
    verbose = options.verbose >= 2
    configure_logging(verbose=verbose, quiet=False)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if verbose else logging.INFO if options.verbose == 1 else logging.WARNING)
    if options.quiet:
        root.setLevel(logging.ERROR)
    if mode == "rich":
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_ConsoleHandler(console))


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class _Where:
    """Where this run reads and writes."""

    source: str
    spec: TranscriptionBatchSpec
    state_prefix: str
    local: LocalSource | None = None
    upload_prefix: str = ""
    #: Keys uploaded from ``local`` (key, local relative path).
    uploaded: list[tuple[str, str]] = field(default_factory=list)

    @property
    def output_bucket(self) -> str:
        return self.spec.output_bucket

    @property
    def outputs(self) -> str:
        output = self.spec.template.output
        formats = ",".join(fmt.value for fmt in output.formats)
        return f"s3://{self.output_bucket}/{output.prefix}<key>.{{{formats}}}"


def load_run_settings(environ: Mapping[str, str]) -> Settings:
    """The operator's settings (``SPEECHKIT_OPERATOR_*``), with ``S3_ENDPOINT`` as the storage
    endpoint when it is set. UsageError for an invalid one."""
    overrides: dict[str, Any] = {}
    if endpoint := storage_endpoint(environ):
        overrides["storage_endpoint"] = endpoint
    try:
        settings = load_settings(Settings, environ=environ, **overrides)
        load_ca_bundle(settings.ca_bundle)
    except ConfigurationError as exc:
        raise UsageError("invalid configuration:\n  " + "\n  ".join(exc.problems)) from None
    except ValueError as exc:
        raise UsageError(f"invalid configuration: {exc}") from None
    return settings


def _storage(settings: Settings, secrets: EnvSecrets, factory: StorageFactory) -> ObjectStorage:
    problem = secrets.storage_problem()
    if problem is not None:
        raise UsageError(problem)
    try:
        config = parse_storage_secret(
            "the environment",
            secrets.storage_data(),
            default_endpoint=str(settings.storage_endpoint).rstrip("/"),
            default_region=settings.storage_region,
        )
    except SecretProblem as exc:
        raise UsageError(exc.message) from None
    return factory.get(config)


def _check_speech_credentials(settings: Settings, secrets: EnvSecrets) -> None:
    if settings.backend == "self-hosted":
        return  # the self-hosted service may run without keys
    try:
        secrets.speech_data()
    except (SecretNotFoundError, SecretUnreadableError) as exc:
        raise UsageError(str(exc)) from None


def _source_text(options: Options, environ: Mapping[str, str]) -> str:
    if options.source:
        return options.source
    bucket = environ.get("S3_BUCKET", "").strip()
    if not bucket:
        raise UsageError(
            "no SOURCE: give s3://BUCKET/PREFIX/, s3://BUCKET/KEY or a local file or folder "
            "(or set S3_BUCKET and S3_PREFIX as for the cron script)"
        )
    return f"s3://{bucket}/{environ.get('S3_PREFIX', '').strip()}"


@dataclass(frozen=True)
class _Selection:
    bucket: str
    prefix: str
    include: list[str]
    #: One object (its folder as the prefix, its name as the only include).
    single: bool = False
    local: LocalSource | None = None


def _local_selection(
    options: Options, text: str, local: LocalSource, extensions: Sequence[str]
) -> _Selection:
    if not options.bucket or options.upload_prefix is None:
        raise UsageError(
            f"{text} is local: give --bucket BUCKET and --upload-prefix PREFIX (both required for "
            "local input), where its audio is uploaded before it is transcribed"
        )
    if not local.files:
        raise UsageError(f"{text}: no audio files ({', '.join(extensions)}) in it")
    upload_prefix = _folder(options.upload_prefix)
    for _, relative in local.files:
        if (problem := key_problem(f"{upload_prefix}{relative}")) is not None:
            raise UsageError(f"{relative} cannot be uploaded as {upload_prefix}{relative}: {problem}")
    if local.path.is_file():
        prefix, include = single_object(f"{upload_prefix}{local.files[0][1]}")
        return _Selection(options.bucket, prefix, include, single=True, local=local)
    return _Selection(options.bucket, upload_prefix, list(options.include), local=local)


async def _s3_selection(
    options: Options, source: S3Source, extensions: Sequence[str], storage: ObjectStorage
) -> _Selection:
    """A prefix, or one object: a path ending in an audio extension that names an existing object."""
    bucket, path = source.bucket, source.path
    audio = path.lower().endswith(tuple(extension.lower() for extension in extensions))
    if path and audio:
        try:
            found = await storage.head_or_none(bucket, path)
        except StorageError as exc:
            raise UsageError(f"s3://{bucket}/{path} cannot be read: {exc.message}") from None
        if found is not None:
            if options.include:
                raise UsageError("--include does not go with a single object as SOURCE")
            prefix, include = single_object(path)
            return _Selection(bucket, prefix, include, single=True)
    return _Selection(bucket, path, list(options.include))


def _seed_prefixes(
    options: Options, environ: Mapping[str, str], selection: _Selection
) -> tuple[str | None, str | None]:
    """``--seed-log``/``--seed-output``, else the seed's ``S3_PREFIX_LOG``/``S3_PREFIX_OUT``."""
    if options.no_seed:
        return None, None
    seed_log = options.seed_log if options.seed_log is not None else environ.get("S3_PREFIX_LOG") or None
    seed_output = (
        options.seed_output if options.seed_output is not None else environ.get("S3_PREFIX_OUT") or None
    )
    if selection.single:
        # The prefix chosen for one object ends with "/" (or is empty, for an object at the bucket's
        # root): so must the seed's, for its keys to line up (a batch refuses them otherwise).
        seed_log = _folder(seed_log) if seed_log else seed_log
        seed_output = _folder(seed_output) if seed_output else seed_output
    return seed_log, seed_output


def _output_prefix(options: Options, environ: Mapping[str, str]) -> str:
    if options.output_prefix is not None:
        return options.output_prefix
    if seed_output := environ.get("S3_PREFIX_OUT", "").strip():
        return _folder(seed_output)
    return "out/"


async def _where(options: Options, environ: Mapping[str, str], storage: ObjectStorage) -> _Where:
    """Resolve SOURCE (a prefix, one object, or local files) and the options into the batch's spec."""
    text = _source_text(options, environ)
    extensions = options.extensions or DEFAULT_EXTENSIONS
    parsed = parse_source(text, extensions)
    if isinstance(parsed, LocalSource):
        selection = _local_selection(options, text, parsed, extensions)
    else:
        selection = await _s3_selection(options, parsed, extensions, storage)
    seed_log, seed_output = _seed_prefixes(options, environ, selection)
    output_prefix = _output_prefix(options, environ)
    spec = build_spec(
        options,
        bucket=selection.bucket,
        prefix=selection.prefix,
        include=selection.include,
        output_prefix=output_prefix,
        seed_log=seed_log,
        seed_output=seed_output,
    )
    return _Where(
        source=text,
        spec=spec,
        state_prefix=state_prefix_for(options, output_prefix),
        local=selection.local,
        upload_prefix=_folder(options.upload_prefix or ""),
    )


async def _upload(where: _Where, storage: ObjectStorage, console: Console, quiet: bool) -> None:
    """Upload the local audio under the upload prefix; a file already there (same size) is not
    uploaded again."""
    assert where.local is not None
    bucket, upload_prefix = where.spec.source.bucket, where.upload_prefix
    sent = kept = 0
    for path, relative in where.local.files:
        key = f"{upload_prefix}{relative}"
        size = path.stat().st_size
        try:
            head = await storage.head_or_none(bucket, key)
            if head is None or head.size != size:
                await storage.upload_file(bucket, key, path, _content_type(path.name))
                sent += 1
            else:
                kept += 1
        except StorageError as exc:
            raise UsageError(f"uploading {path} to s3://{bucket}/{key} failed: {exc.message}") from None
        where.uploaded.append((key, relative))
    if not quiet:
        console.print(
            f"uploaded {sent} file(s) to s3://{bucket}/{upload_prefix}"
            + (f" ({kept} already there)" if kept else ""),
            markup=False,
            highlight=False,
        )


def _content_type(name: str) -> str:
    lowered = name.lower()
    for extension, kind in (
        (".wav", "audio/wav"),
        (".ogg", "audio/ogg"),
        (".opus", "audio/ogg"),
        (".mp3", "audio/mpeg"),
    ):
        if lowered.endswith(extension):
            return kind
    return "application/octet-stream"


async def _download(where: _Where, storage: ObjectStorage, local_output: Path) -> int:
    """Copy the transcripts of the uploaded files next to each other under ``local_output``,
    named after the local files (``a.wav`` gives ``a.wav.json``, ``a.wav.txt``...)."""
    copied = 0
    prefix = where.spec.template.output.prefix
    for key, relative in where.uploaded:
        base = output_base_key(key, prefix)
        async for listed in storage.iter_objects(where.output_bucket, f"{base}."):
            suffix = listed.key[len(base) :]
            if OUTPUT_SUFFIX.fullmatch(suffix) is None:
                continue
            data = await storage.read_small(where.output_bucket, listed.key, limit=MAX_TRANSCRIPT_BYTES)
            if data is None:
                continue
            target = local_output / f"{relative}{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            copied += 1
    return copied


@dataclass
class _Outcome:
    code: int
    note: str = ""
    #: A second Ctrl-C: no grace for the steps in flight.
    hurry: bool = False


async def _run(options: Options, environ: Mapping[str, str], console: Console) -> int:
    settings = load_run_settings(environ)
    secrets = EnvSecrets(settings, environ)
    _check_speech_credentials(settings, secrets)
    factory = StorageFactory(timeout=settings.http_timeout, ca_bundle=settings.ca_bundle)
    try:
        storage = _storage(settings, secrets, factory)
        where = await _where(options, environ, storage)
        return await _run_batch(options, settings, secrets, factory, storage, where, console)
    finally:
        factory.close()


async def _run_batch(
    options: Options,
    settings: Settings,
    secrets: EnvSecrets,
    factory: StorageFactory,
    storage: ObjectStorage,
    where: _Where,
    console: Console,
) -> int:
    spec = where.spec
    source = spec.source
    # The source must be listable, the state's bucket writable (the lock tells): a wrong bucket,
    # endpoint or key stops here, not as a scan paused every 30 s.
    if where.local is None:
        try:
            await storage.list_page(source.bucket, source.prefix, max_keys=1)
        except StorageError as exc:
            raise UsageError(
                f"s3://{source.bucket}/{source.prefix} cannot be listed: {exc.message}"
            ) from None
    started = time.monotonic()
    lock = BucketLock(
        storage,
        where.output_bucket,
        f"{where.state_prefix}lock.json",
        ttl_seconds=options.lock_seconds,
        description=f"speechkit-operator transcribe {where.source}",
    )
    try:
        overridden = await lock.acquire(force=options.force_unlock)
    except LockHeldError as exc:
        raise LockedError(
            f"{exc}; wait for it to finish, or if it is surely gone, run again with --force-unlock"
        ) from None
    except StorageError as exc:
        raise UsageError(
            f"the state in s3://{where.output_bucket}/{where.state_prefix} cannot be written: {exc.message}"
        ) from None
    if overridden:
        logger.warning("%s", overridden)
    try:
        if where.local is not None:
            await _upload(where, storage, console, options.quiet)
        session = _Session(options, settings, secrets, factory, storage, where, console, started)
        try:
            await session.prepare()
            await session.run(lock)
        finally:
            await session.close()
        return await session.report()
    finally:
        await lock.release()


class _Session:
    """One run over the state in the bucket: the operator's parts, wired to it."""

    def __init__(
        self,
        options: Options,
        settings: Settings,
        secrets: EnvSecrets,
        factory: StorageFactory,
        storage: ObjectStorage,
        where: _Where,
        console: Console,
        started: float,
    ) -> None:
        self.options = options
        self.settings = settings
        self.storage = storage
        self.where = where
        self.console = console
        self.started = started
        self.tracker = Tracker(started=started)
        self.store = BucketJobStore(
            storage,
            where.output_bucket,
            where.state_prefix,
            on_event=self.tracker.on_event,
            drop_succeeded=True,
        )
        self.speech = SpeechKitV2Client.from_settings(settings)
        self.speech_v3 = SpeechKitV3Client.from_settings(settings)
        self.workflow = JobWorkflow(
            settings,
            speech=self.speech,
            speech_v3=self.speech_v3,
            storage=factory,
            secrets=cast(SecretReader, secrets),
            jobs=cast(JobStore, self.store),
            identity=instance_identity(),
        )
        if settings.predictions_configmap:
            self.workflow.rates_store = (NAMESPACE, settings.predictions_configmap)
        # One run at a time (the lock): an intent another process left is abandoned at once.
        self.scheduler = Scheduler(self.workflow, settings, sole_actor=True)
        self.controller = BatchController(self.workflow)
        self.stop = asyncio.Event()
        self.outcome = _Outcome(EXIT_OK)

    async def prepare(self) -> None:
        """Load the state, start a new pass or resume one, and hand the jobs found to the parts."""
        store, tracker = self.store, self.tracker
        try:
            found = await store.load()
        except KubeError as exc:
            raise UsageError(str(exc)) from None
        status, resumed = fresh_status(store.batch, self.where.spec)
        if not resumed:
            try:
                await _forget_finished(store, retry_failed=self.options.retry_failed)
            except KubeError as exc:
                raise UsageError(str(exc)) from None
        logger.info(
            "state in %s: %d jobs found; %s",
            store.location,
            found,
            "resuming the interrupted pass" if resumed else "starting a new pass",
        )
        store.subscribe(tracker.observe_job)
        store.subscribe(self.scheduler.observe)
        store.subscribe(self.controller.observe_job)
        store.subscribe_batch(tracker.observe_batch)
        body = {
            "apiVersion": API_VERSION,
            "kind": BATCH_KIND,
            "metadata": {
                "name": BATCH_NAME,
                "namespace": NAMESPACE,
                "uid": batch_uid(self.where.output_bucket, self.where.state_prefix),
                "generation": 1,
            },
            "spec": self.where.spec.model_dump(by_alias=True, exclude_none=True, mode="json"),
            "status": status,
        }
        try:
            written = await store.write_batch(body)
        except KubeError as exc:
            raise UsageError(str(exc)) from None
        tracker.observe_batch(written)
        store.deliver_listing()
        await asyncio.sleep(0)  # the listing reaches the observers before the batch starts
        self.controller.observe_batch(written)
        await self.workflow.load_rates()

    def _lost(self, why: str) -> None:
        logger.error("%s: stopping", why)
        self.outcome.code, self.outcome.note = EXIT_LOCK_LOST, why
        self.stop.set()

    async def run(self, lock: BucketLock) -> None:
        """Until the batch is complete, or a signal or a lost lock stops it; then a graceful stop."""
        mode = _mode(self.options, self.console)
        signals = _Signals(self.stop, self.outcome)
        try:
            lock.start_renewing(self._lost)
            self.scheduler.start()
            self.controller.start()
            try:
                with _Display(self.console, self.tracker, mode, self.options.progress_interval) as display:
                    while not (self.tracker.complete.is_set() or self.stop.is_set()):
                        display.update()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(
                                self.tracker.complete.wait(), 0.25 if mode == "rich" else 1.0
                            )
            finally:
                await self.controller.stop()
                await self.scheduler.stop(
                    0.0 if self.outcome.hurry else self.settings.shutdown_timeout_seconds
                )
                await self.workflow.save_rates()
        finally:
            signals.restore()

    async def close(self) -> None:
        await self.speech.close()
        await self.speech_v3.close()

    async def report(self) -> int:
        tracker, where, outcome = self.tracker, self.where, self.outcome
        if tracker.status.get("phase") == "Failed":
            raise UsageError(f"the batch cannot run: {tracker.status.get('message')}")
        copied = None
        if where.local is not None and tracker.complete.is_set() and outcome.code == EXIT_OK:
            try:
                copied = await _download(where, self.storage, self.options.local_output)
            except StorageError as exc:
                logger.warning(
                    "the transcripts could not be copied to %s: %s", self.options.local_output, exc.message
                )
        if not tracker.complete.is_set() and outcome.code == EXIT_OK:
            outcome.code = EXIT_INTERRUPTED
            outcome.note = "interrupted: run the same command again to resume (nothing is submitted twice)"
        _summary(self.console, tracker, where, time.monotonic() - self.started, copied, self.options, outcome)
        if outcome.code != EXIT_OK:
            return outcome.code
        return EXIT_FAILED if tracker.counts()["failed"] else EXIT_OK


async def _forget_finished(store: BucketJobStore, *, retry_failed: bool) -> None:
    """Before a new pass: forget the jobs that succeeded (their transcripts make the scan skip
    their objects), except those that adopted a seed operation (the seed's marker would be adopted
    again); with ``retry_failed`` the failed ones too, so that their objects are tried again.
    :data:`FORGETS_AT_ONCE` at a time (a run stopped before it could drop its succeeded jobs may
    leave thousands)."""
    gate = asyncio.Semaphore(FORGETS_AT_ONCE)

    async def forget(ref: JobRef) -> None:
        async with gate:
            await store.delete(ref)

    refs = []
    for body in store.jobs():
        meta = body.get("metadata") or {}
        phase = (body.get("status") or {}).get("phase")
        adopted = ADOPT_OPERATION_ANNOTATION in (meta.get("annotations") or {})
        if (phase == "Succeeded" and not adopted) or (phase == "Failed" and retry_failed):
            refs.append(JobRef(str(meta.get("namespace")), str(meta.get("name")), uid=meta.get("uid")))
    outcomes = await asyncio.gather(*(forget(ref) for ref in refs), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def _mode(options: Options, console: Console) -> ProgressMode:
    if options.progress != "auto":
        return options.progress
    if options.quiet:
        return "none"
    return "rich" if console.is_terminal else "plain"


class _Signals:
    """Ctrl-C or SIGTERM: a graceful stop, as the operator's (a submission in flight is recorded);
    a second one stops at once."""

    def __init__(self, stop: asyncio.Event, outcome: _Outcome) -> None:
        self.stop = stop
        self.outcome = outcome
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self.loop.add_signal_handler(sig, self._signalled, sig)
                self.installed.append(sig)

    def _signalled(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            logger.warning("%s again: stopping now", sig.name)
            self.outcome.hurry = True
            if self.task is not None:
                self.task.cancel()
            return
        logger.warning("%s: stopping after the steps in flight (again to stop at once)", sig.name)
        self.stop.set()

    def restore(self) -> None:
        for sig in self.installed:
            self.loop.remove_signal_handler(sig)
        self.installed.clear()


def summary_rows(
    tracker: Tracker, where: _Where, elapsed: float, copied: int | None, local_output: Path, note: str
) -> list[tuple[str, str]]:
    """The summary: (what, value) rows."""
    counts = tracker.counts()
    rows = [
        ("source", where.source),
        ("found", str(counts["discovered"])),
        ("skipped", f"{counts['skipped']} (already transcribed, done by the cron script, or unusable)"),
        ("transcribed", str(counts["succeeded"])),
        ("failed", str(counts["failed"])),
    ]
    if counts["queued"] or counts["running"]:
        rows.append(("unfinished", f"{counts['queued']} waiting, {counts['running']} running"))
    rows.append(("submitted", f"{len(tracker.submitted)} in this run"))
    if tracker.adopted:
        rows.append(
            ("adopted", f"{len(tracker.adopted)} operations of the cron script (not submitted again)")
        )
    if uncertain := tracker.uncertain():
        shown = ", ".join(child.key for child in uncertain[:5]) + (" ..." if len(uncertain) > 5 else "")
        rows.append(
            (
                "uncertain",
                f"{len(uncertain)} object(s) whose submission's answer was lost (a run stopped while "
                f"submitting, or SpeechKit did not answer): submitted once more, so SpeechKit may have "
                f"charged twice: {shown}",
            )
        )
    rows.append(("outputs", where.outputs))
    if where.local is not None and copied is not None:
        rows.append(("local copies", f"{copied} files in {local_output}"))
    rows.append(("state", f"s3://{where.output_bucket}/{where.state_prefix}"))
    rows.append(("elapsed", f"{elapsed:.1f} s"))
    if note:
        rows.append(("note", note))
    return rows


def _summary(
    console: Console,
    tracker: Tracker,
    where: _Where,
    elapsed: float,
    copied: int | None,
    options: Options,
    outcome: _Outcome,
) -> None:
    """A table on a terminal; plain lines, one per row and per failure, elsewhere (cron's mail,
    a log: nothing wrapped, easy to grep)."""
    rows = summary_rows(tracker, where, elapsed, copied, options.local_output, outcome.note)
    failures = tracker.failures()
    if not console.is_terminal:
        width = max(len(what) for what, _ in rows)
        for what, value in rows:
            console.print(f"{what + ':':<{width + 1}} {value}", markup=False, highlight=False, soft_wrap=True)
        for key, reason, message in failures:
            console.print(
                f"failure: {key}: {reason}: {message}", markup=False, highlight=False, soft_wrap=True
            )
        return
    table = Table(title="speechkit-operator transcribe", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    if failures:
        listed = Table(title="failures", title_justify="left")
        listed.add_column("key")
        listed.add_column("reason")
        listed.add_column("message")
        for key, reason, message in failures:
            listed.add_row(key, reason, message)
        console.print(listed)


def transcribe(
    options: Options, *, environ: Mapping[str, str] | None = None, stdout: TextIO | None = None
) -> int:
    """Run ``speechkit-operator transcribe``; the exit status."""
    env = dict(os.environ if environ is None else environ)
    out = stdout or sys.stdout
    console = Console(file=out, highlight=False, soft_wrap=False)
    err = Console(file=sys.stderr, highlight=False)
    _configure_logging(options, console, _mode(options, console))
    try:
        return asyncio.run(_run(options, env, console))
    except UsageError as exc:
        err.print(f"speechkit-operator transcribe: {exc}", markup=False, soft_wrap=True)
        return exc.code
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print(
            "speechkit-operator transcribe: interrupted; run again to resume", markup=False, soft_wrap=True
        )
        return EXIT_INTERRUPTED


__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_LOCK_LOST",
    "EXIT_OK",
    "EXIT_USAGE",
    "SEED_MAPPING",
    "Options",
    "UsageError",
    "transcribe",
]
