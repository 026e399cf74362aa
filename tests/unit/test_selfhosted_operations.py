"""The SQLite store of the self-hosted service's operations: what survives a restart, and what does not."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from speechkit_operator.contracts.grpc import GrpcCode
from speechkit_operator.selfhosted.operations import RESTARTED_MESSAGE, OperationStore, StoreError


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def store_at(path: Path, clock: Clock, retention: float = 3600) -> OperationStore:
    return OperationStore(retention_seconds=retention, clock=clock, path=path)


def test_finished_operations_and_their_times_survive_reopening(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state" / "operations.sqlite3"
    first = store_at(path, clock)
    done = first.create("aje1")
    clock.now += timedelta(seconds=2)
    response = {
        "@type": "t",
        "chunks": [{"channelTag": "1", "alternatives": [{"text": "é ü 汉", "words": []}]}],
    }
    assert first.complete(done.id, response)
    failed = first.create("aje2")
    assert first.fail(failed.id, GrpcCode.INVALID_ARGUMENT, "bad audio")
    running = first.create("aje3")
    first.mark_running(running.id)
    waiting = first.create("aje4")
    first.close()
    assert path.exists()
    assert path.parent.stat().st_mode & 0o777 == 0o700

    clock.now += timedelta(seconds=10)
    second = store_at(path, clock)
    assert second.recover() == 2
    assert second.recover() == 0
    kept = second.get(done.id)
    assert kept is not None
    assert kept.to_json() == {
        "id": done.id,
        "description": "STT async recognition",
        "createdAt": "2024-05-01T12:00:00Z",
        "createdBy": "aje1",
        "modifiedAt": "2024-05-01T12:00:02Z",
        "done": True,
        "response": response,
    }
    failure = second.get(failed.id)
    assert failure is not None and failure.error == {"code": 3, "message": "bad audio", "details": []}
    for interrupted in (running, waiting):
        operation = second.get(interrupted.id)
        assert operation is not None
        assert operation.to_json()["error"] == {"code": 10, "message": RESTARTED_MESSAGE, "details": []}
        assert operation.modified_at == clock.now
        assert not second.complete(interrupted.id, {"@type": "t"}), "an ended operation stays ended"
    assert len(second) == 4


def test_retention_counts_from_the_end_and_purge_shrinks_the_file(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "operations.sqlite3"
    store = store_at(path, clock, retention=60)
    big = {"@type": "t", "text": "x" * 100_000}
    ids = []
    for _ in range(50):
        operation = store.create("aje")
        store.complete(operation.id, big)
        ids.append(operation.id)
    late = store.create("aje")
    clock.now += timedelta(seconds=30)
    store.complete(late.id, {"@type": "t"})
    pages_full = _pages(path)

    clock.now += timedelta(seconds=30)
    assert store.get(ids[0]) is None  # expired exactly at the retention
    assert store.purge() == 49
    assert store.get(late.id) is not None
    assert len(store) == 1
    assert _pages(path) < pages_full / 10, "purged pages go back to the file system"
    clock.now += timedelta(seconds=30)
    assert store.purge() == 1
    assert len(store) == 0


def _pages(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(connection.execute("PRAGMA page_count").fetchone()[0])


def test_a_damaged_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "operations.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    store = store_at(path, Clock())
    operation = store.create("aje")
    assert store.get(operation.id) is not None
    [aside] = tmp_path.glob("operations.sqlite3.damaged-*")
    assert aside.read_bytes().startswith(b"this is not a database")
    assert "is damaged" in caplog.text


def test_a_database_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "operations.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer than this service's"):
        store_at(path, Clock()).recover()
    assert path.exists()


def test_an_unwritable_state_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError, match="cannot open the operation store"):
        store_at(blocker / "operations.sqlite3", Clock()).recover()


def test_the_memory_store_keeps_its_data_when_closed() -> None:
    store = OperationStore(retention_seconds=60, clock=Clock())
    operation = store.create("aje")
    store.close()
    assert store.get(operation.id) is not None
    assert not store.persistent


def test_a_closed_file_store_refuses_use(tmp_path: Path) -> None:
    store = store_at(tmp_path / "operations.sqlite3", Clock())
    store.create("aje")
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.create("aje")


def test_the_store_may_be_used_from_several_threads(tmp_path: Path) -> None:
    store = store_at(tmp_path / "operations.sqlite3", Clock())
    created: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(50):
            operation = store.create("aje")
            store.complete(operation.id, {"@type": "t"})
            with lock:
                created.append(operation.id)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(created)) == len(store) == 200
