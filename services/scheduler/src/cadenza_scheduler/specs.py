"""Each workflow spec once a partition in the table, beside the states that name it.

A state names its spec by content key (`domain.spec_json`) and is stored without it: the
spec was ~60 % of every changelog record (4.3 of 7.1 KB for a ten-step chain), written
again with each transition. The spec goes into the table once a partition instead, as the
entry `spec:<partition>:<spec key>`, in that partition of the changelog: it is written with
the first state that names it, ahead of it in the same persist, so both are in one record
batch of that partition (the broker appends a batch whole) and recover together.

An entry lives while a state of its partition names it. `SpecEntries` counts who names
what; the last state to go (deleted after its retention) takes the entry with it, and
`rebuilt()` after a recovery drops the entries no state names (a crash between a state's
delete and its entry's). All on the agent's loop: a check and its write have no await in
between.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from cadenza_scheduler.domain import ExecutionState
from cadenza_scheduler.domain.state import spec_json

PREFIX = "spec:"


class Table(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def __setitem__(self, key: str, value: bytes) -> None: ...
    def __delitem__(self, key: str) -> None: ...


def entry_key(partition: int, spec_key: str) -> str:
    return f"{PREFIX}{partition}:{spec_key}"


def is_entry(key: str) -> bool:
    """Whether a table key is a spec entry (executions are keyed by their id)."""
    return key.startswith(PREFIX)


def entry_partition(key: str) -> int:
    """The partition a spec entry belongs to (its executions' partition)."""
    return int(key.split(":", 2)[1])


class SpecEntries:
    """The table's spec entries and the executions that name each."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.users: dict[str, set[str]] = {}  # entry -> execution keys naming it
        self.named: dict[str, str] = {}  # execution key -> its entry

    def name(self, key: str, partition: int, state: ExecutionState) -> str | None:
        """Execution `key` (of `partition`) is stored with `state`: make sure the table holds
        its spec. Returns the entry when it was written now, to persist before the state."""
        spec_key, raw = spec_json(state.spec)
        entry = entry_key(partition, spec_key)
        if self.named.get(key) == entry:
            return None
        self.release(key)
        self.named[key] = entry
        self.users.setdefault(entry, set()).add(key)
        if self.table.get(entry) is None:
            self.table[entry] = raw
            return entry
        return None

    def release(self, key: str) -> None:
        """Execution `key` is no longer stored: its entry goes when nothing else names it."""
        entry = self.named.pop(key, None)
        if entry is None:
            return
        users = self.users.get(entry)
        if users is not None:
            users.discard(key)
            if users:
                return
            del self.users[entry]
        if self.table.get(entry) is not None:
            del self.table[entry]

    def json_for(self, key: str, partition: int) -> Callable[[str], bytes | None]:
        """How `load_state` finds the spec of execution `key` (of `partition`)."""
        return lambda spec_key: self.table.get(entry_key(partition, spec_key))

    def clear(self) -> None:
        self.users.clear()
        self.named.clear()

    def rebuilt(self, named: dict[str, str], entries: Iterable[str]) -> int:
        """After a recovery: `named` maps each owned execution to its entry, `entries` are the
        owned partitions' entries. Entries no execution names are deleted; returns how many."""
        self.clear()
        for key, entry in named.items():
            self.named[key] = entry
            self.users.setdefault(entry, set()).add(key)
        orphans = [entry for entry in entries if entry not in self.users]
        for entry in orphans:
            del self.table[entry]
        return len(orphans)
