"""The shell around decide(): outbox resend, timer heap rebuild, DLQ, retention (no network)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cadenza_common import events as ev
from cadenza_common.kafka import decode, encode
from cadenza_scheduler import codec
from cadenza_scheduler.agents import Outgoing, Record, Shell, partition_of
from cadenza_scheduler.domain.simulate import request
from cadenza_scheduler.specs import is_entry
from cadenza_scheduler.timers import RETENTION

TOPICS = ev.Topics("t.")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Sent:
    """The send side as a list of (topic, event or raw record)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, Sequence[tuple[str, bytes]]]] = []
        self.partitions: list[tuple[str, bytes | None, int | None]] = []

    async def __call__(self, records: Sequence[Outgoing]) -> list[Awaitable[None]]:
        for record in records:
            self.records.append((record.topic, record.value, list(record.headers)))
            self.partitions.append((record.topic, record.key, record.partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return [done] * len(records)

    def events(self, topic: str | None = None) -> list[ev.Event]:
        return [
            decode(v, h)
            for t, v, h in self.records
            if (topic is None or t == topic) and t != TOPICS.dlq
        ]


def shell(table: dict[str, bytes] | None = None) -> tuple[Shell, dict[str, bytes], Sent, Clock]:
    table = {} if table is None else table
    sent, clock = Sent(), Clock()
    return (
        Shell(
            table,  # type: ignore[arg-type]
            sent,
            TOPICS,
            source="/test",
            consumer_name="sched",
            retention_s=60,
            partitions=12,
            clock=clock,
        ),
        table,
        sent,
        clock,
    )


def flow(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"slug": "t", "nodes": list(nodes)}


def as_records(events: Sequence[ev.Event]) -> list[Record]:
    """The events as the agent takes them from `t.cmds`, at offsets 0, 1, ..."""
    records = []
    for offset, event in enumerate(events):
        msg = encode(event, source="/test")
        records.append(Record(msg.value, msg.headers, msg.key, "t.cmds", 0, offset))
    return records


CALL_A = {"id": "a", "type": "service_call", "connection": "svc", "path": "/a"}
WAIT = {"id": "w", "type": "wait", "duration": "2s"}


async def test_a_request_saves_the_state_and_sends_its_emits_with_an_empty_outbox() -> None:
    sched, table, sent, _ = shell()
    req = request(flow(CALL_A))

    await sched.apply(req)

    stored = codec.load(table[str(req.execution_id)])
    assert stored.state is not None
    assert stored.outbox == []
    assert [type(e) for e in sent.events(TOPICS.steps_ready)] == [ev.StepReady]
    assert any(isinstance(e, ev.ExecutionStarted) for e in sent.events(TOPICS.executions_events))


async def test_the_new_state_with_its_outbox_and_its_emits_go_to_the_broker_together() -> None:
    sched, table, sent, _ = shell()
    outboxes: list[list[ev.Event]] = []
    persisted: list[str] = []
    emits_handed_over = asyncio.Event()

    async def persist(keys: Iterable[str]) -> None:
        for key in keys:
            persisted.append(key)
            if not is_entry(key):
                outboxes.append(codec.load(table[key]).outbox)
        # returns only once the emits were handed to the producer: a shell that waited for
        # this write before sending would never finish
        await emits_handed_over.wait()

    async def send(records: Sequence[Outgoing]) -> list[Awaitable[None]]:
        emits_handed_over.set()
        return await sent(records)

    sched._persist = persist
    sched._send = send
    req = request(flow(CALL_A))

    async with asyncio.timeout(5):
        await sched.apply(req)

    assert sent.records
    assert outboxes == [sent.events()]  # the outbox holds the records as sent, encoded once
    key = str(req.execution_id)
    assert persisted == [*sched.specs.named[key], key]  # its spec, stored apart, goes first
    assert codec.load(table[str(req.execution_id)]).outbox == []  # cleared once both landed


async def test_each_batch_is_measured_records_and_time_applying_persisting_sending() -> None:
    sched, _, sent, _ = shell()

    async def slow_persist(keys: Iterable[str]) -> None:
        await asyncio.sleep(0.05)

    async def slow_send(records: Sequence[Outgoing]) -> list[Awaitable[None]]:
        await asyncio.sleep(0.02)
        return await sent(records)

    sched._persist = slow_persist
    sched._send = slow_send
    requests = [request(flow(CALL_A), execution_id=uuid.uuid4()) for _ in range(3)]
    records = as_records(requests)

    await sched.on_records(records)

    def sample(name: str, **labels: str) -> float:
        return sched.metrics.registry.get_sample_value(name, labels) or 0.0

    assert sample("cadenza_scheduler_batch_records_count") == 1
    assert sample("cadenza_scheduler_batch_records_sum") == 3
    assert sample("cadenza_scheduler_batch_seconds_count", phase="apply") == 1
    persisted = sample("cadenza_scheduler_batch_seconds_sum", phase="persist")
    sending = sample("cadenza_scheduler_batch_seconds_sum", phase="send")
    flushing = sample("cadenza_scheduler_batch_seconds_sum", phase="flush")
    applying = sample("cadenza_scheduler_batch_seconds_sum", phase="apply")
    assert 0.05 <= persisted < 1
    # the batch's emits are handed to the producer together, alongside the states
    assert 0.02 <= sending < persisted
    assert persisted <= flushing < 1
    assert 0 < applying < persisted


async def test_records_handled_and_events_emitted_are_counted_by_type() -> None:
    sched, _, sent, _ = shell()
    requests = [request(flow(CALL_A), execution_id=uuid.uuid4()) for _ in range(3)]
    records = as_records(requests)
    records.append(Record(b"{", [("ce_type", b"cadenza.step.ready")], None, "t.cmds", 0, 3))

    await sched.on_records(records)
    await sched.apply(request(flow(CALL_A), execution_id=uuid.uuid4()))

    def count(name: str, ce_type: str) -> float | None:
        return sched.metrics.registry.get_sample_value(name, {"type": ce_type})

    assert count("cadenza_scheduler_events_total", ev.ExecutionRequested.CE_TYPE) == 4
    assert count("cadenza_scheduler_events_total", "dlq") == 1
    assert count("cadenza_scheduler_transitions_total", ev.StepReady.CE_TYPE) == 4
    emitted = sum(
        count("cadenza_scheduler_transitions_total", t) or 0
        for t in {e.CE_TYPE for e in sent.events()}
    )
    assert emitted == len(sent.events())


async def test_active_executions_and_pending_timers_are_gauged_after_each_batch() -> None:
    sched, _, _, _ = shell()

    def gauge(name: str) -> float | None:
        return sched.metrics.registry.get_sample_value(name)

    waits = [request(flow(WAIT), execution_id=uuid.uuid4()) for _ in range(2)]
    calls = [request(flow(CALL_A), execution_id=uuid.uuid4()) for _ in range(3)]
    await sched.on_records(as_records([*waits, *calls]))
    assert gauge("cadenza_scheduler_active_executions") == 5
    assert gauge("cadenza_scheduler_timers_pending") == 2  # the two waits

    done = [
        ev.StepSucceeded(execution_id=c.execution_id, org_id=c.org_id, node_id="a", attempt=1)
        for c in calls
    ]
    await sched.on_records(as_records(done))
    assert gauge("cadenza_scheduler_active_executions") == 2
    assert gauge("cadenza_scheduler_timers_pending") == 5  # and three retentions


async def test_a_finished_execution_is_not_kept_parsed_only_its_bytes_are() -> None:
    # Parsed states are most of the process's objects: a finished one kept in the cache
    # is only scanned by the garbage collector until its retention ends.
    sched, table, _, _ = shell()
    req = request(flow(CALL_A))
    key = str(req.execution_id)
    await sched.apply(req)
    assert key in sched.cache

    await sched.apply(
        ev.StepSucceeded(execution_id=req.execution_id, org_id=req.org_id, node_id="a", attempt=1)
    )

    stored = codec.load(table[key])
    assert stored.state is not None
    assert stored.state.finished
    assert key not in sched.cache
    assert sched.cache.load(key, table[key]) == stored  # parsed again when asked
    assert key not in sched.cache


async def test_a_leftover_outbox_is_resent_when_its_input_is_redelivered() -> None:
    first, table, sent_before, _ = shell()
    req = request(flow(CALL_A))
    await first.apply(req)
    key = str(req.execution_id)
    stored = codec.load(table[key])
    emits = sent_before.events()
    table[key] = codec.dump(codec.Stored(stored.state, emits))  # crash before the sends
    restarted, _, sent, _ = shell(table)

    await restarted.apply(req)

    assert [e.event_id for e in sent.events()] == [e.event_id for e in emits]
    assert codec.load(table[key]).outbox == []


async def test_recovery_resends_outboxes_and_rebuilds_timers_of_owned_partitions_only() -> None:
    first, table, _, _ = shell()
    req = request(flow(WAIT))
    await first.apply(req)
    key = str(req.execution_id)
    stored = codec.load(table[key])
    table[key] = codec.dump(codec.Stored(stored.state, [req]))
    owned = partition_of(key, 12)
    restarted, _, sent, clock = shell(table)

    assert await restarted.recovered({(owned + 1) % 12}) == 0
    assert len(restarted.heap) == 0
    assert await restarted.recovered({owned}) == 1
    assert len(restarted.heap) == 1
    clock.now = T0 + timedelta(seconds=1)
    assert await restarted.fire_due() == 0
    clock.now = T0 + timedelta(seconds=2)
    assert await restarted.fire_due() == 1
    fired = sent.events(TOPICS.executions_commands)[-1]
    assert isinstance(fired, ev.TimerFired)
    assert fired.node_id == "w"


async def test_undecodable_and_unhandleable_records_go_to_the_dlq_with_their_origin() -> None:
    sched, _, sent, _ = shell()
    good = encode(request(flow(CALL_A)), source="/test")

    await sched.on_record(b"{bad", good.headers, key=b"k", topic="in", partition=3, offset=9)
    await sched.on_record(b"{}", [("ce_type", b"x")], key=b"k", topic="in", partition=3, offset=10)

    dlq = [(dict(h), v) for t, v, h in sent.records if t == TOPICS.dlq]
    assert [h["dlq_offset"] for h, _ in dlq] == [b"9", b"10"]
    assert b"malformed JSON" in dlq[0][0]["dlq_reason"]
    assert dlq[0][0]["dlq_topic"] == b"in"
    assert dlq[0][0]["dlq_partition"] == b"3"
    assert dlq[0][0]["dlq_consumer"] == b"sched"
    assert dlq[0][1] == b"{bad"


async def test_a_finished_execution_is_deleted_after_its_retention() -> None:
    sched, table, sent, clock = shell()
    req = request(flow(CALL_A), execution_id=uuid.uuid4())
    await sched.apply(req)
    ready = sent.events(TOPICS.steps_ready)[0]
    assert isinstance(ready, ev.StepReady)
    done = ev.StepSucceeded(
        execution_id=req.execution_id, org_id=req.org_id, node_id="a", attempt=ready.attempt
    )
    await sched.apply(done)
    key = str(req.execution_id)
    assert codec.summary(table[key]).finished_at is not None

    clock.now = T0 + timedelta(seconds=61)
    assert await sched.fire_due() == 1
    retention = sent.events(TOPICS.executions_commands)[-1]
    assert isinstance(retention, ev.TimerFired)
    assert retention.timer_id == RETENTION
    await sched.apply(retention)

    assert key not in table


def test_a_store_other_than_memory_is_refused_with_the_reason() -> None:
    import pytest
    from pydantic import ValidationError

    from cadenza_scheduler.settings import Settings

    with pytest.raises(ValidationError, match="is not supported"):
        Settings(store="rocksdb://")
    assert Settings().store == "memory://"


async def test_a_batch_whose_state_write_failed_is_written_and_sent_again() -> None:
    sched, table, sent, _ = shell()
    calls = 0

    async def flaky_persist(keys: Iterable[str]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("broker unreachable")

    sched._persist = flaky_persist
    req = request(flow(CALL_A))

    await sched.apply(req)

    assert calls == 2
    ready = sent.events(TOPICS.steps_ready)
    assert ready  # sent again with the second write: a duplicate, with the same event id
    assert len({e.event_id for e in ready}) == 1
    assert codec.load(table[str(req.execution_id)]).outbox == []


async def test_emits_whose_state_was_lost_are_made_again_before_their_answers_apply() -> None:
    """A crash after a batch's emits landed but before its state write did: the restarted
    shell finds the old state, and the uncommitted record, then the runner's answer to the
    lost emit, on the same input partition in that order (the package docstring)."""
    first, table, sent_first, _ = shell()
    two_steps = flow(CALL_A, {**CALL_A, "id": "b", "path": "/b", "depends_on": ["a"]})
    req = request(two_steps)
    await first.apply(req)
    durable = dict(table)  # the changelog as of the crash: a ran, the write after it lost
    a_done = ev.StepSucceeded(
        execution_id=req.execution_id, org_id=req.org_id, node_id="a", attempt=1
    )
    await first.apply(a_done)
    (lost_ready,) = [e for e in sent_first.events(TOPICS.steps_ready) if e.node_id == "b"]
    b_done = ev.StepSucceeded(
        execution_id=req.execution_id, org_id=req.org_id, node_id="b", attempt=1
    )
    restarted, table, sent, _ = shell(durable)

    await restarted.on_records(as_records([a_done, b_done]))

    (again,) = sent.events(TOPICS.steps_ready)
    assert again.event_id == lost_ready.event_id
    state = codec.load(table[str(req.execution_id)]).state
    assert state is not None
    assert state.finished
    ended = sent.events(TOPICS.executions_events)[-1]
    assert isinstance(ended, ev.ExecutionSucceeded)


async def test_every_emit_goes_to_the_partition_the_default_partitioner_gives_its_key() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    sched, _, sent, _ = shell()
    for _ in range(20):
        await sched.apply(request(flow(CALL_A), execution_id=uuid.uuid4()))

    chosen = DefaultPartitioner()
    assert len({p for _, _, p in sent.partitions}) > 1
    for topic, key, partition in sent.partitions:
        assert key is not None
        assert partition == chosen(key, list(range(12)), list(range(12))), topic
