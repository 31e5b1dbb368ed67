"""The in-memory timer heap: rebuilt from the table on partition assignment, fed by each save.

Due times are durable in the execution state; this heap is only an index of them. Entries
are never removed when a timer is cancelled: when an entry is due the shell checks the
state still holds that timer (and `decide()` ignores stale TimerFired anyway).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

RETENTION = "cadenza:retention"


@dataclass(order=True)
class Entry:
    due: float
    key: str = field(compare=False)
    timer_id: str = field(compare=False)


class TimerHeap:
    """Timers by due time (epoch seconds); `timer_id == RETENTION` marks a table expiry."""

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._known: set[tuple[str, str, float]] = set()

    def __len__(self) -> int:
        return len(self._heap)

    def clear(self) -> None:
        self._heap.clear()
        self._known.clear()

    def push(self, key: str, timer_id: str, due: float) -> None:
        ident = (key, timer_id, due)
        if ident in self._known:
            return
        self._known.add(ident)
        heapq.heappush(self._heap, Entry(due, key, timer_id))

    def pop_due(self, now: float) -> list[Entry]:
        """Remove and return every entry due at or before `now`, earliest first."""
        due: list[Entry] = []
        while self._heap and self._heap[0].due <= now:
            entry = heapq.heappop(self._heap)
            self._known.discard((entry.key, entry.timer_id, entry.due))
            due.append(entry)
        return due

    def next_due(self) -> float | None:
        return self._heap[0].due if self._heap else None
