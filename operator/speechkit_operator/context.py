"""The one object handlers receive (through kopf's memo): settings plus the clients built from them."""

from __future__ import annotations

from dataclasses import dataclass

from speechkit_operator.clients.retry import RetryPolicy
from speechkit_operator.clients.secrets import SecretReader
from speechkit_operator.clients.speech.base import SpeechClient
from speechkit_operator.clients.speech.v2 import SpeechKitV2Client
from speechkit_operator.clients.storage import StorageFactory
from speechkit_operator.config import Settings
from speechkit_operator.workflow import JobWorkflow


@dataclass
class OperatorContext:
    settings: Settings
    speech: SpeechClient
    workflow: JobWorkflow

    async def close(self) -> None:
        await self.speech.close()


def build_context(settings: Settings, *, secrets: SecretReader | None = None) -> OperatorContext:
    speech = SpeechKitV2Client(
        stt_url=settings.submit_base_url,
        operation_url=settings.operations_base_url,
        iam_token_url=str(settings.iam_token_url),
        timeout=settings.http_timeout,
        retry_policy=RetryPolicy(
            attempts=settings.retry_attempts,
            base_delay=settings.retry_base_delay,
            max_delay=settings.retry_max_delay,
        ),
    )
    workflow = JobWorkflow(
        settings,
        speech=speech,
        storage=StorageFactory(timeout=settings.http_timeout),
        secrets=secrets or SecretReader(cache_seconds=settings.secret_cache_seconds),
    )
    return OperatorContext(settings=settings, speech=speech, workflow=workflow)
