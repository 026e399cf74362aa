"""The submission order: priority, then namespaces take turns, then the oldest first."""

from __future__ import annotations

from speechkit_operator.logic.queueing import FairQueue


def drain(queue: FairQueue) -> list[str]:
    order = []
    while (uid := queue.pop()) is not None:
        order.append(uid)
    return order


def test_oldest_first_within_a_namespace() -> None:
    queue = FairQueue()
    for created, name in ((3, "c"), (1, "a"), (2, "b")):
        queue.push(name, namespace="calls", priority=0, created=created, name=name)
    assert drain(queue) == ["a", "b", "c"]


def test_a_big_namespace_does_not_starve_a_small_one() -> None:
    queue = FairQueue()
    for index in range(1000):
        queue.push(f"bulk-{index}", namespace="bulk", priority=0, created=index, name=f"bulk-{index}")
    queue.push("urgent", namespace="support", priority=0, created=5000, name="urgent")
    order = drain(queue)
    assert order.index("urgent") <= 1  # its namespace's turn comes at once


def test_namespaces_take_turns() -> None:
    queue = FairQueue()
    for index in range(3):
        for namespace in ("a", "b"):
            queue.push(f"{namespace}{index}", namespace=namespace, priority=0, created=index, name=str(index))
    order = drain(queue)
    assert [uid[0] for uid in order] in (list("ababab"), list("bababa"))
    assert [uid for uid in order if uid.startswith("a")] == ["a0", "a1", "a2"]


def test_priority_comes_before_turns_and_age() -> None:
    queue = FairQueue()
    queue.push("old", namespace="a", priority=0, created=1, name="old")
    queue.push("low", namespace="b", priority=-5, created=0, name="low")
    queue.push("high", namespace="a", priority=10, created=9, name="high")
    queue.push("mid", namespace="c", priority=3, created=5, name="mid")
    assert drain(queue) == ["high", "mid", "old", "low"]


def test_discarded_jobs_are_skipped() -> None:
    queue = FairQueue()
    for name in "abc":
        queue.push(name, namespace="n", priority=0, created=ord(name), name=name)
    queue.discard("a")
    assert "a" not in queue and len(queue) == 2
    assert drain(queue) == ["b", "c"]
    assert queue.pop() is None


def test_position_estimates_the_place_of_a_new_job() -> None:
    queue = FairQueue()
    for index in range(100):
        queue.push(f"bulk-{index}", namespace="bulk", priority=0, created=index, name=str(index))
    queue.push("one", namespace="small", priority=0, created=200, name="one")
    queue.push("vip", namespace="small", priority=5, created=201, name="vip")
    assert queue.position("vip") == 1
    assert queue.position("one") == 3  # after vip and one bulk job: the namespaces take turns
    assert queue.position("bulk-99") == 102  # the newest bulk job goes last
    assert queue.position("missing") is None
    order = drain(queue)
    assert order.index("one") + 1 <= 3
