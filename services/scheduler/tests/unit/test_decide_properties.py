"""Property tests: random valid DAGs, random completion orders, failures, duplicates, delays."""

from __future__ import annotations

import importlib
from collections import Counter
from datetime import timedelta
from typing import Any
from unittest.mock import patch

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cadenza_common.events import (
    ErrorClass,
    Event,
    StepScheduled,
    StepSkipped,
    StepSucceeded,
    Topic,
)
from cadenza_common.workflow import validate_workflow
from cadenza_scheduler.domain import NodeStatus, decide, dump_state, load_state
from cadenza_scheduler.domain.decide import advance as full_advance
from cadenza_scheduler.domain.decide import topic_for
from cadenza_scheduler.domain.simulate import Run

MAX_STEPS = 60
decide_module = importlib.import_module("cadenza_scheduler.domain.decide")
DRAIN_STEPS = 300


@st.composite
def workflows(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(3, 12))
    ids = [f"n{i}" for i in range(count)]
    kinds = [
        draw(
            st.sampled_from(
                ["call", "call", "call", "transform", "wait", "decision", "approval", "webhook"]
            )
        )
        for _ in ids
    ]
    deps = [
        draw(st.lists(st.sampled_from(ids[:i]), unique=True, max_size=3)) if i else []
        for i in range(count)
    ]
    nodes = [_node(draw, ids[i], kinds[i], deps[i]) for i in range(count)]
    for node in nodes:
        if node["type"] == "decision":
            _route(draw, node, [n for n in nodes if node["id"] in n["depends_on"]])
    doc: dict[str, Any] = {
        "slug": "prop",
        "nodes": nodes,
        "on_failure": draw(st.sampled_from(["fail", "compensate"])),
    }
    if draw(st.booleans()):
        doc["timeout"] = "1h"
    return doc


def _node(draw: st.DrawFn, node_id: str, kind: str, deps: list[str]) -> dict[str, Any]:
    node: dict[str, Any] = {"id": node_id, "depends_on": deps}
    if deps:
        join = draw(st.sampled_from(["all", "all", "any", "n_of_m"]))
        node["join"] = join
        if join == "n_of_m":
            node["join_n"] = draw(st.integers(1, len(deps)))
    node["on_error"] = draw(st.sampled_from(["fail", "skip", "continue", "fail"]))
    node["retry"] = {
        "max_attempts": draw(st.integers(1, 3)),
        "initial_interval": "1s",
        "jitter": 0.5,
    }
    node.update(_typed(draw, kind))
    return node


def _typed(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    if kind == "call":
        extra: dict[str, Any] = {"type": "service_call", "connection": "svc"}
        if draw(st.booleans()):
            extra["timeout"] = "30s"
        if draw(st.booleans()):
            extra["compensation"] = {"connection": "svc", "method": "DELETE"}
        return extra
    if kind == "webhook":
        return {"type": "webhook_emit", "subscription": "s", "event": "e"}
    if kind == "transform":
        return {"type": "transform", "expression": '{"x": trigger.x}'}
    if kind == "wait":
        return {"type": "wait", "duration": "10s"}
    if kind == "approval":
        return {
            "type": "human_approval",
            "approvers": ["r"],
            "expires_in": "1d",
            "on_timeout": draw(st.sampled_from(["reject", "approve", "fail"])),
            "on_reject": draw(st.sampled_from(["succeed", "fail"])),
        }
    return {"type": "decision", "cases": [], "default": []}


def _route(draw: st.DrawFn, decision: dict[str, Any], dependents: list[dict[str, Any]]) -> None:
    if not dependents:
        del decision["cases"], decision["default"]
        decision.update({"type": "transform", "expression": "1"})
        return
    targets = [n["id"] for n in dependents]
    chosen = draw(st.lists(st.sampled_from(targets), unique=True, min_size=1))
    decision["cases"] = [{"when": f"trigger.x > {draw(st.integers(0, 10))}", "next": chosen}]
    decision["default"] = [t for t in targets if t not in chosen]


def _preds_finished(run: Run, doc: dict[str, Any], node_id: str) -> bool:
    assert run.state is not None
    spec = next(n for n in doc["nodes"] if n["id"] == node_id)
    preds = set(spec["depends_on"]) | {
        n["id"]
        for n in doc["nodes"]
        if n["type"] == "decision"
        and node_id in {t for c in n["cases"] for t in c["next"]} | set(n["default"])
    }
    finished = sum(run.state.node(p).status.terminal for p in preds)
    needed = {"all": len(preds), "any": 1, "n_of_m": spec.get("join_n", 1)}[spec.get("join", "all")]
    return finished >= min(needed, len(preds))


class Driver:
    """Applies events through a Run and checks the invariants after each one."""

    def __init__(self, doc: dict[str, Any], x: int, seed: int) -> None:
        self.doc = doc
        self.run = Run(doc, {"x": x}, jitter_seed=seed)
        self.check(self.run.last.emits)

    def check(self, emits: list[Event]) -> None:
        for emitted in emits:
            if isinstance(emitted, StepScheduled) and emitted.attempt == 1:
                assert _preds_finished(self.run, self.doc, emitted.node_id), emitted.node_id

    def step(self, data: st.DataObject) -> None:
        run = self.run
        assert run.state is not None
        options = self.options()
        if not options:
            return
        if data.draw(st.integers(0, 24)) == 24:
            options = [("cancel", "")]
        action, arg = data.draw(st.sampled_from(options))
        before = len(run.emits)
        if action == "ok":
            run.succeed(arg, {"v": 1})
        elif action == "approve":
            run.approve(arg, data.draw(st.sampled_from(["approved", "rejected"])))
        elif action == "fail":
            run.fail(arg, error_class=ErrorClass.HTTP_5XX, retryable=data.draw(st.booleans()))
        elif action == "timer":
            run.fire_next_timer()
        elif action == "delay":
            run.advance(timedelta(seconds=data.draw(st.integers(0, 120))))
        elif action == "dup":
            self.duplicate(data)
        elif action == "cancel":
            run.cancel()
        self.check(run.emits[before:])
        # stored as JSON (each node rendered once and reused while unchanged), read back equal
        assert run.state is not None
        assert load_state(dump_state(run.state)) == run.state

    def options(self) -> list[tuple[str, str]]:
        run = self.run
        assert run.state is not None
        options: list[tuple[str, str]] = []
        for ready in run.outstanding():
            options += [("ok", ready.node_id), ("ok", ready.node_id), ("fail", ready.node_id)]
        for node_id, node in run.state.nodes.items():
            spec = run.state.spec.node(node_id)
            if spec.type == "human_approval" and node.status is NodeStatus.RUNNING:
                options.append(("approve", node_id))
        if run.state.timers:
            options.append(("timer", ""))
        if not options:
            return options
        return [*options, *options, ("delay", ""), ("dup", ""), ("dup", "")]

    def duplicate(self, data: st.DataObject) -> None:
        run = self.run
        event, _ = data.draw(st.sampled_from(run.inputs))
        decision = decide(run.state, event, run.now)
        assert decision.emits == []
        assert decision.state is run.state

    def drain(self) -> None:
        run = self.run
        for _ in range(DRAIN_STEPS):
            assert run.state is not None
            if run.state.finished:
                return
            ready = run.outstanding()
            approvals = [
                n
                for n, s in run.state.nodes.items()
                if s.status is NodeStatus.RUNNING
                and run.state.spec.node(n).type == "human_approval"
            ]
            if ready:
                run.succeed(ready[0].node_id)
            elif approvals:
                run.approve(approvals[0])
            else:
                assert run.fire_next_timer() is not None, "stuck: nothing to do, not finished"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=workflows(), x=st.integers(0, 10), seed=st.integers(0, 2**31), data=st.data())
def test_random_executions_keep_every_invariant(
    doc: dict[str, Any], x: int, seed: int, data: st.DataObject
) -> None:
    assert validate_workflow(doc).ok, validate_workflow(doc).errors
    driver = Driver(doc, x, seed)

    for _ in range(data.draw(st.integers(5, MAX_STEPS))):
        if driver.run.state is None or driver.run.state.finished:
            break
        driver.step(data)
    driver.drain()

    run = driver.run
    assert run.state is not None
    assert run.state.finished
    event(f"execution {run.state.status.value}")
    event(f"{len(run.inputs) // 10 * 10}+ inputs")
    assert all(node.status.terminal for node in run.state.nodes.values())
    assert run.state.timers == []
    ends = Counter(
        e.node_id
        for e in run.emits
        if isinstance(e, StepSucceeded | StepSkipped) and not e.node_id.startswith("compensate:")
    )
    assert all(count == 1 for count in ends.values()), ends
    history = [e for e in run.emits if topic_for(e) is Topic.EXECUTIONS_EVENTS]
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert len({e.event_id for e in run.emits}) == len(run.emits)
    state, emits = run.replay()
    assert state == run.state
    assert emits == run.emits
    # advance() looks only at dependents of changed nodes: the same as looking at all
    with patch.object(decide_module, "advance", lambda tx, _=None: full_advance(tx, None)):
        state, emits = run.replay()
    assert state == run.state
    assert emits == run.emits


@given(st.uuids(), st.text(max_size=40))
def test_derived_ids_are_the_uuid5_of_execution_and_label(execution_id: Any, label: str) -> None:
    import copy
    import uuid

    from cadenza_scheduler.domain.tx import EVENT_NAMESPACE, derived_id

    expected = uuid.uuid5(EVENT_NAMESPACE, f"{execution_id}:{label}")

    derived = derived_id(execution_id, label)
    assert derived == expected
    assert derived.version == 5
    # made without UUID.__init__: it must behave as the stdlib's in every other way too
    assert (str(derived), hash(derived), derived.is_safe) == (
        str(expected),
        hash(expected),
        expected.is_safe,
    )
    assert copy.deepcopy(derived) == expected
