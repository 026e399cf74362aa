"""The operator's startup and cleanup: kopf settings and the shared context."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from speechkit_operator.config import Settings
from speechkit_operator.constants import ANNOTATION_PREFIX, FINALIZER
from speechkit_operator.context import OperatorContext, build_context
from speechkit_operator.envconfig import load_settings

#: Jobs per page when kopf lists them (at startup and after a watch expires).
LIST_CHUNK_SIZE = 500


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """kopf keeps no state in jobs (the handlers only observe); an old finalizer of ours, left by an
    earlier version, is removed by kopf since nothing requires it."""
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    kopf_settings.watching.server_timeout = settings.watch_server_timeout
    kopf_settings.watching.client_timeout = settings.watch_client_timeout
    # Listed in pages: 10,000 jobs are never one response held in memory at once.
    kopf_settings.watching.chunk_size = LIST_CHUNK_SIZE
    kopf_settings.networking.request_timeout = settings.request_timeout
    kopf_settings.posting.level = logging.INFO
    kopf_settings.peering.standalone = True


async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    context = memo.get("context")
    if not isinstance(context, OperatorContext):
        configured = memo.get("settings")
        identity = memo.get("identity")
        sole_actor = memo.get("sole_actor")
        context = build_context(
            configured if isinstance(configured, Settings) else load_settings(Settings),
            identity=identity if isinstance(identity, str) else None,
            sole_actor=sole_actor if isinstance(sole_actor, bool) else None,
        )
        memo["context"] = context
    configure_kopf(settings, context.settings)
    if context.settings.metrics_port and memo.get("serve_metrics", True):
        context.metrics.serve(context.settings.metrics_port)
    await context.workflow.load_rates()
    # Jobs arrive through the watch stream, which starts after the startup handlers; the loop
    # waits for them.
    context.scheduler.start()
    context.batches.start()


async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    context = memo.get("context")
    if isinstance(context, OperatorContext):
        await context.close()
