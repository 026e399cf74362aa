"""The interface every speech API client implements. The values it speaks are models:
:mod:`speechkit_operator.models.credentials` and :mod:`speechkit_operator.models.operation`.

The operator depends only on this module. The v2 REST client implements it today; a v3 client
(``recognizeFileAsync``/``getRecognition``) can implement it beside v2 without touching handlers.
"""

from __future__ import annotations

from typing import Protocol

from speechkit_operator.models.credentials import Credentials
from speechkit_operator.models.operation import OperationState, RecognitionRequest


class SpeechClient(Protocol):
    """Submit recognition and look at operations.

    Implementations retry transient failures themselves and raise
    :class:`~speechkit_operator.clients.speech.errors.SpeechApiError` when they give up.
    """

    async def submit(self, request: RecognitionRequest, credentials: Credentials) -> OperationState: ...

    async def get_operation(self, operation_id: str, credentials: Credentials) -> OperationState: ...

    async def cancel(self, operation_id: str, credentials: Credentials) -> None:
        """Ask for a running operation to be cancelled; best effort, not retried."""
        ...

    async def close(self) -> None: ...
