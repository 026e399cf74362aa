"""TranscriptionJob handlers: submit on creation, check while running.

They translate kopf's arguments into :class:`~speechkit_operator.workflow.JobRef` and
:class:`~speechkit_operator.models.job.JobStatus`, call the workflow, and apply its outcome.
"""

from __future__ import annotations

from typing import Any

import kopf

from speechkit_operator.constants import OPERATION_ANNOTATION
from speechkit_operator.context import OperatorContext
from speechkit_operator.models.job import JobStatus
from speechkit_operator.workflow import JobRef, Outcome


def _context(memo: kopf.Memo) -> OperatorContext:
    context = memo["context"]
    assert isinstance(context, OperatorContext)
    return context


def _ref(meta: kopf.Meta) -> JobRef:
    generation = meta.get("generation")
    return JobRef(
        namespace=str(meta.namespace),
        name=str(meta.name),
        uid=meta.uid,
        generation=int(generation) if generation else None,
    )


def _apply(outcome: Outcome, body: kopf.Body, patch: kopf.Patch) -> None:
    for field, value in outcome.status.items():
        patch.status[field] = value
    for note in outcome.notes:
        kopf.event(body, type=note.type, reason=note.reason, message=note.message)


async def submit_job(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    retry: int,
    **_: Any,
) -> None:
    context = _context(memo)
    outcome = await context.workflow.submit(_ref(meta), spec, JobStatus.from_body(status), attempt=retry)
    _apply(outcome, body, patch)
    if operation_id := outcome.status.get("operationId"):
        # kopf writes metadata before status: keep the id where it survives a crash in between.
        patch.metadata.annotations[OPERATION_ANNOTATION] = operation_id
    if outcome.retry_in is not None:
        # Record the retry in status now: kopf applies the patch before it schedules the retry.
        raise kopf.TemporaryError(outcome.status.get("message", "retrying"), delay=outcome.retry_in)


async def restore_job(
    status: kopf.Status, meta: kopf.Meta, body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    """At startup, for jobs whose status lost the operation id that their annotation kept."""
    context = _context(memo)
    annotated = str(meta.annotations.get(OPERATION_ANNOTATION, ""))
    _apply(context.workflow.restore(_ref(meta), annotated, JobStatus.from_body(status)), body, patch)


async def poll_job(
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    context = _context(memo)
    current = JobStatus.from_body(status)
    if not context.workflow.is_check_due(current):
        return
    outcome = await context.workflow.check(_ref(meta), spec, current)
    _apply(outcome, body, patch)
