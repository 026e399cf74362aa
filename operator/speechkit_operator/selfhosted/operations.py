"""The in-memory store of recognition operations.

Operations live in the service's memory: a restart forgets them, and their clients then get 404 NOT_FOUND
as for an expired result (the operator marks such a job ``ResultExpired``). A finished operation is kept
for ``retention_seconds`` after it finished, like SpeechKit keeps results for 3 days.

The store is used from the event loop; a lock makes each method atomic should a thread call it too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from speechkit_operator.selfhosted.protocol import (
    OPERATION_DESCRIPTION,
    GrpcCode,
    error_body,
    new_operation_id,
    render_operation,
)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Operation:
    """One recognition operation; the store hands out copies, never the record it mutates."""

    id: str
    created_by: str
    created_at: datetime
    modified_at: datetime
    description: str = OPERATION_DESCRIPTION
    running: bool = False
    done: bool = False
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    completed_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return render_operation(
            operation_id=self.id,
            description=self.description,
            created_at=self.created_at,
            created_by=self.created_by,
            modified_at=self.modified_at,
            done=self.done,
            error=self.error,
            response=self.response,
        )

    def _copy(self) -> Operation:
        return replace(self)


class OperationStore:
    def __init__(self, *, retention_seconds: float, clock: Clock = utc_now) -> None:
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        self._retention = timedelta(seconds=retention_seconds)
        self._clock = clock
        self._operations: dict[str, Operation] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._operations)

    def create(self, created_by: str, *, description: str = OPERATION_DESCRIPTION) -> Operation:
        now = self._clock()
        with self._lock:
            operation_id = new_operation_id()
            while operation_id in self._operations:  # pragma: no cover - 32**17 ids
                operation_id = new_operation_id()
            operation = Operation(
                id=operation_id,
                created_by=created_by,
                created_at=now,
                modified_at=now,
                description=description,
            )
            self._operations[operation_id] = operation
            return operation._copy()

    def get(self, operation_id: str) -> Operation | None:
        """The operation, or None when it is unknown or finished more than the retention period ago."""
        now = self._clock()
        with self._lock:
            operation = self._operations.get(operation_id)
            if operation is None:
                return None
            if self._expired(operation, now):
                del self._operations[operation_id]
                return None
            return operation._copy()

    def mark_running(self, operation_id: str) -> None:
        with self._lock:
            operation = self._operations.get(operation_id)
            if operation is not None and not operation.done:
                operation.running = True
                operation.modified_at = self._clock()

    def complete(self, operation_id: str, response: Mapping[str, Any]) -> bool:
        """Finish with a result; False when the operation is unknown or already finished."""
        return self._finish(operation_id, response=dict(response))

    def fail(self, operation_id: str, code: GrpcCode, message: str) -> bool:
        """Finish with an error; False when the operation is unknown or already finished."""
        return self._finish(operation_id, error=error_body(code, message))

    def _finish(
        self,
        operation_id: str,
        *,
        response: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        now = self._clock()
        with self._lock:
            operation = self._operations.get(operation_id)
            if operation is None or operation.done:
                return False
            operation.done = True
            operation.running = False
            operation.response = response
            operation.error = error
            operation.modified_at = now
            operation.completed_at = now
            return True

    def purge(self) -> int:
        """Drop operations past their retention; how many were dropped."""
        now = self._clock()
        with self._lock:
            expired = [key for key, operation in self._operations.items() if self._expired(operation, now)]
            for key in expired:
                del self._operations[key]
            return len(expired)

    def _expired(self, operation: Operation, now: datetime) -> bool:
        return operation.completed_at is not None and now - operation.completed_at >= self._retention
