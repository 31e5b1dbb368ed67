"""ExecutionState and NodeState: everything the scheduler knows about one execution (no I/O).

The state is a pydantic model so the Faust shell can store it as JSON in its table;
`decide()` never mutates the state it is given (it works on `clone()`).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from cadenza_common.events import (
    Actor,
    ExecutionStatus,
    ParentRef,
    StepError,
    TimerKind,
    WorkflowSnapshot,
)
from cadenza_common.workflow import WorkflowSpec


class NodeStatus(StrEnum):
    """Where one node is; the last four are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {NodeStatus.SUCCEEDED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELLED}
)


class _State(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ItemState(_State):
    """One item of a `map` node."""

    status: NodeStatus = NodeStatus.PENDING
    attempt: int = 0
    output: Any = None
    error: StepError | None = None


class NodeState(_State):
    """One node: its status, current attempt, and what it produced."""

    status: NodeStatus = NodeStatus.PENDING
    attempt: int = 0
    output: Any = None
    error: StepError | None = None
    reason: str = ""
    chosen: list[str] | None = None
    goto_fired: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    child_execution_id: uuid.UUID | None = None
    items: list[Any] | None = None
    item_states: list[ItemState] | None = None

    def clone(self) -> NodeState:
        items = self.item_states
        if items is None:
            return self.model_copy()
        return self.model_copy(update={"item_states": [i.model_copy() for i in items]})


class Timer(_State):
    """A due time owned by this execution; the shell fires it as TimerFired."""

    timer_id: str
    kind: TimerKind
    due_at: datetime
    node_id: str | None = None
    attempt: int | None = None


class Compensation(_State):
    """Saga compensation in progress: nodes to undo, in reverse completion order."""

    order: list[str]
    position: int = 0
    attempt: int = 1
    failed: list[str] = Field(default_factory=list)

    def clone(self) -> Compensation:
        return self.model_copy(update={"failed": list(self.failed)})


class ExecutionState(_State):
    """One execution: its workflow snapshot, node states, timers and counters."""

    execution_id: uuid.UUID
    org_id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    spec: WorkflowSpec
    input: dict[str, Any] = Field(default_factory=dict)
    initiated_by: Actor = Field(default_factory=Actor)
    parent: ParentRef | None = None
    jitter_seed: int = 0
    sub_workflows: dict[str, WorkflowSnapshot] = Field(default_factory=dict)
    status: ExecutionStatus = ExecutionStatus.RUNNING
    phase: Literal["running", "compensating", "finished"] = "running"
    started_at: datetime
    finished_at: datetime | None = None
    seq: int = 0
    emitted: int = 0
    nodes: dict[str, NodeState] = Field(default_factory=dict)
    timers: list[Timer] = Field(default_factory=list)
    completed: list[str] = Field(default_factory=list)
    failure: StepError | None = None
    failed_node: str | None = None
    compensation: Compensation | None = None
    output: Any = None
    _owned: set[str] = PrivateAttr(default_factory=set)

    @property
    def finished(self) -> bool:
        return self.phase == "finished"

    def __eq__(self, other: object) -> bool:
        # the copy-on-write bookkeeping is not part of what the state is
        return isinstance(other, ExecutionState) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    def clone(self) -> ExecutionState:
        """A copy that decide() may change freely.

        Containers that decide() changes in place are copied; values it only replaces
        (the spec, outputs, errors, timers) are shared: they are never mutated. Node
        states are copied on first write (`node()`), so an event pays for what it touches.
        """
        comp = self.compensation
        copied = self.model_copy(
            update={
                "nodes": dict(self.nodes),
                "timers": list(self.timers),
                "completed": list(self.completed),
                "compensation": None if comp is None else comp.clone(),
            }
        )
        copied._owned = set()
        return copied

    def node(self, node_id: str) -> NodeState:
        """The node's state, writable: after `clone()` it is copied on first use."""
        if node_id not in self._owned:
            self.nodes[node_id] = self.nodes[node_id].clone()
            self._owned.add(node_id)
        return self.nodes[node_id]

    def timer(self, timer_id: str) -> Timer | None:
        return next((t for t in self.timers if t.timer_id == timer_id), None)

    def drop_timers(self, node_id: str | None = None) -> None:
        """Forget the timers of one node (all timers when `node_id` is None)."""
        if node_id is None:
            self.timers = []
        else:
            item_prefix = f"{node_id}["
            self.timers = [
                t
                for t in self.timers
                if t.node_id != node_id and not (t.node_id or "").startswith(item_prefix)
            ]


# --- serialisation for the shell's table ----------------------------------------------------

_SPECS: dict[str, WorkflowSpec] = {}
_MAX_SPECS = 256


def dump_state(state: ExecutionState) -> bytes:
    """The state as JSON bytes, with a key that lets `load_state` reuse the parsed spec."""
    doc = state.model_dump(mode="json")
    spec_json = orjson.dumps(doc["spec"], option=orjson.OPT_SORT_KEYS)
    doc["spec_key"] = hashlib.blake2b(spec_json, digest_size=16).hexdigest()
    return orjson.dumps(doc)


def load_state(data: bytes) -> ExecutionState:
    """Read a state written by `dump_state`; a spec seen before is not parsed again.

    Raises:
        pydantic.ValidationError: when the bytes are not a valid state.
    """
    doc = orjson.loads(data)
    key = doc.pop("spec_key", None)
    spec = _SPECS.get(key) if isinstance(key, str) else None
    if spec is None:
        spec = WorkflowSpec.model_validate(doc["spec"])
        if isinstance(key, str):
            if len(_SPECS) >= _MAX_SPECS:
                _SPECS.clear()
            _SPECS[key] = spec
    doc["spec"] = spec
    return ExecutionState.model_validate(doc)
