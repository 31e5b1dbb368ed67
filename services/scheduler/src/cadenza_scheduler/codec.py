"""How one execution is stored in the Faust table: state, outbox and a summary, as JSON bytes.

The stored value is one JSON line `{"outbox": [...], "timers": [[due_ts, timer_id], ...],
"finished_at": ts|null, "apart": [content_key, ...]}`, a newline, then the state as
written by `domain.dump_state(apart=True)` (or `null`): its spec and sub-workflow bundle
are stored once a partition beside it (`cadenza_scheduler.specs`), `apart` names them.
The outbox holds the events of the last transition until their sends were confirmed (see
the package docstring); `timers`, `finished_at` and `apart` repeat what the state says so
that a rebalance can rebuild the timer heap, resend outboxes and count who names which
stored document with `orjson.loads` only, without validating every state. A state written
whole (before specs were stored apart) still loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from cadenza_common.events import Event, event_class
from cadenza_scheduler.domain import ExecutionState, dump_state, load_state
from cadenza_scheduler.domain.state import make_room, stored_apart


@dataclass(frozen=True)
class Stored:
    """One execution as kept in the table (state None: never requested, or deleted)."""

    state: ExecutionState | None
    outbox: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Summary:
    """What a rebalance needs from a stored value without parsing the state."""

    outbox: list[Event]
    timers: list[tuple[float, str]]
    finished_at: float | None
    apart: tuple[str, ...] = ()  # content keys of the documents stored apart


def dump_event(event: Event) -> dict[str, Any]:
    return {"type": event.CE_TYPE, "data": event.model_dump(mode="json")}


def load_event(raw: dict[str, Any]) -> Event:
    return event_class(raw["type"]).model_validate(raw["data"])


def state_json(state: ExecutionState | None) -> bytes:
    """The state as JSON (`dump_state`, its spec and bundle apart), computed once per
    transition, used in both writes."""
    return b"null" if state is None else dump_state(state, apart=True)


def dump(
    stored: Stored,
    state_bytes: bytes | None = None,
    record_json: Callable[[Event], bytes] | None = None,
) -> bytes:
    """Serialise a stored execution for the table (`state_bytes`: `state_json(state)`;
    `record_json`: an outbox event's JSON as sent, so that it is encoded only once)."""
    state = stored.state
    if state_bytes is None:
        state_bytes = state_json(state)
    outbox = (
        [dump_event(e) for e in stored.outbox]
        if record_json is None
        else [{"type": e.CE_TYPE, "data": orjson.Fragment(record_json(e))} for e in stored.outbox]
    )
    meta = {
        "outbox": outbox,
        "timers": []
        if state is None
        else [[t.due_at.timestamp(), t.timer_id] for t in state.timers],
        "finished_at": None
        if state is None or state.finished_at is None or not state.finished
        else state.finished_at.timestamp(),
        "apart": [] if state is None else [key for key, _ in stored_apart(state)],
    }
    return orjson.dumps(meta) + b"\n" + state_bytes


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    meta, _, state = raw.partition(b"\n")
    return orjson.loads(meta), state


def load(raw: bytes | None, stored: Callable[[str], bytes | None] | None = None) -> Stored:
    """Parse a stored execution (None or empty: nothing stored); `stored(content_key)`: a
    document stored apart, for a state whose spec or bundle this process has not parsed."""
    if not raw:
        return Stored(None)
    meta, state = _split(raw)
    return Stored(
        None if state in (b"", b"null") else load_state(state, stored),
        [load_event(e) for e in meta.get("outbox") or ()],
    )


def summary(raw: bytes | None) -> Summary:
    """The outbox, timers and finish time of a stored execution, without parsing the state."""
    if not raw:
        return Summary([], [], None)
    meta, _ = _split(raw)
    return Summary(
        [load_event(e) for e in meta.get("outbox") or ()],
        [(float(due), str(tid)) for due, tid in meta.get("timers") or ()],
        meta.get("finished_at"),
        tuple(str(key) for key in meta.get("apart") or ()),
    )


class StateCache:
    """Parsed states by key, valid while the table still holds the very same bytes object.

    The memory store hands back the object we stored, so an identity check tells whether the
    parsed copy is current; after a recovery the bytes are new objects and are parsed again.

    Finished executions with nothing left to send are not kept: only their retention timer
    (or a late duplicate) reads them again, and parsing once then is cheap. Kept, they were
    most of the process's objects (a parsed state is ~60 the garbage collector tracks; the
    bench finishes ~170 executions a second) and made its passes 100-200 ms long.
    """

    def __init__(
        self,
        capacity: int = 50_000,
        stored: Callable[[str], Callable[[str], bytes | None]] | None = None,
    ) -> None:
        self._capacity = capacity
        self._items: dict[str, tuple[bytes, Stored]] = {}
        self._stored = stored  # execution key -> how to find what its state keeps apart

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def load(self, key: str, raw: bytes | None) -> Stored:
        if raw is None:
            self._items.pop(key, None)
            return Stored(None)
        hit = self._items.get(key)
        if hit is not None and hit[0] is raw:
            return hit[1]
        stored = load(raw, None if self._stored is None else self._stored(key))
        self.put(key, raw, stored)
        return stored

    def put(self, key: str, raw: bytes, stored: Stored) -> None:
        state = stored.state
        if state is not None and state.finished and not stored.outbox:
            self.forget(key)
            return
        make_room(self._items, self._capacity)
        self._items[key] = (raw, stored)

    def forget(self, key: str) -> None:
        self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()
