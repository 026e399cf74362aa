"""The order in which waiting jobs are submitted: priority first, then namespaces take turns, then
the oldest job of the namespace whose turn it is.

A namespace that drops 10,000 recordings does not starve one that drops a single file: among the
namespaces whose best waiting job has the highest priority, the one served least recently goes
next. Pure: no clock, no I/O; a small object the scheduler keeps per quota scope.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(order=True, frozen=True)
class _Item:
    key: tuple[int, float, str]  # (-priority, created, name)
    uid: str = field(compare=False)


@dataclass
class FairQueue:
    _by_namespace: dict[str, list[_Item]] = field(default_factory=dict)
    _served: dict[str, int] = field(default_factory=dict)
    _turn: Iterator[int] = field(default_factory=itertools.count)
    _members: dict[str, str] = field(default_factory=dict)  # uid -> namespace
    _priority: dict[str, int] = field(default_factory=dict)  # uid -> priority
    _counts: dict[str, Counter[int]] = field(default_factory=dict)  # namespace -> priority -> jobs

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, uid: object) -> bool:
        return uid in self._members

    def push(self, uid: str, *, namespace: str, priority: int, created: float, name: str) -> None:
        if uid in self._members:
            return
        self._members[uid] = namespace
        self._priority[uid] = priority
        self._counts.setdefault(namespace, Counter())[priority] += 1
        heapq.heappush(self._by_namespace.setdefault(namespace, []), _Item((-priority, created, name), uid))

    def discard(self, uid: str) -> None:
        """Forget a job (deleted, or handled elsewhere); its heap item is dropped lazily."""
        namespace = self._members.pop(uid, None)
        if namespace is not None:
            self._uncount(namespace, self._priority.pop(uid))

    def _uncount(self, namespace: str, priority: int) -> None:
        counts = self._counts[namespace]
        counts[priority] -= 1
        if counts[priority] <= 0:
            del counts[priority]
        if not counts:
            del self._counts[namespace]

    def _head(self, namespace: str) -> _Item | None:
        heap = self._by_namespace.get(namespace)
        while heap and self._members.get(heap[0].uid) != namespace:
            heapq.heappop(heap)  # discarded, or pushed again under another namespace
        if not heap:
            self._by_namespace.pop(namespace, None)
            return None
        return heap[0]

    def _next_namespace(self) -> str | None:
        best: tuple[int, int, str] | None = None
        for namespace in list(self._by_namespace):
            head = self._head(namespace)
            if head is None:
                continue
            candidate = (head.key[0], self._served.get(namespace, -1), namespace)
            if best is None or candidate < best:
                best = candidate
        return best[2] if best else None

    def peek(self) -> str | None:
        namespace = self._next_namespace()
        head = self._head(namespace) if namespace is not None else None
        return head.uid if head is not None else None

    def pop(self) -> str | None:
        """The next job to submit, or None when none waits."""
        namespace = self._next_namespace()
        if namespace is None:
            return None
        item = heapq.heappop(self._by_namespace[namespace])
        del self._members[item.uid]
        self._uncount(namespace, self._priority.pop(item.uid))
        self._served[namespace] = next(self._turn)
        return item.uid

    def position(self, uid: str) -> int | None:
        """About where ``uid`` stands (1-based) if it is the newest of its namespace and priority:
        every job of a higher priority goes first, then the namespaces take turns. None: not queued.
        Cheap (namespaces times priorities), for a status message written once."""
        namespace = self._members.get(uid)
        if namespace is None:
            return None
        priority = self._priority[uid]
        rounds = self._counts[namespace][priority]  # it is served in this round of its namespace
        ahead = 0
        for counts in self._counts.values():
            for other, count in counts.items():
                if other > priority:
                    ahead += count
                elif other == priority:
                    ahead += min(count, rounds)
        return ahead
