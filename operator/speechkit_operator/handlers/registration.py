"""Register every handler on a kopf registry."""

from __future__ import annotations

import kopf

from speechkit_operator.config import Settings
from speechkit_operator.constants import BATCH_PLURAL, GROUP, JOB_PLURAL, VERSION
from speechkit_operator.handlers import jobs, lifecycle


def register(registry: kopf.OperatorRegistry, settings: Settings) -> kopf.OperatorRegistry:
    del settings  # the scheduler reads them from the context
    kopf.on.startup(registry=registry)(lifecycle.startup)
    kopf.on.cleanup(registry=registry)(lifecycle.cleanup)
    # Every event of every job, the initial listing included, goes to the scheduler.
    kopf.on.event(GROUP, VERSION, JOB_PLURAL, id="observe", registry=registry)(jobs.job_event)
    kopf.on.event(GROUP, VERSION, BATCH_PLURAL, id="observe-batch", registry=registry)(jobs.batch_event)
    return registry
