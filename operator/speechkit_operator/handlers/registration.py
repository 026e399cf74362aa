"""Register every handler on a kopf registry, with intervals taken from the settings."""

from __future__ import annotations

import kopf

from speechkit_operator.config import Settings
from speechkit_operator.constants import GROUP, JOB_PLURAL, OPERATION_ANNOTATION, VERSION
from speechkit_operator.handlers import jobs, lifecycle


def register(registry: kopf.OperatorRegistry, settings: Settings) -> kopf.OperatorRegistry:
    kopf.on.startup(registry=registry)(lifecycle.startup)
    kopf.on.cleanup(registry=registry)(lifecycle.cleanup)
    kopf.on.create(GROUP, VERSION, JOB_PLURAL, id="submit", registry=registry)(jobs.submit_job)
    # Matches only jobs whose operation id is annotated but missing from status (see jobs.restore_job):
    # other jobs cost nothing at startup.
    kopf.on.resume(
        GROUP,
        VERSION,
        JOB_PLURAL,
        id="restore",
        annotations={OPERATION_ANNOTATION: kopf.PRESENT},
        field="status.operationId",
        value=kopf.ABSENT,
        registry=registry,
    )(jobs.restore_job)
    # The timer matches Running jobs only: it (and kopf's finalizer with it) is gone once a job ends.
    # It wakes every tick; the workflow decides whether a check is due.
    kopf.timer(
        GROUP,
        VERSION,
        JOB_PLURAL,
        id="poll",
        interval=settings.poll_tick_seconds,
        field="status.phase",
        value="Running",
        registry=registry,
    )(jobs.poll_job)
    return registry
