"""Each workflow spec (and sub-workflow bundle) once a partition in the table, beside the
states that name it.

A state names its spec, and its bundle when it has one, by content key
(`domain.stored_apart`) and is stored without them: the spec was ~60 % of every changelog
record (4.3 of 7.1 KB for a ten-step chain), written again with each transition, and a
bundle holds every sub-workflow's snapshot. Each goes into the table once a partition
instead, as the entry `spec:<partition>:<content key>`, in that partition of the
changelog: it is written with the first state that names it, ahead of it in the same
persist, so both are in one record batch of that partition (the broker appends a batch
whole) and recover together.

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
from cadenza_scheduler.domain.state import stored_apart

PREFIX = "spec:"


class Table(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def __setitem__(self, key: str, value: bytes) -> None: ...
    def __delitem__(self, key: str) -> None: ...


def entry_key(partition: int, content_key: str) -> str:
    return f"{PREFIX}{partition}:{content_key}"


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
        self.named: dict[str, tuple[str, ...]] = {}  # execution key -> its entries

    def name(self, key: str, partition: int, state: ExecutionState) -> list[str]:
        """Execution `key` (of `partition`) is stored with `state`: make sure the table holds
        what the state keeps apart. Returns the entries written now, to persist before it."""
        docs = stored_apart(state)
        entries = tuple(entry_key(partition, content_key) for content_key, _ in docs)
        if self.named.get(key) == entries:
            return []
        self.release(key)
        self.named[key] = entries
        written = []
        for entry, (_, raw) in zip(entries, docs, strict=True):
            self.users.setdefault(entry, set()).add(key)
            if self.table.get(entry) is None:
                self.table[entry] = raw
                written.append(entry)
        return written

    def release(self, key: str) -> None:
        """Execution `key` is no longer stored: an entry goes when nothing else names it."""
        for entry in self.named.pop(key, ()):
            users = self.users.get(entry)
            if users is not None:
                users.discard(key)
                if users:
                    continue
                del self.users[entry]
            if self.table.get(entry) is not None:
                del self.table[entry]

    def json_for(self, key: str, partition: int) -> Callable[[str], bytes | None]:
        """How `load_state` finds what execution `key` (of `partition`) keeps apart."""
        return lambda content_key: self.table.get(entry_key(partition, content_key))

    def clear(self) -> None:
        self.users.clear()
        self.named.clear()

    def rebuilt(self, named: dict[str, tuple[str, ...]], entries: Iterable[str]) -> int:
        """After a recovery: `named` maps each owned execution to its entries, `entries` are
        the owned partitions' entries. Entries no execution names are deleted; returns how
        many."""
        self.clear()
        for key, its_entries in named.items():
            self.named[key] = its_entries
            for entry in its_entries:
                self.users.setdefault(entry, set()).add(key)
        orphans = [entry for entry in entries if entry not in self.users]
        for entry in orphans:
            del self.table[entry]
        return len(orphans)
