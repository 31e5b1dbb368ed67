"""ExecutionState and NodeState: everything the scheduler knows about one execution (no I/O).

The state is a pydantic model so the Faust shell can store it as JSON in its table;
`decide()` never mutates the state it is given (it works on `clone()`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, NamedTuple, Self, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from cadenza_common.events import (
    Actor,
    ExecutionStatus,
    ParentRef,
    StepError,
    TimerKind,
    WorkflowSnapshot,
    json_bytes,
)
from cadenza_common.workflow import ValidationResult, WorkflowSpec, validate_workflow


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

    def _copy(self, **update: Any) -> Self:
        """`model_copy(update=update)` in half the time (every transition copies the
        state and the nodes it changes): a shallow copy, private attributes left unset."""
        copied = _new_object(type(self))
        values = self.__dict__.copy()
        values.update(update)
        _set_attribute(copied, "__dict__", values)
        _set_attribute(
            copied, "__pydantic_fields_set__", self.__pydantic_fields_set__ | update.keys()
        )
        _set_attribute(copied, "__pydantic_extra__", None)
        _set_attribute(copied, "__pydantic_private__", None)
        return copied


_new_object = object.__new__
_set_attribute = object.__setattr__  # pydantic's own construction path sets these the same way


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
            return self._copy()
        return self._copy(item_states=[i._copy() for i in items])


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
        return self._copy(failed=list(self.failed))


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
    # node id -> (node, its JSON) as last rendered (`dump_state`); clones start from it
    _nodes_json: dict[str, tuple[NodeState, orjson.Fragment]] = PrivateAttr(default_factory=dict)

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
        copied = self._copy(
            nodes=dict(self.nodes),
            timers=list(self.timers),
            completed=list(self.completed),
            compensation=None if comp is None else comp.clone(),
        )
        copied.__pydantic_private__ = {
            "_owned": set(),
            "_nodes_json": self._private()["_nodes_json"],
        }
        return copied

    def _private(self) -> dict[str, Any]:
        # `self._owned` goes through pydantic's __getattr__ (~5 us a read, several reads
        # a transition); the private attributes' dict is a plain slot
        private = self.__pydantic_private__
        assert private is not None
        return private

    def _owned_ids(self) -> set[str]:
        owned: set[str] = self._private()["_owned"]
        return owned

    def node(self, node_id: str) -> NodeState:
        """The node's state, writable: after `clone()` it is copied on first use."""
        owned = self._owned_ids()
        if node_id not in owned:
            self.nodes[node_id] = self.nodes[node_id].clone()
            owned.add(node_id)
        return self.nodes[node_id]

    def written(self) -> set[str]:
        """The nodes taken writable (`node()`) since `clone()`: the only ones that changed."""
        return set(self._owned_ids())

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


S = TypeVar("S")


class _Shared(Generic[S]):
    """Each distinct shared document once: parsed by content key, JSON by object.

    Every state of a workflow version shares one `WorkflowSpec` object (see
    `validated_spec`), so its JSON is rendered once and spliced into every write
    (`orjson.Fragment`), and the graph cache (keyed by spec object) hits for every
    execution of that version. A sub-workflow bundle is shared the same way by the
    transitions of one execution, and by every execution that loaded it by key.
    """

    def __init__(
        self, render: Callable[[S], bytes], parse: Callable[[Any], S], capacity: int = 1024
    ) -> None:
        self._render = render
        self._parse = parse
        self._capacity = capacity
        self.by_key: dict[str, S] = {}
        self.by_object: dict[int, tuple[S, _Rendered]] = {}

    def rendered(self, obj: S) -> _Rendered:
        """The document's content key and JSON."""
        return by_identity(self.by_object, obj, self._capacity, self._rendering, obj)

    def _rendering(self, obj: S) -> _Rendered:
        raw = self._render(obj)
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        return _Rendered(digest, raw, orjson.Fragment(raw))

    def parsed(self, key: str | None, doc: Any) -> S:
        """The document with content key `key` (parsing `doc` only when it is new)."""
        obj = self.by_key.get(key) if isinstance(key, str) else None
        if obj is None:
            obj = self._parse(doc)
            if isinstance(key, str):
                self.remember(key, obj)
        return obj

    def remember(self, key: str, obj: S) -> None:
        make_room(self.by_key, self._capacity)
        self.by_key[key] = obj


class _Rendered(NamedTuple):
    key: str  # a digest of `raw`
    raw: bytes
    fragment: orjson.Fragment  # `raw`, to splice into a state's JSON


def _spec_bytes(spec: WorkflowSpec) -> bytes:
    return orjson.dumps(spec.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def _bundle_bytes(bundle: dict[str, WorkflowSnapshot]) -> bytes:
    doc = {ref: snapshot.model_dump(mode="json") for ref, snapshot in bundle.items()}
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _bundle(doc: dict[str, Any]) -> dict[str, WorkflowSnapshot]:
    return {ref: WorkflowSnapshot.model_validate(snapshot) for ref, snapshot in doc.items()}


class SpecMissing(ValueError):
    """A state written apart from its spec or bundle (`dump_state(apart=True)`) whose
    document is neither parsed in this process nor given to `load_state`."""


T = TypeVar("T")


def make_room(cache: dict[Any, Any], capacity: int) -> None:
    """Drop the oldest entry of a full cache (insertion order is age order)."""
    if len(cache) >= capacity:
        cache.pop(next(iter(cache)))


def by_identity(
    cache: dict[int, tuple[Any, T]],
    obj: Any,
    capacity: int,
    compute: Callable[..., T],
    *args: Any,
) -> T:
    """`compute(*args)` once per object `obj` (for immutable, shared objects such as specs).

    Keyed by `id(obj)`; the entry holds `obj` itself, so its id cannot be reused by another
    object while the entry lives, and a hit is checked by identity. At most `capacity`
    entries, the oldest dropped first.
    """
    hit = cache.get(id(obj))
    if hit is not None and hit[0] is obj:
        return hit[1]
    value = compute(*args)
    make_room(cache, capacity)
    cache[id(obj)] = (obj, value)
    return value


_SPECS: _Shared[WorkflowSpec] = _Shared(_spec_bytes, WorkflowSpec.model_validate)
_BUNDLES: _Shared[dict[str, WorkflowSnapshot]] = _Shared(_bundle_bytes, _bundle)


def validated_spec(workflow: Mapping[str, Any]) -> ValidationResult:
    """`validate_workflow(workflow)`, once per distinct snapshot; valid specs are shared.

    Validation is pure, so a snapshot seen before (by content) gives the same spec object
    back: every execution of a workflow version then shares it.
    """
    raw = orjson.dumps(workflow, option=orjson.OPT_SORT_KEYS)
    digest = "snapshot:" + hashlib.blake2b(raw, digest_size=16).hexdigest()
    spec = _SPECS.by_key.get(digest)
    if spec is not None:
        return ValidationResult(spec=spec)
    result = validate_workflow(workflow)
    if result.spec is not None:
        key = _SPECS.rendered(result.spec).key
        spec = _SPECS.by_key.setdefault(key, result.spec)
        _SPECS.remember(digest, spec)
        result = ValidationResult(spec=spec)
    return result


def _nodes_json(state: ExecutionState) -> dict[str, orjson.Fragment]:
    """Each node state's JSON. A transition copies only the nodes it changes
    (`ExecutionState.node()`), so the others are the very objects the state it was cloned
    from rendered: their JSON is taken from there. Kept on the state, so it lives as long
    as the nodes it renders (a process-wide cache kept old nodes alive, and made the
    garbage collector's full passes slower)."""
    private = state._private()
    rendered = private["_nodes_json"]
    fresh: dict[str, tuple[NodeState, orjson.Fragment]] = {}
    for node_id, node in state.nodes.items():
        hit = rendered.get(node_id)
        if hit is None or hit[0] is not node:
            hit = (node, orjson.Fragment(json_bytes(node)))
        fresh[node_id] = hit
    private["_nodes_json"] = fresh
    return {node_id: hit[1] for node_id, hit in fresh.items()}


_RENDERED_APART = {"spec", "nodes"}  # never changed
_LEFT_APART = {"spec", "nodes", "sub_workflows"}


def stored_apart(state: ExecutionState) -> list[tuple[str, bytes]]:
    """What `dump_state(apart=True)` leaves out, as (content key, JSON): the spec and, when
    the execution has one, its sub-workflow bundle; `load_state` needs them back."""
    spec = _SPECS.rendered(state.spec)
    docs = [(spec.key, spec.raw)]
    if state.sub_workflows:
        bundle = _BUNDLES.rendered(state.sub_workflows)
        docs.append((bundle.key, bundle.raw))
    return docs


def dump_state(state: ExecutionState, *, apart: bool = False) -> bytes:
    """The state as JSON bytes, with a key that lets `load_state` reuse the parsed spec.

    The fields but the nodes and the spec are pydantic-core's JSON as it renders them
    (`to_json`, bytes: no dict in between, a fifth faster than `model_dump` then
    `orjson.dumps`, the same bytes); the nodes' and the spec's JSON are spliced in after
    them, rendered once each (`_nodes_json`, `_SPECS`). `apart=True` leaves the spec and
    the sub-workflow bundle out, only their content keys in: for a store that keeps each
    once (`stored_apart`), since they are most of a state's bytes and never change.
    """
    fields = state.__pydantic_serializer__.to_json(
        state, exclude=_LEFT_APART if apart else _RENDERED_APART
    )
    spec = _SPECS.rendered(state.spec)
    rest: dict[str, Any] = {"nodes": _nodes_json(state), "spec_key": spec.key}
    if not apart:
        rest["spec"] = spec.fragment
    elif state.sub_workflows:
        rest["bundle_key"] = _BUNDLES.rendered(state.sub_workflows).key
    return fields[:-1] + b"," + orjson.dumps(rest)[1:]  # fields never empty: ids are required


def load_state(data: bytes, stored: Callable[[str], bytes | None] | None = None) -> ExecutionState:
    """Read a state written by `dump_state`; a spec seen before is not parsed again.

    A state written apart takes its spec and bundle from this process's parsed ones, else
    from `stored(content_key)` (the JSON `stored_apart()` gave when it was written).

    Raises:
        pydantic.ValidationError: when the bytes are not a valid state.
        SpecMissing: when the state's spec or bundle is not in it, not parsed here and not
            stored.
    """
    doc = orjson.loads(data)
    key = doc.pop("spec_key", None)
    if "spec" in doc:
        doc["spec"] = _SPECS.parsed(key, doc["spec"])
    else:
        doc["spec"] = _kept_apart(_SPECS, key, stored, "workflow spec")
    bundle = doc.pop("bundle_key", None)
    if bundle is not None:
        doc["sub_workflows"] = _kept_apart(_BUNDLES, bundle, stored, "sub-workflow bundle")
    return ExecutionState.model_validate(doc)


def _kept_apart(
    shared: _Shared[S], key: Any, stored: Callable[[str], bytes | None] | None, what: str
) -> S:
    if not isinstance(key, str):
        raise SpecMissing(f"the state has neither a {what} nor its key")
    obj = shared.by_key.get(key)
    if obj is not None:
        return obj
    raw = None if stored is None else stored(key)
    if raw is None:
        raise SpecMissing(f"the {what} {key} of this state is not stored")
    return shared.parsed(key, orjson.loads(raw))
