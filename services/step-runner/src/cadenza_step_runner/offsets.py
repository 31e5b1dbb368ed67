"""Which offset of a partition is safe to commit while many records are in flight.

Records finish out of order; the committable offset is one past the last record of the
unbroken run of finished records from the start, so a crash re-delivers every record
that was not finished (at-least-once) and no commit ever skips one.
"""

from __future__ import annotations

from collections import OrderedDict


class PartitionOffsets:
    """Tracks started and finished offsets of one partition."""

    def __init__(self) -> None:
        self._pending: OrderedDict[int, bool] = OrderedDict()
        self._committable: int | None = None

    def started(self, offset: int) -> None:
        """A record was taken for processing (offsets arrive in increasing order)."""
        self._pending[offset] = False

    def finished(self, offset: int) -> None:
        """A record was fully handled (its answer acknowledged by the broker)."""
        if offset in self._pending:
            self._pending[offset] = True
        while self._pending:
            first, done = next(iter(self._pending.items()))
            if not done:
                break
            self._pending.popitem(last=False)
            self._committable = first + 1

    def committable(self) -> int | None:
        """The offset to commit (next to read), or None when nothing new finished."""
        return self._committable

    @property
    def in_flight(self) -> int:
        """How many records were started but not all of those before them finished."""
        return len(self._pending)
