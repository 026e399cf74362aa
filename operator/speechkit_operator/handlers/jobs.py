"""TranscriptionJob and TranscriptionBatch handlers: hand every change of a job to the scheduler
(and to its batch), and of a batch to the batch controller; nothing more.

An ``on.event`` handler keeps no state in the job (no progress annotations, no finalizer), so a
job copied with ``kubectl get -o yaml`` is a new job, and deleting a job works in every phase, with
or without the operator.
"""

from __future__ import annotations

from typing import Any

import kopf

from speechkit_operator.context import OperatorContext


def _context(memo: kopf.Memo) -> OperatorContext:
    context = memo["context"]
    assert isinstance(context, OperatorContext)
    return context


async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    body = event.get("object")
    if isinstance(body, dict):
        context = _context(memo)
        deleted = event.get("type") == "DELETED"
        context.scheduler.observe(body, deleted=deleted)
        context.batches.observe_job(body, deleted=deleted)


async def batch_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    body = event.get("object")
    if isinstance(body, dict):
        _context(memo).batches.observe_batch(body, deleted=event.get("type") == "DELETED")
