"""One loop that owns every unfinished job: it decides *when*, the workflow does *how*.

kopf's watch stream feeds :meth:`Scheduler.observe` (no per-object timers, daemons or finalizers:
an idle job costs a dictionary entry and a heap item). The loop sleeps until the earliest due time,
asks :func:`speechkit_operator.logic.lifecycle.plan` what each due job needs, and runs it:

- submissions go to one fair queue per quota scope (priority, then namespaces take turns, then age),
  served one at a time, so a crash leaves at most one submission uncertain, and paced by the
  scope's submission budget; a job that has to wait says so once (phase ``Queued``);
- due checks are paced by the scope's check budget, the most overdue first;
- checks, deadlines and deletions run concurrently, within ``check_concurrency``.

A job has at most one step running at a time. What a step learns (the next check, the checks made,
failed attempts) stays in memory: the status is written only when the phase or the reason changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from speechkit_operator.clients.kube import KubeError
from speechkit_operator.config import Settings
from speechkit_operator.constants import ADOPT_OPERATION_ANNOTATION, ADOPT_SUBMITTED_AT_ANNOTATION
from speechkit_operator.logic import lifecycle
from speechkit_operator.logic.budget import CarriedOver, ConcurrencyWindow, TokenBucket
from speechkit_operator.logic.queueing import FairQueue
from speechkit_operator.models.batch import batch_owner_reference
from speechkit_operator.models.job import ApiVersion, JobRef, JobStatus, Phase
from speechkit_operator.models.timestamps import parse_time, utcnow
from speechkit_operator.workflow import KUBE_RETRY_SECONDS, Job, JobWorkflow, StepResult

logger = logging.getLogger(__name__)

#: After an unexpected error in a step, the job is looked at again this much later.
ERROR_BACKOFF = timedelta(seconds=60)
#: After a step could not reach the Kubernetes API, the job is looked at again this much later.
KUBE_RETRY = timedelta(seconds=KUBE_RETRY_SECONDS)
#: Queued notices (status writes) in flight at once.
QUEUED_NOTICES_AT_ONCE = 4
#: Finished jobs remembered so that late watch events do not bring them back.
MAX_TOMBSTONES = 200_000


@dataclass
class _Entry:
    job: Job
    created_at: datetime
    limits: lifecycle.Limits
    priority: int = 0
    #: The quota scope, once known (per folder, it takes a look at the credentials).
    scope: str | None = None
    next_check: datetime | None = None
    next_attempt: datetime | None = None
    #: Taken by a step: queued for submission, waiting for a check slot, or running.
    busy: bool = False
    #: A step is running (not just waiting for its turn).
    stepping: bool = False
    deleted: bool = False
    #: The Queued status write in flight, if any (the submission waits for it).
    notice: asyncio.Task[Any] | None = None
    notice_started: bool = False
    #: Bumped on every (re)scheduling; heap items of an older version are ignored.
    version: int = 0


@dataclass(order=True)
class _Due:
    at: float
    seq: int
    uid: str = field(compare=False)
    version: int = field(compare=False)


@dataclass
class _Scope:
    """One quota scope: its waiting submissions, its due checks, and its budgets: hourly quotas
    for the cloud, the operations in flight for the self-hosted service."""

    name: str
    submits: TokenBucket | None
    checks: TokenBucket | None
    window: ConcurrencyWindow | None = None
    #: Submissions made before the start, within the first window (cloud only).
    carried: CarriedOver | None = None
    #: Jobs of the scope with an operation in flight.
    running: set[str] = field(default_factory=set)
    queue: FairQueue = field(default_factory=FairQueue)
    queue_changed: asyncio.Event = field(default_factory=asyncio.Event)
    due_checks: list[tuple[float, int, str]] = field(default_factory=list)
    checks_changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: Checks of API v3 jobs: their own quota (5 a second by default), their own queue.
    v3: _CheckLane | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def lane(self, v3: bool) -> _CheckLane:
        if v3 and self.v3 is not None:
            return self.v3
        return _CheckLane(self.checks, self.due_checks, self.checks_changed)


@dataclass
class _CheckLane:
    """A budget for checks and the checks waiting for it, most overdue first."""

    bucket: TokenBucket | None
    due: list[tuple[float, int, str]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Scheduler:
    def __init__(
        self,
        workflow: JobWorkflow,
        settings: Settings,
        *,
        sole_actor: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.workflow = workflow
        self.settings = settings
        #: True when no other operator acts on these jobs (leader election): an intent left by
        #: another process is then abandoned at once, not after it could have settled.
        self.sole_actor = sole_actor
        self.clock = clock
        self._jobs: dict[str, _Entry] = {}
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._scopes: dict[str, _Scope] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = time.monotonic()
        self._started_at = clock()
        #: Jobs that finished in this process (uid -> resourceVersion of the final status), until
        #: their DELETED event: a late watch event never brings one back. Bounded, oldest first out.
        self._finished: OrderedDict[str, str | None] = OrderedDict()
        #: Jobs whose earlier submission was counted against the quota after the start.
        self._debited: set[str] = set()
        self._limit = asyncio.Semaphore(settings.check_concurrency)
        #: Queued notices written at once.
        self._notices = asyncio.Semaphore(QUEUED_NOTICES_AT_ONCE)
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- the registry --------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._jobs)

    def queued(self, scope: str | None = None) -> int:
        """Jobs waiting for their turn to be submitted."""
        if scope is not None:
            return len(self._scopes[scope].queue) if scope in self._scopes else 0
        return sum(len(each.queue) for each in self._scopes.values())

    def _scope(self, name: str) -> _Scope:
        scope = self._scopes.get(name)
        if scope is None:
            submits = checks = v3_checks = None
            window = carried = None
            if self.settings.backend == "self-hosted":
                window = ConcurrencyWindow(self.settings.self_hosted_concurrency)
            else:
                # Budgets start empty: the previous process may have used the current window.
                settings, now = self.settings, time.monotonic()
                seconds, share = settings.quota_window_seconds, settings.quota_share
                submits = TokenBucket.for_quota(settings.submit_quota, seconds, share=share, now=now)
                checks = TokenBucket.for_quota(settings.check_quota, seconds, share=share, now=now)
                v3_checks = TokenBucket.for_quota(
                    settings.v3_check_quota, settings.v3_check_window_seconds, share=share, now=now
                )
                carried = CarriedOver(
                    limit=submits.capacity + submits.max_rate * seconds,
                    window=seconds,
                    until=self._started + seconds,
                )
            scope = self._scopes[name] = _Scope(name, submits, checks, window, carried)
            scope.v3 = _CheckLane(v3_checks)
            scope.tasks = [
                asyncio.create_task(self._submitter(scope), name=f"submitter-{name}"),
                asyncio.create_task(self._checker(scope, scope.lane(v3=False)), name=f"checker-{name}"),
                asyncio.create_task(self._checker(scope, scope.v3), name=f"checker-v3-{name}"),
            ]
        return scope

    def observe(self, body: Mapping[str, Any], *, deleted: bool = False) -> None:
        """A job as the watch stream delivered it (or ``deleted``)."""
        meta = body.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace")
        if not name or not namespace:
            return
        uid = str(meta.get("uid") or f"{namespace}/{name}")
        entry = self._jobs.get(uid)
        if deleted or meta.get("deletionTimestamp"):
            self._finished.pop(uid, None)
            if entry is not None:
                self._forget(uid, entry)
            return
        status = _status(body.get("status"))
        version = meta.get("resourceVersion")
        if entry is None and uid in self._finished:
            return  # finished here: what comes later is an echo, or an edit of a finished job
        if entry is None:
            generation = meta.get("generation")
            ref = JobRef(
                namespace, name, uid=meta.get("uid"), generation=int(generation) if generation else None
            )
            spec = dict(body.get("spec") or {})
            adopt, adopt_submitted_at = _adoption(meta.get("annotations"))
            job = Job(
                ref=ref,
                spec=spec,
                status=status,
                resource_version=version,
                checks=status.checks,
                adopt=adopt,
                adopt_submitted_at=adopt_submitted_at,
            )
            entry = self._jobs[uid] = _Entry(
                job=job,
                created_at=parse_time(meta.get("creationTimestamp")) or self.clock(),
                limits=self._limits(spec, batch_child=bool(batch_owner_reference(meta))),
                priority=_priority(spec),
                scope=self.workflow.scope_of(job),
            )
            self._debit_earlier_submission(entry)
        elif not self._is_newer(entry, version, status):
            return
        else:
            entry.job = replace(entry.job, status=status, resource_version=version)
        if not entry.busy:
            self._schedule(entry)

    def _is_newer(self, entry: _Entry, version: str | None, status: JobStatus) -> bool:
        """Whether an observed status may replace what the entry holds (watch events can be stale)."""
        held = entry.job.status
        ours, theirs = entry.job.resource_version, version
        if ours and theirs and ours.isdigit() and theirs.isdigit() and int(theirs) < int(ours):
            return False
        if held.operation_id and not status.operation_id:
            return False  # an echo from before the submission was recorded
        if held.phase is not None and held.phase.terminal and not (status.phase and status.phase.terminal):
            return False
        intent = status.submission
        return not (intent is not None and intent.holder == self.workflow.identity and not entry.busy)

    def _debit_earlier_submission(self, entry: _Entry) -> None:
        """A submission made before this process started, within the quota window, still counts:
        after a restart the operator does not exceed the quota in its first window (and its slot
        comes back when it leaves the window)."""
        submitted = parse_time(entry.job.status.submitted_at)
        window = timedelta(seconds=self.settings.quota_window_seconds)
        if submitted is None or not self._started_at - window < submitted <= self._started_at:
            return
        if _uid(entry) in self._debited:
            return
        self._debited.add(_uid(entry))
        if entry.scope is None:  # per folder: once its folder is known
            self._spawn(self._debit_in_its_scope(entry.job, submitted))
            return
        self._carry(entry.scope, submitted)

    async def _debit_in_its_scope(self, job: Job, submitted: datetime) -> None:
        try:
            scope = await self.workflow.look_up_scope(job)
        except Exception:
            logger.exception("job %s: could not find its quota scope", job.ref, extra=job.ref.log)
            scope = self.settings.backend
        self._carry(scope, submitted)

    def _carry(self, scope: str, submitted: datetime) -> None:
        carried = self._scope(scope).carried
        if carried is not None:
            age = (self.clock() - submitted).total_seconds()
            carried.add_earlier(time.monotonic() - age)

    def _forget(self, uid: str, entry: _Entry) -> None:
        del self._jobs[uid]
        self._untrack(uid)
        for scope in self._scopes.values():
            scope.queue.discard(uid)
        entry.deleted = True
        if not entry.stepping:  # a running step cancels when it ends (see _apply)
            self._spawn(self.workflow.cancel(entry.job))

    def _limits(self, spec: Mapping[str, Any], *, batch_child: bool = False) -> lifecycle.Limits:
        def seconds(key: str, default: int | None) -> int | None:
            value = spec.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default

        return lifecycle.Limits(
            deadline_seconds=seconds("activeDeadlineSeconds", self.settings.default_active_deadline_seconds),
            ttl_seconds=seconds("ttlSecondsAfterFinished", self.settings.default_ttl_seconds_after_finished),
            keep_failed=batch_child,
        )

    # -- scheduling ----------------------------------------------------------------------------

    def _plan(self, entry: _Entry) -> lifecycle.Plan:
        intent = entry.job.status.submission
        settles: datetime | None = None
        if intent is not None and not self.sole_actor and intent.holder != self.workflow.identity:
            started = parse_time(intent.started_at)
            if started is not None:
                settles = started + timedelta(seconds=self.settings.intent_settle_seconds)
        return lifecycle.plan(
            entry.job.status,
            created_at=entry.created_at,
            limits=entry.limits,
            now=self.clock(),
            next_check=entry.next_check,
            next_attempt=entry.next_attempt,
            intent_settles_at=settles,
            adopt=entry.job.adopt is not None,
        )

    def _track(self, entry: _Entry) -> None:
        """Count the job among its scope's operations in flight while it has one."""
        status = entry.job.status
        if status.operation_id and not (status.phase is not None and status.phase.terminal):
            if entry.scope is not None:
                self._scope(entry.scope).running.add(_uid(entry))
        else:
            self._untrack(_uid(entry))

    def _untrack(self, uid: str) -> None:
        for scope in self._scopes.values():
            if uid in scope.running:
                scope.running.discard(uid)
                if scope.window is not None:
                    scope.queue_changed.set()  # room for a waiting submission

    def _schedule(self, entry: _Entry) -> None:
        entry.version += 1
        self._track(entry)
        plan = self._plan(entry)
        if plan.step is lifecycle.Step.NOTHING or plan.at is None:
            if entry.job.status.phase is not None and entry.job.status.phase.terminal:
                # Finished, with nothing more to do: the job leaves the registry, a tombstone stays.
                uid = _uid(entry)
                self._jobs.pop(uid, None)
                self._finished[uid] = entry.job.resource_version
                while len(self._finished) > MAX_TOMBSTONES:
                    self._finished.popitem(last=False)
            return
        due = _Due(plan.at.timestamp(), next(self._seq), _uid(entry), entry.version)
        if not self._heap or due < self._heap[0]:
            self._wake.set()
        heapq.heappush(self._heap, due)
        if len(self._heap) > 2 * len(self._jobs) + 64:
            self._compact()

    def _compact(self) -> None:
        self._heap = [
            item
            for item in self._heap
            if (entry := self._jobs.get(item.uid)) is not None and entry.version == item.version
        ]
        heapq.heapify(self._heap)

    async def run(self) -> None:
        """The loop: wake at the earliest due time, start what is due, sleep again."""
        while not self._stopping:
            now = self.clock().timestamp()
            while self._heap and self._heap[0].at <= now and not self._stopping:
                item = heapq.heappop(self._heap)
                entry = self._jobs.get(item.uid)
                if entry is None or entry.version != item.version:
                    continue
                if not entry.busy:
                    self._due(entry)
                else:
                    self._withdraw_if_expired(entry)
            timeout = max(0.0, self._heap[0].at - self.clock().timestamp()) if self._heap else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self.run(), name="speechkit-scheduler")

    async def stop(self, grace: float) -> None:
        """Start nothing new; give the steps in flight (a submission and its record above all)
        ``grace`` seconds to finish, then cancel what is left."""
        self._stopping = True
        self._wake.set()
        for scope in self._scopes.values():
            scope.queue_changed.set()
            scope.checks_changed.set()
            if scope.v3 is not None:
                scope.v3.changed.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while running := {task for task in self._tasks if not task.done()}:
            left = deadline - loop.time()
            if left <= 0:
                for task in running:
                    task.cancel()
                break
            logger.info("waiting up to %.0fs for %d steps in flight", left, len(running))
            await asyncio.wait(running, timeout=left)
        loops = [task for scope in self._scopes.values() for task in scope.tasks]
        for task in [*loops, *([self._loop_task] if self._loop_task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _due(self, entry: _Entry) -> None:
        plan = self._plan(entry)
        now = self.clock()
        if plan.step is lifecycle.Step.NOTHING or plan.at is None:
            return
        if plan.at > now:
            self._schedule(entry)
            return
        step = plan.step
        budgeted = (lifecycle.Step.SUBMIT, lifecycle.Step.RESOLVE_UNCERTAIN, lifecycle.Step.CHECK)
        if entry.scope is None and step in budgeted:
            entry.busy = True
            self._spawn(self._look_up_scope(entry))
            return
        if step in (lifecycle.Step.SUBMIT, lifecycle.Step.RESOLVE_UNCERTAIN):
            self._enqueue(entry)
            return
        entry.busy = True
        if step is lifecycle.Step.CHECK:
            assert entry.scope is not None
            lane = self._scope(entry.scope).lane(v3=_is_v3(entry.job))
            heapq.heappush(lane.due, (plan.at.timestamp(), next(self._seq), _uid(entry)))
            lane.changed.set()
        elif step is lifecycle.Step.ADOPT:
            # Not a call to SpeechKit: no budget, no queue.
            self._spawn(self._step(entry, self.workflow.adopt, limited=True))
        elif step is lifecycle.Step.DEADLINE:
            seconds = entry.limits.deadline_seconds or 0
            self._spawn(self._step(entry, lambda job: self.workflow.deadline(job, seconds), limited=True))
        elif step is lifecycle.Step.DELETE:
            self._spawn(self._step(entry, self.workflow.delete, limited=True))

    async def _look_up_scope(self, entry: _Entry) -> None:
        """Find the job's quota scope (its credentials' folder), then let it go on."""
        try:
            entry.scope = await self.workflow.look_up_scope(entry.job)
        except Exception:  # a bug: visible, and the shared scope keeps the job moving
            logger.exception("job %s: could not find its quota scope", entry.job.ref, extra=entry.job.ref.log)
            entry.scope = self.settings.backend
        finally:
            entry.busy = False
        if _uid(entry) not in self._jobs or entry.deleted or self._stopping:
            return
        self._track(entry)
        self._due(entry)

    # -- submissions: one queue per quota scope, one at a time ---------------------------------

    def _enqueue(self, entry: _Entry) -> None:
        entry.busy = True
        assert entry.scope is not None
        scope = self._scope(entry.scope)
        uid = _uid(entry)
        ref = entry.job.ref
        scope.queue.push(
            uid,
            namespace=ref.namespace,
            priority=entry.priority,
            created=entry.created_at.timestamp(),
            name=ref.name,
        )
        scope.queue_changed.set()
        if entry.limits.deadline_seconds is not None:
            # Its deadline may come while it waits in line: look again then.
            deadline = entry.created_at + timedelta(seconds=entry.limits.deadline_seconds)
            heapq.heappush(self._heap, _Due(deadline.timestamp(), next(self._seq), uid, entry.version))
            self._wake.set()
        if scope.submits is None or entry.job.status.submission is not None:
            return
        now = time.monotonic()
        position = scope.queue.position(uid) or 1
        ready = scope.submits.ready_at(now)
        if scope.carried is not None:
            ready = max(ready, scope.carried.ready_at(now))
        wait = ready - now + (position - 1) / scope.submits.rate
        status = entry.job.status
        # Said once, by a job that has not said anything else yet: a job waiting to retry a
        # problem keeps saying that (its reason), without a write each time it is back in line.
        fresh = status.phase is None or (status.phase is Phase.PENDING and not status.reason)
        if wait > 1.0 and fresh:
            eta = self.clock() + timedelta(seconds=wait)
            entry.notice = asyncio.ensure_future(self._notify_queued(entry, position, eta))

    def _withdraw_if_expired(self, entry: _Entry) -> None:
        """A job whose deadline came while it waited in line for a submission leaves the line for
        its deadline step: it is never submitted (paid for) after its deadline, nor left Queued."""
        scope = self._scopes.get(entry.scope) if entry.scope is not None else None
        uid = _uid(entry)
        if entry.stepping or scope is None or uid not in scope.queue:
            return
        if self._plan(entry).step is not lifecycle.Step.DEADLINE:
            return
        notice = entry.notice
        if notice is not None and entry.notice_started and not notice.done():
            # Its Queued notice is being written: look again once it has landed.
            heapq.heappush(
                self._heap, _Due(self.clock().timestamp() + 1.0, next(self._seq), uid, entry.version)
            )
            return
        scope.queue.discard(uid)
        scope.queue_changed.set()
        self._drop_notice(entry)
        entry.busy = False
        self._due(entry)

    def _drop_notice(self, entry: _Entry) -> Awaitable[Any] | None:
        """Forget the job's Queued notice: cancelled if not started yet; one being written is
        returned, to be awaited before the next write."""
        notice, entry.notice = entry.notice, None
        started, entry.notice_started = entry.notice_started, False
        if notice is None:
            return None
        if started:
            return notice
        notice.cancel()
        return None

    async def _notify_queued(self, entry: _Entry, position: int, eta: datetime) -> None:
        """Write the Queued notice, a few at a time: 10,000 jobs queued at once are 10,000 writes
        that must not crowd out the submissions' own. A job whose turn comes first skips it."""
        async with self._notices:
            if entry.notice is None or entry.deleted:
                return
            entry.notice_started = True
            try:
                result = await self.workflow.queued(entry.job, position=position, eta=eta)
            except KubeError as exc:
                logger.warning(
                    "job %s: could not say it is queued: %s", entry.job.ref, exc, extra=entry.job.ref.log
                )
                return
            except Exception:
                logger.exception("job %s: could not say it is queued", entry.job.ref, extra=entry.job.ref.log)
                return
        if result.body is not None:
            self._refresh_from(entry, result.body)

    async def _wait_for(self, event: asyncio.Event, until: float | None = None) -> None:
        """Sleep until ``event`` is set or the monotonic time ``until`` comes (forever: None)."""
        event.clear()
        timeout = None if until is None else max(0.0, until - time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _submitter(self, scope: _Scope) -> None:
        """The scope's submissions, one at a time, in the queue's order, within its budget."""
        while not self._stopping:
            if not scope.queue:
                await self._wait_for(scope.queue_changed)
                continue
            window = scope.window
            if window is not None and not window.has_room(len(scope.running), time.monotonic()):
                blocked = window.blocked_until if window.blocked_until > time.monotonic() else None
                await self._wait_for(scope.queue_changed, blocked)
                continue
            carried = scope.carried
            if carried is not None and (ready := carried.ready_at(time.monotonic())) > time.monotonic():
                await self._wait_for(scope.queue_changed, ready)
                continue
            bucket = scope.submits
            if bucket is not None and not bucket.take(time.monotonic()):
                await self._wait_for(scope.queue_changed, bucket.ready_at(time.monotonic()))
                continue
            uid = scope.queue.pop()
            entry = self._jobs.get(uid) if uid is not None else None
            if entry is None:
                if bucket is not None:
                    bucket.give_back(time.monotonic())
                continue
            # Its turn came: a notice not written yet has nothing to say any more; one being
            # written lands before the intent.
            if (landing := self._drop_notice(entry)) is not None:
                with contextlib.suppress(Exception):
                    await landing
            if self._stopping or entry.deleted:
                if bucket is not None:
                    bucket.give_back(time.monotonic())
                if self._stopping:
                    return
                continue
            if self._plan(entry).step is lifecycle.Step.DEADLINE:  # it came while the job waited
                if bucket is not None:
                    bucket.give_back(time.monotonic())
                entry.busy = False
                self._due(entry)
                continue
            if entry.job.status.submission is not None and not entry.job.status.operation_id:
                action: Callable[[Job], Awaitable[StepResult]] = self.workflow.resolve_uncertain
            else:
                action = self.workflow.submit
            entry.job = replace(entry.job, scope=scope.name)
            task = asyncio.create_task(
                self._step(entry, action, budget=bucket, window=window, carried=carried)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.wait({task})

    async def _checker(self, scope: _Scope, lane: _CheckLane) -> None:
        """The lane's due checks, the most overdue first, within its budget. A concurrency slot is
        taken before a token, so checks that wait for a slot never pile up tokens."""
        while not self._stopping:
            if not lane.due:
                await self._wait_for(lane.changed)
                continue
            await self._limit.acquire()
            try:
                bucket = lane.bucket
                if bucket is not None and not bucket.take(time.monotonic()):
                    self._limit.release()
                    await self._wait_for(lane.changed, bucket.ready_at(time.monotonic()))
                    continue
                _, _, uid = heapq.heappop(lane.due)
                entry = self._jobs.get(uid)
                if entry is None:
                    if bucket is not None:
                        bucket.give_back(time.monotonic())
                    self._limit.release()
                    continue
            except BaseException:
                self._limit.release()
                raise
            entry.job = replace(entry.job, scope=scope.name)
            self._spawn(self._step(entry, self.workflow.check, budget=bucket, release=self._limit))

    # -- running a step ------------------------------------------------------------------------

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _step(
        self,
        entry: _Entry,
        action: Callable[[Job], Awaitable[StepResult]],
        *,
        limited: bool = False,
        budget: TokenBucket | None = None,
        window: ConcurrencyWindow | None = None,
        carried: CarriedOver | None = None,
        release: asyncio.Semaphore | None = None,
    ) -> None:
        # A step that raised may have called SpeechKit before it did: its token stays spent.
        spent = False
        entry.stepping = True
        try:
            if limited:
                async with self._limit:
                    result = await action(entry.job)
            else:
                result = await action(entry.job)
        except KubeError as exc:
            if exc.gone:
                # Deleted (its DELETED event may never come: a watch gap) or replaced by another
                # job under its name: nothing to do for it any more.
                logger.info("job %s is gone", entry.job.ref, extra=entry.job.ref.log)
                result = StepResult(gone=True)
            else:
                # The apiserver is unreachable or overloaded (a restart, a rollout): nothing is
                # wrong with the job, so it is looked at again soon, without a traceback.
                logger.warning(
                    "job %s: Kubernetes API unavailable, trying again in %.0fs: %s",
                    entry.job.ref,
                    KUBE_RETRY.total_seconds(),
                    exc,
                    extra=entry.job.ref.log,
                )
                retry = self.clock() + KUBE_RETRY
                result = StepResult(next_check=retry, next_attempt=retry)
            spent = True
        except Exception as exc:
            logger.exception(
                "job %s: step failed (%s)", entry.job.ref, type(exc).__name__, extra=entry.job.ref.log
            )
            result = StepResult(
                next_check=self.clock() + ERROR_BACKOFF, next_attempt=self.clock() + ERROR_BACKOFF
            )
            spent = True
        finally:
            entry.busy = entry.stepping = False
            if release is not None:
                release.release()
        spent = spent or result.spent
        if budget is not None:
            now = time.monotonic()
            if result.throttled is not None:
                budget.refused(now, result.throttled or None)
            elif result.called:
                budget.succeeded(now)
                if result.extra_calls:
                    budget.debit(now, result.extra_calls)
            elif not spent:
                budget.give_back(now)
        if carried is not None and (result.called or result.throttled is not None or spent):
            carried.made += 1
        if window is not None:
            if result.throttled is not None:
                window.refused(time.monotonic(), result.throttled or None)
            elif result.called:
                window.succeeded(len(self._scope(entry.scope).running) + 1 if entry.scope else 1)
        self._apply(entry, result)

    def _apply(self, entry: _Entry, result: StepResult) -> None:
        uid = _uid(entry)
        job = entry.job
        if result.body is not None:
            meta = result.body.get("metadata") or {}
            job = replace(
                job,
                status=_status(result.body.get("status")),
                resource_version=meta.get("resourceVersion") or job.resource_version,
            )
        if result.checks is not None:
            job = replace(job, checks=result.checks)
        if result.scope is not None and result.scope != entry.scope:
            logger.info("job %s: quota scope %s", job.ref, result.scope, extra=job.ref.log)
            self._untrack(uid)
            entry.scope = result.scope
        if result.attempt_failed:
            job = replace(job, attempts=job.attempts + 1)
        entry.job = job
        if result.next_check is not None:
            entry.next_check = result.next_check
        if result.next_attempt is not None:
            entry.next_attempt = result.next_attempt
        if result.gone:
            self._jobs.pop(uid, None)
            self._untrack(uid)
            # Deleted under the step (or its DELETED event missed): its operation is not needed.
            self._spawn(self.workflow.cancel(entry.job))
            return
        if entry.deleted:
            self._spawn(self.workflow.cancel(entry.job))
            return
        if result.stale:
            self._spawn(self._refresh(entry))
            return
        if self._stopping:
            return
        self._schedule(entry)

    def _refresh_from(self, entry: _Entry, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        entry.job = replace(
            entry.job,
            status=_status(body.get("status")),
            resource_version=meta.get("resourceVersion") or entry.job.resource_version,
        )

    async def _refresh(self, entry: _Entry) -> None:
        """The job changed under a step: read it again, then decide afresh."""
        uid = _uid(entry)
        entry.busy = True
        try:
            body = await self.workflow.jobs.get(entry.job.ref)
        except KubeError as exc:
            logger.warning("job %s: could not read it again: %s", entry.job.ref, exc, extra=entry.job.ref.log)
            body, entry.next_attempt = {}, self.clock() + KUBE_RETRY
        finally:
            entry.busy = False
        if entry.deleted or self._jobs.get(uid) is not entry:
            return  # deleted (and forgotten) meanwhile
        if not body:
            if body is None:  # gone
                self._jobs.pop(uid, None)
                self._untrack(uid)
            else:  # could not read it: try again later
                self._schedule(entry)
            return
        meta = body.get("metadata") or {}
        if entry.job.ref.uid and meta.get("uid") not in (None, entry.job.ref.uid):
            self._jobs.pop(uid, None)  # another job under the same name
            self._untrack(uid)
            return
        entry.job = replace(
            entry.job, status=_status(body.get("status")), resource_version=meta.get("resourceVersion")
        )
        self._schedule(entry)

    # -- introspection (tests, metrics) --------------------------------------------------------

    def budget_state(self) -> dict[str, dict[str, float]]:
        """Per scope: jobs waiting, and tokens and pace of each budget (for metrics)."""
        now = time.monotonic()
        state: dict[str, dict[str, float]] = {}
        for name, scope in tuple(self._scopes.items()):
            entry: dict[str, float] = {
                "queued": float(len(scope.queue)),
                "running": float(len(scope.running)),
            }
            if scope.window is not None:
                entry["concurrency"] = float(int(scope.window.size))
            v3_bucket = scope.v3.bucket if scope.v3 is not None else None
            for budget, bucket in (
                ("submit", scope.submits),
                ("check", scope.checks),
                ("v3_check", v3_bucket),
            ):
                if bucket is not None:
                    entry[f"{budget}_tokens"] = bucket.available(now)
                    entry[f"{budget}_rate"] = bucket.rate
            state[name] = entry
        return state

    def phase_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        # Called from the metrics server's thread: iterate over a snapshot (taken at once, under
        # the GIL), never over the registry the loop is changing.
        for entry in tuple(self._jobs.values()):
            phase = entry.job.status.phase or Phase.PENDING
            counts[phase.value] = counts.get(phase.value, 0) + 1
        return counts


def _is_v3(job: Job) -> bool:
    """Whether the job uses API v3 (its checks then have their own quota)."""
    recognition = job.spec.get("recognition") if isinstance(job.spec, Mapping) else None
    return isinstance(recognition, Mapping) and recognition.get("api") == ApiVersion.V3.value


def _adoption(annotations: Any) -> tuple[str | None, datetime | None]:
    """The operation a job was created to take over, from its annotations, as written: any string,
    including one that is not an operation id and the empty one. Such a job is never submitted:
    :meth:`JobWorkflow.adopt` checks the id and fails the job (``InvalidAdoption``) when it is not
    one, since the operation the annotation meant may be running. None without the annotation (or
    with a value that is not a string, which the API server never stores)."""
    if not isinstance(annotations, Mapping):
        return None, None
    operation = annotations.get(ADOPT_OPERATION_ANNOTATION)
    if not isinstance(operation, str):
        return None, None
    submitted = annotations.get(ADOPT_SUBMITTED_AT_ANNOTATION)
    return operation, parse_time(submitted) if isinstance(submitted, str) else None


def _priority(spec: Mapping[str, Any]) -> int:
    value = spec.get("priority")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _uid(entry: _Entry) -> str:
    ref = entry.job.ref
    return ref.uid or f"{ref.namespace}/{ref.name}"


def _status(raw: Any) -> JobStatus:
    try:
        return JobStatus.from_body(raw if isinstance(raw, Mapping) else {})
    except ValueError:
        return JobStatus()
