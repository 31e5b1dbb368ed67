"""Workflow specs and sub-workflow bundles stored once a partition beside the states that name
them (no network)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import orjson
import pytest

from cadenza_common import events as ev
from cadenza_scheduler import codec
from cadenza_scheduler.agents import Shell, partition_of
from cadenza_scheduler.domain import dump_state, load_state
from cadenza_scheduler.domain import state as state_module
from cadenza_scheduler.domain.simulate import request
from cadenza_scheduler.domain.state import SpecMissing, stored_apart
from cadenza_scheduler.specs import entry_key, entry_partition, is_entry

from .test_shell import CALL_A, T0, TOPICS, flow, shell

CALL_B = {"id": "b", "type": "service_call", "connection": "svc", "path": "/b", "depends_on": ["a"]}


def forget_parsed_specs() -> None:
    """What a new process knows of specs: nothing until it reads them from the table."""
    for shared in (state_module._SPECS, state_module._BUNDLES):
        shared.by_key.clear()
        shared.by_object.clear()


@pytest.fixture(autouse=True)
def _fresh_specs() -> Iterator[None]:
    yield
    forget_parsed_specs()


def ids_in(partition: int, count: int) -> list[uuid.UUID]:
    """`count` execution ids whose key falls in `partition` (of 12)."""
    found: list[uuid.UUID] = []
    while len(found) < count:
        xid = uuid.uuid4()
        if partition_of(str(xid), 12) == partition:
            found.append(xid)
    return found


async def succeed(sched: Shell, req: ev.ExecutionRequested, node: str) -> None:
    await sched.apply(
        ev.StepSucceeded(execution_id=req.execution_id, org_id=req.org_id, node_id=node, attempt=1)
    )


async def test_a_state_is_stored_without_its_spec_and_the_spec_once_a_partition() -> None:
    sched, table, _, _ = shell()
    one, two = ids_in(3, 2)
    (other,) = ids_in(4, 1)
    reqs = [request(flow(CALL_A, CALL_B), execution_id=x) for x in (one, two, other)]

    for req in reqs:
        await sched.apply(req)

    [(spec_key, spec)] = stored_apart(codec.load(table[str(one)]).state)  # type: ignore[arg-type]
    entries = sorted(k for k in table if is_entry(k))
    assert entries == [entry_key(3, spec_key), entry_key(4, spec_key)]
    assert all(table[e] == spec for e in entries)
    _, raw_state = table[str(one)].split(b"\n", 1)
    assert b'"spec":' not in raw_state
    assert orjson.loads(raw_state)["spec_key"] == spec_key
    assert codec.summary(table[str(one)]).apart == (spec_key,)
    assert sched.metrics.registry.get_sample_value("cadenza_scheduler_specs_stored") == 2


async def test_a_new_process_reads_the_spec_from_the_table_and_goes_on() -> None:
    first, table, _, _ = shell()
    req = request(flow(CALL_A, CALL_B))
    await first.apply(req)
    forget_parsed_specs()
    restarted, _, sent, _ = shell(table)
    await restarted.recovered(set(range(12)))

    await succeed(restarted, req, "a")

    ready = sent.events(TOPICS.steps_ready)
    assert [e.node_id for e in ready if isinstance(e, ev.StepReady)] == ["b"]


async def test_a_spec_nowhere_to_be_found_is_a_clear_error() -> None:
    sched, table, _, _ = shell()
    req = request(flow(CALL_A))
    await sched.apply(req)
    state = codec.load(table[str(req.execution_id)]).state
    assert state is not None
    forget_parsed_specs()

    with pytest.raises(SpecMissing, match="is not stored"):
        load_state(dump_state(state, apart=True))
    with pytest.raises(SpecMissing, match="is not stored"):
        load_state(dump_state(state, apart=True), lambda key: None)
    assert load_state(dump_state(state)) == state  # with its spec, on its own


async def test_a_state_written_with_its_spec_still_loads_and_its_next_write_stores_it() -> None:
    sched, table, _, _ = shell()
    req = request(flow(CALL_A, CALL_B))
    await sched.apply(req)
    key = str(req.execution_id)
    stored = codec.load(table[key])
    assert stored.state is not None
    old_format = b'{"outbox":[],"timers":[],"finished_at":null}\n' + dump_state(stored.state)
    table.clear()
    table[key] = old_format
    forget_parsed_specs()
    restarted, _, sent, _ = shell(table)
    await restarted.recovered(set(range(12)))

    await succeed(restarted, req, "a")

    assert [e.node_id for e in sent.events(TOPICS.steps_ready)] == ["b"]  # type: ignore[attr-defined]
    assert [k for k in table if is_entry(k)] == list(restarted.specs.named[key])


async def test_the_last_execution_to_go_takes_its_spec_entry_along() -> None:
    sched, table, sent, clock = shell()
    first, second = (request(flow(CALL_A), execution_id=x) for x in ids_in(5, 2))
    for req in (first, second):
        await sched.apply(req)
    await succeed(sched, first, "a")
    (entry,) = (k for k in table if is_entry(k))

    clock.now = T0 + timedelta(seconds=61)
    assert await sched.fire_due() == 1
    await sched.apply(sent.events(TOPICS.executions_commands)[-1])  # type: ignore[arg-type]
    assert str(first.execution_id) not in table
    assert entry in table  # the second still names it

    await succeed(sched, second, "a")
    clock.now = T0 + timedelta(seconds=200)
    assert await sched.fire_due() == 1
    await sched.apply(sent.events(TOPICS.executions_commands)[-1])  # type: ignore[arg-type]

    assert table == {}
    assert sched.metrics.registry.get_sample_value("cadenza_scheduler_specs_stored") == 0


async def test_recovery_deletes_the_entries_no_state_names_in_the_partitions_it_owns() -> None:
    sched, table, _, _ = shell()
    req = request(flow(CALL_A), execution_id=ids_in(2, 1)[0])
    await sched.apply(req)
    (named,) = (k for k in table if is_entry(k))
    [(_, spec)] = stored_apart(codec.load(table[str(req.execution_id)]).state)  # type: ignore[arg-type]
    table[entry_key(2, "0" * 32)] = spec  # left by a crash between a delete and the next
    table[entry_key(7, "0" * 32)] = spec  # another process's partition
    restarted, _, _, _ = shell(table)

    await restarted.recovered({2})

    assert sorted(k for k in table if is_entry(k)) == [named, entry_key(7, "0" * 32)]
    assert entry_partition(named) == 2


CHILD = ev.WorkflowSnapshot(
    workflow_id=uuid.UUID("0190f0f0-0000-7000-8000-0000000000c1"),
    workflow_version=1,
    workflow=flow({"id": "c", "type": "service_call", "connection": "svc", "path": "/c"}),
)
KID = {"id": "kid", "type": "sub_workflow", "workflow": {"slug": "child"}}


async def test_a_sub_workflow_bundle_is_stored_apart_too_and_read_back_by_a_new_process() -> None:
    first, table, _, _ = shell()
    req = request(flow(CALL_A, {**KID, "depends_on": ["a"]}), sub_workflows={"child": CHILD})
    await first.apply(req)
    key = str(req.execution_id)
    _, raw_state = table[key].split(b"\n", 1)
    assert b'"sub_workflows"' not in raw_state
    assert len(codec.summary(table[key]).apart) == 2
    assert sorted(k for k in table if is_entry(k)) == sorted(first.specs.named[key])
    forget_parsed_specs()
    restarted, _, sent, _ = shell(table)
    await restarted.recovered(set(range(12)))

    await succeed(restarted, req, "a")

    [child] = [e for e in sent.events() if isinstance(e, ev.ExecutionRequested)]
    assert child.sub_workflows == {"child": CHILD}
    assert child.workflow == CHILD.workflow
