"""One application of decide(): the working state, `now`, and what to emit, with exact ids."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from cadenza_common.events import Event, ExecutionEvent, TimerKind, id_text
from cadenza_scheduler.domain.state import ExecutionState, NodeStatus, Timer

# Event ids derive from the execution id and a per-execution counter: replay is exact.
EVENT_NAMESPACE = uuid.UUID("6f1f3c3e-2c55-5b0e-9a51-636164656e7a")

E = TypeVar("E", bound=ExecutionEvent)


_NAMESPACE_BYTES = EVENT_NAMESPACE.bytes
_VERSION_CLEAR = ~(0xF000 << 64) & ~(0xC000 << 48)
_VERSION_5 = (5 << 76) | (0x8000 << 48)  # version 5, RFC 4122 variant


def derived_id(execution_id: uuid.UUID, label: str) -> uuid.UUID:
    """A deterministic id for something of this execution: exactly
    `uuid.uuid5(EVENT_NAMESPACE, f"{execution_id}:{label}")`, in 40 % of the time (several
    ids are derived per transition): the UUID is made from its integer without
    `UUID.__init__`'s argument checks."""
    name = _NAMESPACE_BYTES + f"{id_text(execution_id)}:{label}".encode()
    digest = hashlib.sha1(name, usedforsecurity=False).digest()  # what UUIDv5 is defined as
    derived = _new_object(uuid.UUID)
    _set_attribute(derived, "int", int.from_bytes(digest[:16], "big") & _VERSION_CLEAR | _VERSION_5)
    _set_attribute(derived, "is_safe", uuid.SafeUUID.unknown)
    return derived


_new_object = object.__new__
_set_attribute = object.__setattr__  # UUID forbids setattr; its own __init__ does this


@dataclass
class Tx:
    """The state being changed by one event, the time it is applied at, and the emits."""

    state: ExecutionState
    now: datetime
    emits: list[Event] = field(default_factory=list)

    def next_id(self) -> uuid.UUID:
        self.state.emitted += 1
        return derived_id(self.state.execution_id, f"event:{self.state.emitted}")

    def history(self, cls: type[E], **fields: Any) -> E:
        """Emit a history event (executions.events) with the next `seq`."""
        self.state.seq += 1
        return self.send(cls, seq=self.state.seq, **fields)

    def send(self, cls: type[E], **fields: Any) -> E:
        """Emit an event about this execution (unless `execution_id` is given) without seq."""
        fields.setdefault("execution_id", self.state.execution_id)
        event = cls(
            event_id=self.next_id(), occurred_at=self.now, org_id=self.state.org_id, **fields
        )
        self.emits.append(event)
        return event

    def add_timer(
        self, kind: TimerKind, due_at: datetime, node_id: str | None, attempt: int | None
    ) -> Timer:
        timer_id = f"{kind.value}:{node_id or '-'}:{attempt or 0}"
        timer = Timer(timer_id=timer_id, kind=kind, due_at=due_at, node_id=node_id, attempt=attempt)
        self.state.timers = [t for t in self.state.timers if t.timer_id != timer_id]
        self.state.timers.append(timer)
        return timer

    def after(self, seconds: float) -> datetime:
        return self.now + timedelta(seconds=seconds)

    def variables(self, **extra: Any) -> dict[str, Any]:
        """What templates and expressions see: trigger, step, execution (+ item, index)."""
        steps = {
            node_id: {
                "output": node.output,
                "status": node.status.value,
                "error": None if node.error is None else node.error.model_dump(mode="json"),
            }
            for node_id, node in self.state.nodes.items()
            if node.status is not NodeStatus.PENDING
        }
        execution = {
            "id": str(self.state.execution_id),
            "workflow_id": str(self.state.workflow_id),
            "workflow_version": self.state.workflow_version,
            "started_at": self.state.started_at.isoformat(),
        }
        return {"trigger": self.state.input, "step": steps, "execution": execution, **extra}
