"""The store of recognition operations: SQLite, in a file that survives restarts, or in memory.

With a ``path`` (the service's ``state_dir``), operations are kept in an SQLite database there, so a
finished operation (its result or error) survives a restart of the service and stays readable until its
retention ends, as SpeechKit keeps results for 3 days. Operations that were still waiting or running when
the service stopped cannot be finished any more: :meth:`OperationStore.recover`, run at startup, ends them
with ABORTED ("the service restarted during recognition; resubmit"), so their clients get an answer
instead of a 404. Without a path the database lives in memory and a restart forgets everything (tests,
the demo).

A finished operation is kept for ``retention_seconds`` after it finished; :meth:`~OperationStore.purge`
drops older ones, and :meth:`~OperationStore.get` never answers them.

Results are stored once, rendered for the API that asked (``api``): a v2 operation keeps its
``LongRunningRecognitionResponse`` in ``response``; a v3 operation has no response (its type is
``google.protobuf.Empty``) and keeps getRecognition's messages, each already encoded as one line
(:func:`speechkit_operator.contracts.stt_v3.encode_result`), in the ``results`` table, which
:meth:`~OperationStore.result_lines` reads page by page, so that streaming hours of results never holds
them all in memory. They go with their operation (retention, purge) or earlier with
:meth:`~OperationStore.delete_results` (deleteRecognition), after which the operation stays readable
and its results are gone.

The methods are synchronous and thread-safe (one connection behind a lock); the service calls them from a
single thread of its own, never on the event loop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from speechkit_operator.contracts.grpc import GrpcCode, error_body
from speechkit_operator.contracts.operation import new_operation_id
from speechkit_operator.contracts.stt_v2 import OPERATION_DESCRIPTION
from speechkit_operator.selfhosted.protocol import render_operation

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: The database's file name inside the state directory.
DATABASE_NAME: Final = "operations.sqlite3"
#: What an operation that was in progress when the service stopped ends with.
RESTARTED_MESSAGE: Final = (
    "The service restarted during recognition, so this operation cannot finish; submit the audio again"
)
#: The APIs whose operations the store keeps: "v2" (the result in ``response``) and "v3" (in ``results``).
API_V2: Final = "v2"
API_V3: Final = "v3"
#: Schema 2 added ``api``, ``results_deleted`` and the ``results`` table (v3); a schema-1 file is
#: upgraded in place when opened.
_SCHEMA_VERSION: Final = 2
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    created_by TEXT NOT NULL,
    created_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    description TEXT NOT NULL,
    running INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    response TEXT,
    completed_at REAL,
    api TEXT NOT NULL DEFAULT 'v2',
    results_deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS operations_by_completion ON operations (completed_at);
CREATE TABLE IF NOT EXISTS results (
    operation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    line BLOB NOT NULL,
    PRIMARY KEY (operation_id, seq)
) WITHOUT ROWID;
"""
#: Columns schema 1 lacks, added to its files when they are opened.
_ADDED_COLUMNS: Final = (
    ("api", "TEXT NOT NULL DEFAULT 'v2'"),
    ("results_deleted", "INTEGER NOT NULL DEFAULT 0"),
)
_COLUMNS: Final = (
    "id, created_by, created_at, modified_at, description, running, done, error, response, completed_at, "
    "api, results_deleted"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


class StoreError(RuntimeError):
    """The database cannot be opened or used."""


@dataclass
class Operation:
    """One recognition operation, as read from the store."""

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
    #: The API that created it (:data:`API_V2` or :data:`API_V3`).
    api: str = API_V2
    #: v3: deleteRecognition dropped its results.
    results_deleted: bool = False

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
            empty_response=self.api == API_V3,
        )


class OperationStore:
    def __init__(self, *, retention_seconds: float, clock: Clock = utc_now, path: Path | None = None) -> None:
        """``path``: the database file (created with its directory); None keeps it in memory."""
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        self._retention = timedelta(seconds=retention_seconds)
        self._clock = clock
        self._path = path
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def persistent(self) -> bool:
        return self._path is not None

    # --- the connection ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreError("the operation store is closed")
            if self._connection is None:
                self._connection = self._open()
            try:
                with self._connection:  # one transaction: committed, or rolled back on an error
                    yield self._connection
            except sqlite3.Error as exc:
                raise StoreError(f"the operation store failed: {exc}") from exc

    def _open(self) -> sqlite3.Connection:
        if self._path is None:
            connection = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._initialise(connection)
            return connection
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            connection = sqlite3.connect(self._path, check_same_thread=False, timeout=10.0)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the operation store {self._path}: {exc}") from exc
        try:
            self._initialise(connection)
        except sqlite3.DatabaseError as exc:
            connection.close()
            if "version" in str(exc):
                raise StoreError(str(exc)) from exc
            # A damaged file: keep it for inspection, and start afresh rather than never starting again.
            aside = self._path.with_name(f"{self._path.name}.damaged-{int(self._clock().timestamp())}")
            logger.error(  # noqa: TRY400 - the traceback adds nothing to SQLite's message
                "The operation store %s is damaged (%s); moved it to %s", self._path, exc, aside
            )
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{self._path}{suffix}", f"{aside}{suffix}")
            connection = sqlite3.connect(self._path, check_same_thread=False, timeout=10.0)
            self._initialise(connection)
        return connection

    def _initialise(self, connection: sqlite3.Connection) -> None:
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        if version > _SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"the operation store {self._path} has schema version {version}, newer than this "
                f"service's {_SCHEMA_VERSION}: it was written by a newer release"
            )
        if self._path is not None:
            # Before any table exists, so that purged pages can be given back to the file system.
            connection.execute("PRAGMA auto_vacuum = INCREMENTAL")
            connection.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL loses nothing when the process dies (only, at worst, on a power cut).
            connection.execute("PRAGMA synchronous = NORMAL")
        connection.executescript(_SCHEMA)
        present = {str(row[1]) for row in connection.execute("PRAGMA table_info(operations)")}
        for column, declaration in _ADDED_COLUMNS:
            if column not in present:  # a schema-1 file
                connection.execute(f"ALTER TABLE operations ADD COLUMN {column} {declaration}")
        connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        connection.isolation_level = "DEFERRED"  # transactions committed by `with connection`

    def close(self) -> None:
        """Close the database. A memory store keeps its data (and stays usable) until it is dropped."""
        if self._path is None:
            return
        with self._lock:
            self._closed = True
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # --- operations ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._db() as db:
            return int(db.execute("SELECT COUNT(*) FROM operations").fetchone()[0])

    def create(
        self, created_by: str, *, description: str = OPERATION_DESCRIPTION, api: str = API_V2
    ) -> Operation:
        if api not in {API_V2, API_V3}:
            raise ValueError(f"unknown API {api!r}")
        now = self._clock()
        with self._db() as db:
            while True:
                operation_id = new_operation_id()
                try:
                    db.execute(
                        "INSERT INTO operations (id, created_by, created_at, modified_at, description, api) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (operation_id, created_by, now.timestamp(), now.timestamp(), description, api),
                    )
                except sqlite3.IntegrityError:  # pragma: no cover - 32**17 ids
                    continue
                break
        return Operation(
            id=operation_id,
            created_by=created_by,
            created_at=now,
            modified_at=now,
            description=description,
            api=api,
        )

    def get(self, operation_id: str) -> Operation | None:
        """The operation, or None when it is unknown or finished more than the retention period ago."""
        now = self._clock()
        with self._db() as db:
            query = f"SELECT {_COLUMNS} FROM operations WHERE id = ?"  # noqa: S608 - constant columns
            row = db.execute(query, (operation_id,)).fetchone()
            if row is None:
                return None
            operation = _from_row(row)
            if self._expired(operation, now):
                db.execute("DELETE FROM results WHERE operation_id = ?", (operation_id,))
                db.execute("DELETE FROM operations WHERE id = ?", (operation_id,))
                return None
            return operation

    def mark_running(self, operation_id: str) -> None:
        now = self._clock().timestamp()
        with self._db() as db:
            db.execute(
                "UPDATE operations SET running = 1, modified_at = ? WHERE id = ? AND done = 0",
                (now, operation_id),
            )

    def complete(self, operation_id: str, response: Mapping[str, Any]) -> bool:
        """Finish with a result; False when the operation is unknown or already finished."""
        return self._finish(operation_id, response=dict(response))

    def complete_results(self, operation_id: str, lines: Iterable[bytes]) -> bool:
        """Finish a v3 operation with its getRecognition messages (each one encoded line), in one
        transaction; False when the operation is unknown or already finished (nothing is stored)."""
        now = self._clock().timestamp()
        with self._db() as db:
            cursor = db.execute(
                "UPDATE operations SET done = 1, running = 0, response = NULL, error = NULL, "
                "modified_at = ?, completed_at = ? WHERE id = ? AND done = 0",
                (now, now, operation_id),
            )
            if cursor.rowcount != 1:
                return False
            db.executemany(
                "INSERT INTO results (operation_id, seq, line) VALUES (?, ?, ?)",
                ((operation_id, seq, bytes(line)) for seq, line in enumerate(lines)),
            )
            return True

    def result_lines(
        self, operation_id: str, *, after: int = -1, limit: int = 256
    ) -> list[tuple[int, bytes]]:
        """Up to ``limit`` stored result lines of ``operation_id`` after the one numbered ``after``, in
        order, with their numbers (pass the last one as ``after`` for the next page)."""
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, line FROM results WHERE operation_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (operation_id, after, limit),
            ).fetchall()
        return [(int(seq), bytes(line)) for seq, line in rows]

    def delete_results(self, operation_id: str) -> bool:
        """Forget a finished operation's results (deleteRecognition); the operation itself stays until
        its retention ends. False when the operation is unknown or not finished."""
        with self._db() as db:
            cursor = db.execute(
                "UPDATE operations SET results_deleted = 1 WHERE id = ? AND done = 1", (operation_id,)
            )
            if cursor.rowcount != 1:
                return False
            db.execute("DELETE FROM results WHERE operation_id = ?", (operation_id,))
            return True

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
        now = self._clock().timestamp()
        response_text = None if response is None else json.dumps(response, separators=(",", ":"))
        error_text = None if error is None else json.dumps(error, separators=(",", ":"))
        with self._db() as db:
            cursor = db.execute(
                "UPDATE operations SET done = 1, running = 0, response = ?, error = ?, modified_at = ?, "
                "completed_at = ? WHERE id = ? AND done = 0",
                (response_text, error_text, now, now, operation_id),
            )
            return cursor.rowcount == 1

    def recover(self, message: str = RESTARTED_MESSAGE) -> int:
        """End every operation left unfinished by an earlier run with ABORTED; how many there were.

        Call it once, at startup, before accepting requests."""
        now = self._clock().timestamp()
        error = json.dumps(error_body(GrpcCode.ABORTED, message), separators=(",", ":"))
        with self._db() as db:
            cursor = db.execute(
                "UPDATE operations SET done = 1, running = 0, error = ?, modified_at = ?, completed_at = ? "
                "WHERE done = 0",
                (error, now, now),
            )
            return cursor.rowcount

    def purge(self) -> int:
        """Drop operations past their retention; how many were dropped."""
        cutoff = (self._clock() - self._retention).timestamp()
        with self._db() as db:
            db.execute(
                "DELETE FROM results WHERE operation_id IN "
                "(SELECT id FROM operations WHERE completed_at IS NOT NULL AND completed_at <= ?)",
                (cutoff,),
            )
            cursor = db.execute(
                "DELETE FROM operations WHERE completed_at IS NOT NULL AND completed_at <= ?", (cutoff,)
            )
            dropped = cursor.rowcount
        if dropped and self._path is not None:
            with self._db() as db:
                # executescript steps the pragma to its end (execute would free a single page).
                db.executescript("PRAGMA incremental_vacuum;")
        return dropped

    def _expired(self, operation: Operation, now: datetime) -> bool:
        return operation.completed_at is not None and now - operation.completed_at >= self._retention


def _moment(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _from_row(row: tuple[Any, ...]) -> Operation:
    (
        identifier,
        created_by,
        created,
        modified,
        description,
        running,
        done,
        error,
        response,
        completed,
        api,
        results_deleted,
    ) = row
    return Operation(
        id=str(identifier),
        created_by=str(created_by),
        created_at=_moment(created),
        modified_at=_moment(modified),
        description=str(description),
        running=bool(running),
        done=bool(done),
        error=None if error is None else json.loads(error),
        response=None if response is None else json.loads(response),
        completed_at=None if completed is None else _moment(completed),
        api=str(api),
        results_deleted=bool(results_deleted),
    )
