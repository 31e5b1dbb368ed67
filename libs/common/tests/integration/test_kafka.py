"""The Kafka helpers against the real broker: serde, DLQ, ordering per execution."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import Any

import pytest

from cadenza_common import events as ev
from cadenza_common.kafka import (
    ConsumerRecord,
    DeadLetters,
    UnhandleableRecord,
    consume_forever,
    consumer,
    decode,
    encode,
    header,
    producer,
    send_event,
)
from cadenza_common.settings import KafkaSettings
from cadenza_common.testing import ORG_ID, sample_events

pytestmark = pytest.mark.integration


async def _read(
    settings: KafkaSettings, topic: str, count: int, timeout: float = 30.0
) -> list[ConsumerRecord[Any, Any]]:
    records: list[ConsumerRecord[Any, Any]] = []
    group = f"reader-{uuid.uuid4().hex[:8]}"
    async with consumer(settings, [topic], group_id=group) as cons:
        async with asyncio.timeout(timeout):
            while len(records) < count:
                batches = await cons.getmany(timeout_ms=500)
                for batch in batches.values():
                    records.extend(batch)
    return records


async def test_every_event_round_trips_through_kafka_with_headers(
    fresh_kafka: KafkaSettings,
) -> None:
    topic = ev.Topics(fresh_kafka.topic_prefix).executions_events
    samples = sample_events()

    async with producer(fresh_kafka) as prod:
        for event in samples:
            await send_event(prod, topic, event, source="/cadenza/tests", traceparent="00-t-s-01")
    records = await _read(fresh_kafka, topic, len(samples))

    by_id = {str(e.event_id): e for e in samples}
    assert len(records) == len(samples)
    for record in records:
        event = by_id[header(record.headers, "ce_id") or ""]
        assert decode(record.value, record.headers) == event
        assert header(record.headers, "ce_type") == event.CE_TYPE
        assert header(record.headers, "ce_source") == "/cadenza/tests"
        assert header(record.headers, "traceparent") == "00-t-s-01"
        assert record.key == event.partition_key().encode()


async def test_poison_records_go_to_the_dlq_and_the_consumer_moves_on(
    fresh_kafka: KafkaSettings,
) -> None:
    topics = ev.Topics(fresh_kafka.topic_prefix)
    good = next(e for e in sample_events(uuid.uuid4()) if isinstance(e, ev.StepSucceeded))
    refused = good.model_copy(update={"event_id": ev.new_event_id(), "node_id": "refuse-me"})
    last = good.model_copy(update={"event_id": ev.new_event_id(), "node_id": "last"})
    key = str(good.execution_id).encode()
    handled: list[ev.Event] = []

    async def handler(event: ev.Event, _: ConsumerRecord[Any, Any]) -> None:
        if isinstance(event, ev.StepSucceeded) and event.node_id == "refuse-me":
            raise UnhandleableRecord("node refuse-me is not in the workflow")
        handled.append(event)

    async with producer(fresh_kafka) as prod:
        await send_event(prod, topics.executions_commands, good, source="/t")
        await prod.send_and_wait(
            topics.executions_commands,
            b"{oops",
            key=key,
            headers=[("ce_type", good.CE_TYPE.encode())],
        )
        await prod.send_and_wait(
            topics.executions_commands, b"{}", key=key, headers=[("ce_type", b"cadenza.unheard.of")]
        )
        await send_event(prod, topics.executions_commands, refused, source="/t")
        await send_event(prod, topics.executions_commands, last, source="/t")
        stop = asyncio.Event()
        async with consumer(fresh_kafka, [topics.executions_commands], group_id="dlq-test") as cons:
            task = asyncio.create_task(
                consume_forever(cons, handler, DeadLetters(prod, topics, "dlq-test"), stop=stop)
            )
            async with asyncio.timeout(30):
                while len(handled) < 2:
                    await asyncio.sleep(0.05)
            stop.set()
            await task
    dead = await _read(fresh_kafka, topics.dlq, 3)

    assert [e.event_id for e in handled] == [good.event_id, last.event_id]
    reasons = sorted(header(r.headers, "dlq_reason") or "" for r in dead)
    assert reasons[0].startswith("malformed JSON")
    assert reasons[1] == "node refuse-me is not in the workflow"
    assert reasons[2] == "unknown event type 'cadenza.unheard.of'"
    for record in dead:
        assert header(record.headers, "dlq_topic") == topics.executions_commands
        assert header(record.headers, "dlq_consumer") == "dlq-test"
        assert header(record.headers, "dlq_offset") is not None
        assert record.key == key


async def test_each_execution_stays_on_one_partition_in_order(
    fresh_kafka: KafkaSettings,
) -> None:
    topic = ev.Topics(fresh_kafka.topic_prefix).executions_commands
    executions = [uuid.uuid4() for _ in range(50)]
    events = [
        ev.StepSucceeded(execution_id=x, org_id=ORG_ID, node_id="n", attempt=1, seq=i)
        for i in range(20)
        for x in executions
    ]

    async with producer(fresh_kafka) as prod:
        futures = []
        for event in events:
            msg = encode(event, source="/t")
            futures.append(await prod.send(topic, msg.value, key=msg.key, headers=msg.headers))
        await asyncio.gather(*futures)
    records = await _read(fresh_kafka, topic, len(events), timeout=60)

    partitions: dict[uuid.UUID, set[int]] = defaultdict(set)
    seqs: dict[uuid.UUID, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        event = decode(record.value, record.headers)
        assert isinstance(event, ev.StepSucceeded)
        partitions[event.execution_id].add(record.partition)
        seqs[event.execution_id].append(event.seq or 0)
    assert len(records) == 1000
    assert {len(p) for p in partitions.values()} == {1}
    assert len({p for ps in partitions.values() for p in ps}) > 6
    assert all(s == list(range(20)) for s in seqs.values())
