"""The operator's state kept in a bucket instead of Kubernetes, for ``speechkit-operator transcribe``.

:class:`BucketJobStore` is a drop-in for :class:`~speechkit_operator.clients.kube.JobStore`: the
scheduler, the workflow and the batch controller run on it unchanged. Job objects (metadata, spec,
status: the JSON the API server would hold) live under a state prefix, one object each
(``<prefix>jobs/<name>.json``), the batch's under ``<prefix>batch.json``, the learned paces under
``<prefix>config/<name>.json``. An in-memory copy is the source of truth; every write is PUT, and
awaited, before it returns and before the object changes in memory, so a submission's intent is in
the bucket before the submission is sent, exactly as it is on the API server. Like the API server it
assigns uids, resourceVersions and creation times, refuses a write whose resourceVersion precondition
no longer holds (409) or whose object is gone (404), refuses a second creation of a name, and merges
status patches as a JSON merge patch (RFC 7386: ``None`` deletes a key). After each write the new
object is delivered to the subscribed observers, as a watch event would be: from the event loop,
after the write returns (``loop.call_soon``), never from inside it. Events go to a callback.

Writes to one object are serialised (a lock per object), so the bucket never holds an older version
than one already returned. Objects a restarted run finds are loaded with :meth:`BucketJobStore.load`
(the listing is paginated) and handed to the observers as the initial listing.

:class:`BucketLock` keeps two runs from working on the same state at once (``lock.json``: its
holder and when it expires, renewed while the run lasts). S3 has no compare-and-swap that every
S3-compatible storage offers, so taking the lock writes, waits and reads back: two runs started within
the same second are told apart, not two started within the same few milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import json
import logging
import os
import secrets as random
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from speechkit_operator.clients.kube import KubeError, WriteCounter
from speechkit_operator.clients.storage import ObjectStorage, StorageError
from speechkit_operator.constants import ADOPT_OPERATION_ANNOTATION, JOB_KIND
from speechkit_operator.models.job import JobRef
from speechkit_operator.models.timestamps import format_time, parse_time, utcnow

logger = logging.getLogger(__name__)

JOBS_DIR = "jobs/"
CONFIG_DIR = "config/"
BATCH_NAME = "batch.json"
LOCK_NAME = "lock.json"
#: The largest state object read back (a job's JSON is a few KiB).
MAX_STATE_BYTES = 1024 * 1024
#: State objects read (or deleted) at once while loading (or forgetting).
LOADS_AT_ONCE = 16


class Observer(Protocol):
    """Called with a job as a watch event would carry it, and whether it was deleted (as
    ``Scheduler.observe`` and ``BatchController.observe_job`` are)."""

    def __call__(self, body: Mapping[str, Any], *, deleted: bool = ...) -> None: ...


#: Called with each Event: the object, its type (Normal, Warning), reason, message and kind.
EventSink = Callable[[JobRef, str, str, str, str], None]


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as a JSON merge patch (RFC 7386): objects merge key by key,
    ``None`` deletes a key, anything else (lists included) replaces. Neither argument is changed."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = {str(key): value for key, value in target.items()} if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(str(key), None)
        else:
            result[str(key)] = merge_patch(result.get(str(key)), value)
    return result


def _matches(labels: Mapping[str, Any], selector: str) -> bool:
    """Whether ``labels`` match an equality-based selector (``a=b,c==d,e!=f``; empty: all)."""
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            name, _, value = term.partition("!=")
            if labels.get(name.strip()) == value.strip():
                return False
            continue
        name, _, value = term.replace("==", "=").partition("=")
        if labels.get(name.strip()) != value.strip():
            return False
    return True


def _droppable(body: Mapping[str, Any]) -> bool:
    """A job that succeeded with an operation of its own: one that adopted the seed script's is
    kept, as ``transcribe`` keeps it across passes, and so is one with uncertain submissions (its
    record of a possible second payment stays until the next pass, as before)."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    status = body.get("status") or {}
    return (
        status.get("phase") == "Succeeded"
        and ADOPT_OPERATION_ANNOTATION not in annotations
        and not status.get("uncertainSubmissions")
    )


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class BucketJobStore:
    """Job objects and one batch's status in ``bucket`` under ``prefix`` (see the module's text)."""

    def __init__(
        self,
        storage: ObjectStorage,
        bucket: str,
        prefix: str,
        *,
        on_event: EventSink | None = None,
        clock: Callable[[], datetime] = utcnow,
        drop_succeeded: bool = False,
    ) -> None:
        self.storage = storage
        #: A job that succeeded, unless it adopted an operation, is deleted once its status says
        #: so (as a TTL of 0 would; its observers see it deleted): its transcripts are the record,
        #: and a run of 100,000 objects holds only its unfinished jobs.
        self.drop_succeeded = drop_succeeded
        self.bucket = bucket
        self.prefix = prefix
        self.on_event = on_event
        self.clock = clock
        self.writes = WriteCounter()
        self._jobs: dict[str, dict[str, Any]] = {}
        self._batch: dict[str, Any] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._version = 0
        self._observers: list[Observer] = []
        self._batch_observers: list[Callable[[dict[str, Any]], None]] = []

    # -- where things are ----------------------------------------------------------------------

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _job_key(self, name: str) -> str:
        return f"{self.prefix}{JOBS_DIR}{name}.json"

    @property
    def batch_key(self) -> str:
        return f"{self.prefix}{BATCH_NAME}"

    def _config_key(self, name: str) -> str:
        return f"{self.prefix}{CONFIG_DIR}{name}.json"

    # -- observers -----------------------------------------------------------------------------

    def subscribe(self, observer: Observer) -> None:
        """Deliver every job written from now on to ``observer`` (as a watch stream would)."""
        self._observers.append(observer)

    def subscribe_batch(self, observer: Callable[[dict[str, Any]], None]) -> None:
        """Deliver the batch to ``observer`` after each of its status writes."""
        self._batch_observers.append(observer)

    def _deliver(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        loop = asyncio.get_running_loop()
        for observer in self._observers:
            loop.call_soon(functools.partial(observer, copy.deepcopy(dict(body)), deleted=deleted))

    def deliver_listing(self) -> int:
        """Deliver every job held now to the observers (the initial listing); how many."""
        for body in list(self._jobs.values()):
            self._deliver(body)
        return len(self._jobs)

    def jobs(self) -> list[dict[str, Any]]:
        """A copy of every job held now."""
        return [copy.deepcopy(body) for body in self._jobs.values()]

    # -- loading -------------------------------------------------------------------------------

    async def load(self) -> int:
        """Read the jobs (and the batch) an earlier run left under the prefix; how many jobs. An
        unreadable object is left out, with a warning: its object gets a new job."""
        names: list[str] = []
        try:
            async for listed in self.storage.iter_objects(self.bucket, f"{self.prefix}{JOBS_DIR}"):
                if listed.key.endswith(".json"):
                    names.append(listed.key)
            self._batch = await self._read_json(self.batch_key)
        except StorageError as exc:
            raise KubeError(f"reading the state in {self.location} failed: {exc.message}") from None
        gate = asyncio.Semaphore(LOADS_AT_ONCE)

        async def read(key: str) -> dict[str, Any] | None:
            async with gate:
                return await self._read_json(key)

        found = await asyncio.gather(*(read(key) for key in names), return_exceptions=True)
        for key, body in zip(names, found, strict=True):
            if isinstance(body, StorageError):
                raise KubeError(f"reading {key} failed: {body.message}") from None
            if isinstance(body, BaseException):
                raise body
            name = ((body or {}).get("metadata") or {}).get("name")
            if not body or not isinstance(name, str) or key != self._job_key(name):
                logger.warning("ignoring s3://%s/%s: not a job's state", self.bucket, key)
                continue
            self._jobs[name] = body
        versions = [self._version_of(body) for body in [*self._jobs.values(), self._batch or {}]]
        self._version = max([self._version, *versions])
        return len(self._jobs)

    async def _read_json(self, key: str) -> dict[str, Any] | None:
        data = await self.storage.read_small(self.bucket, key, limit=MAX_STATE_BYTES)
        if data is None:
            return None
        try:
            body = json.loads(data)
        except ValueError:
            logger.warning("ignoring s3://%s/%s: not JSON", self.bucket, key)
            return None
        return body if isinstance(body, dict) else None

    @staticmethod
    def _version_of(body: Mapping[str, Any]) -> int:
        version = str((body.get("metadata") or {}).get("resourceVersion") or "0")
        return int(version) if version.isdigit() else 0

    # -- writing -------------------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    async def _put(self, key: str, body: Mapping[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False, sort_keys=True).encode()
        try:
            await self.storage.put(self.bucket, key, data, "application/json")
        except StorageError as exc:
            # Status 0: not a conflict, not gone; the caller retries later, as after an outage.
            raise KubeError(f"writing s3://{self.bucket}/{key} failed: {exc.message}") from None

    async def _remove(self, key: str) -> None:
        try:
            await self.storage.delete(self.bucket, key)
        except StorageError as exc:
            raise KubeError(f"deleting s3://{self.bucket}/{key} failed: {exc.message}") from None

    # -- jobs (the JobStore interface) ---------------------------------------------------------

    def _current(self, job: JobRef) -> dict[str, Any]:
        body = self._jobs.get(job.name)
        meta = (body or {}).get("metadata") or {}
        if body is None or meta.get("namespace") != job.namespace:
            raise KubeError(f"job {job} not found", 404)
        if job.uid and meta.get("uid") != job.uid:
            raise KubeError(f"job {job}: another job of that name (the job was replaced)", 404)
        return body

    async def patch_status(
        self, job: JobRef, status: Mapping[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        """Merge ``status`` into the job's; with ``resource_version``, only if the job is still at
        that version (else a 409 KubeError). The job as it is now, once it is in the bucket."""
        async with self._lock(job.name):
            current = self._current(job)
            held = (current.get("metadata") or {}).get("resourceVersion")
            if resource_version is not None and resource_version != held:
                raise KubeError(f"job {job}: changed since version {resource_version} (now {held})", 409)
            updated = copy.deepcopy(current)
            updated["status"] = merge_patch(current.get("status") or {}, dict(status))
            updated["metadata"]["resourceVersion"] = self._next_version()
            await self._put(self._job_key(job.name), updated)
            self._jobs[job.name] = updated
            dropped = self.drop_succeeded and _droppable(updated)
            if dropped:
                del self._jobs[job.name]
                self._locks.pop(job.name, None)
                try:
                    await self._remove(self._job_key(job.name))
                except KubeError as exc:
                    # The next run forgets it (a succeeded job's state is only a record).
                    logger.warning("the state of job %s is left in the bucket: %s", job.name, exc)
        self.writes.add("status")
        self._deliver(updated)
        if dropped:
            self.writes.add("delete")
            self._deliver(updated, deleted=True)
        return copy.deepcopy(updated)

    async def get(self, job: JobRef) -> dict[str, Any] | None:
        body = self._jobs.get(job.name)
        if body is None or (body.get("metadata") or {}).get("namespace") != job.namespace:
            return None
        return copy.deepcopy(body)

    async def delete(self, job: JobRef) -> None:
        """Delete the job, only if it is still the same object (its uid); gone already is fine."""
        async with self._lock(job.name):
            try:
                current = self._current(job)
            except KubeError:
                return
            await self._remove(self._job_key(job.name))
            del self._jobs[job.name]
        self.writes.add("delete")
        self._deliver(current, deleted=True)

    async def create_job(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create a job; None when one of that name exists already."""
        name = str((body.get("metadata") or {}).get("name") or "")
        if not name:
            raise KubeError("a job needs metadata.name", 422)
        async with self._lock(name):
            if name in self._jobs:
                return None
            created = copy.deepcopy(dict(body))
            meta = created.setdefault("metadata", {})
            meta.update(
                namespace=namespace,
                uid=str(random.token_hex(16)),
                resourceVersion=self._next_version(),
                creationTimestamp=_stamp(self.clock()),
                generation=1,
            )
            await self._put(self._job_key(name), created)
            self._jobs[name] = created
        self.writes.add("create")
        self._deliver(created)
        return copy.deepcopy(created)

    async def list_jobs(
        self, namespace: str, *, label_selector: str, limit: int = 500
    ) -> AsyncIterator[dict[str, Any]]:
        """The jobs of ``namespace`` whose labels match ``label_selector``."""
        del limit  # held in memory: no pages
        for body in list(self._jobs.values()):
            meta = body.get("metadata") or {}
            if meta.get("namespace") == namespace and _matches(meta.get("labels") or {}, label_selector):
                yield copy.deepcopy(body)

    async def post_event(
        self,
        job: JobRef,
        type_: Literal["Normal", "Warning"],
        reason: str,
        message: str,
        *,
        kind: str = JOB_KIND,
    ) -> None:
        """No apiserver to post to: the Event goes to ``on_event`` (best effort, as Events are)."""
        if self.on_event is None:
            return
        try:
            self.on_event(job, type_, reason, message, kind)
        except Exception:
            logger.exception("the %s event on %s could not be shown", reason, job)

    def close(self) -> None:
        """Nothing to close: the storage belongs to its factory."""

    # -- the batch -----------------------------------------------------------------------------

    @property
    def batch(self) -> dict[str, Any] | None:
        """The batch as loaded or last written (a copy), or None."""
        return copy.deepcopy(self._batch) if self._batch is not None else None

    async def write_batch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Replace the batch (metadata, spec and status) with ``body``; the batch as written."""
        async with self._lock(BATCH_NAME):
            written = copy.deepcopy(dict(body))
            written.setdefault("metadata", {})["resourceVersion"] = self._next_version()
            await self._put(self.batch_key, written)
            self._batch = written
        self.writes.add("batch")
        return copy.deepcopy(written)

    async def get_batch(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The batch, when it is the one of that name."""
        async with self._lock(BATCH_NAME):
            current = self._batch
            if current is None or ((current.get("metadata") or {}).get("name")) != name:
                return None
            return copy.deepcopy(current)

    async def patch_batch_status(self, batch: JobRef, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``status`` into the batch's status (only the batch of ``batch.uid``)."""
        async with self._lock(BATCH_NAME):
            current = self._batch
            meta = (current or {}).get("metadata") or {}
            if (
                current is None
                or meta.get("name") != batch.name
                or (batch.uid and meta.get("uid") != batch.uid)
            ):
                raise KubeError(f"batch {batch} not found", 404)
            updated = copy.deepcopy(current)
            updated["status"] = merge_patch(current.get("status") or {}, dict(status))
            updated["metadata"]["resourceVersion"] = self._next_version()
            await self._put(self.batch_key, updated)
            self._batch = updated
        self.writes.add("batch-status")
        loop = asyncio.get_running_loop()
        for observer in self._batch_observers:
            loop.call_soon(observer, copy.deepcopy(updated))
        return copy.deepcopy(updated)

    # -- the operator's own state (learned paces) ----------------------------------------------

    async def read_config(self, namespace: str, name: str) -> dict[str, str] | None:
        del namespace  # one run, one place
        try:
            body = await self._read_json(self._config_key(name))
        except StorageError as exc:
            raise KubeError(f"reading {self._config_key(name)} failed: {exc.message}") from None
        if body is None:
            return None
        data = body.get("data") or {}
        return {str(key): str(value) for key, value in data.items()} if isinstance(data, dict) else {}

    async def write_config(self, namespace: str, name: str, data: Mapping[str, str]) -> None:
        del namespace
        async with self._lock(CONFIG_DIR + name):
            await self._put(self._config_key(name), {"data": dict(data)})
        self.writes.add("configmap")


# --------------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------------


class LockHeldError(Exception):
    """Another run holds the lock; ``holder`` is its record."""

    def __init__(self, message: str, holder: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.holder = dict(holder)


@dataclass(frozen=True)
class LockState:
    """A lock record as read: who holds it, on which host and process, until when."""

    owner: str
    host: str
    pid: int | None
    expires_at: datetime | None
    acquired_at: str

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> LockState:
        pid = record.get("pid")
        return cls(
            owner=str(record.get("owner") or ""),
            host=str(record.get("host") or ""),
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            expires_at=parse_time(str(record.get("expiresAt") or "")),
            acquired_at=str(record.get("acquiredAt") or "?"),
        )

    def live(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at > now

    def dead_here(self) -> bool:
        """Held by a process of this host that no longer exists (killed, say)."""
        if self.host != socket.gethostname() or self.pid is None or self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False  # it exists (another user's, say)
        return False


def lock_owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{random.token_hex(4)}"


class BucketLock:
    """``lock.json`` under the state prefix: one run at a time on the same state."""

    def __init__(
        self,
        storage: ObjectStorage,
        bucket: str,
        key: str,
        *,
        ttl_seconds: float = 60.0,
        settle_seconds: float = 0.5,
        owner: str | None = None,
        description: str = "",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.storage = storage
        self.bucket = bucket
        self.key = key
        self.ttl = timedelta(seconds=ttl_seconds)
        self.settle_seconds = settle_seconds
        self.owner = owner or lock_owner()
        self.description = description
        self.clock = clock
        self.held = False
        self._acquired_at = ""
        self._renewer: asyncio.Task[None] | None = None

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    async def read(self) -> dict[str, Any] | None:
        data = await self.storage.read_small(self.bucket, self.key, limit=MAX_STATE_BYTES)
        if data is None:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            return {}
        return record if isinstance(record, dict) else {}

    def _record(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquiredAt": self._acquired_at or format_time(now),
            "renewedAt": format_time(now),
            "expiresAt": format_time(now + self.ttl),
            "command": self.description,
        }

    async def _write(self) -> None:
        body = json.dumps(self._record(), sort_keys=True).encode()
        await self.storage.put(self.bucket, self.key, body, "application/json")

    async def acquire(self, *, force: bool = False) -> str | None:
        """Take the lock, or raise :class:`LockHeldError` when a live one is another run's. With
        ``force`` a live lock is taken over. Returns what was overridden (a sentence) or None.
        StorageError when the bucket cannot be read or written."""
        record = await self.read()
        now = self.clock()
        overridden: str | None = None
        if record is not None:
            state = LockState.of(record)
            if state.owner != self.owner and state.live(now):
                who = f"{state.owner or 'an unknown run'} (since {state.acquired_at})"
                if force:
                    overridden = f"took over the lock of {who}: --force-unlock"
                elif state.dead_here():
                    overridden = f"took over the lock of {who}: its process {state.pid} is gone"
                else:
                    raise LockHeldError(
                        f"another run holds the lock {self.location}: {who}, until "
                        f"{format_time(state.expires_at) if state.expires_at else '?'} unless renewed",
                        record,
                    )
        self._acquired_at = format_time(now)
        await self._write()
        if self.settle_seconds > 0:
            # A run that read the lock at the same moment wrote its own meanwhile: the later
            # write wins, and the run that reads back another owner backs off.
            await asyncio.sleep(self.settle_seconds)
            back = await self.read()
            if back is not None and LockState.of(back).owner != self.owner:
                raise LockHeldError(f"another run took the lock {self.location} at the same time", back)
        self.held = True
        return overridden

    def start_renewing(self, on_lost: Callable[[str], None]) -> None:
        """Renew the lock every third of its lifetime; ``on_lost`` is called (once) with why when
        another run took it over or it could not be renewed before it expired."""
        self._renewer = asyncio.create_task(self._renew(on_lost), name="lock-renewer")

    async def _renew(self, on_lost: Callable[[str], None]) -> None:
        interval = self.ttl.total_seconds() / 3
        valid_until = self.clock() + self.ttl
        while self.held:
            await asyncio.sleep(interval)
            try:
                record = await self.read()
                if record is not None and LockState.of(record).owner != self.owner:
                    self.held = False
                    on_lost(f"another run took the lock {self.location} over ({record.get('owner')})")
                    return
                await self._write()
                valid_until = self.clock() + self.ttl
            except StorageError as exc:
                logger.warning("the lock %s could not be renewed: %s", self.location, exc.message)
                if self.clock() >= valid_until:
                    self.held = False
                    on_lost(f"the lock {self.location} expired: it could not be renewed ({exc.message})")
                    return

    async def release(self) -> None:
        """Stop renewing and remove the lock if it is still ours (best effort)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        if not self.held:
            return
        self.held = False
        try:
            record = await self.read()
            if record is None or LockState.of(record).owner == self.owner:
                await self.storage.delete(self.bucket, self.key)
        except StorageError as exc:
            logger.warning("the lock %s could not be released: %s", self.location, exc.message)
