"""The scheduler's own produce requests (`produce.Producer`) against a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.conn import CloseReason

from cadenza_common import events as ev
from cadenza_common.kafka import consumer, ensure_topics
from cadenza_common.settings import KafkaSettings
from cadenza_scheduler.agents import Outgoing
from cadenza_scheduler.produce import Producer


@pytest_asyncio.fixture
async def client(fresh_kafka: KafkaSettings) -> AsyncIterator[object]:
    """The client of a started aiokafka producer (as Faust's is, in the scheduler)."""
    started = AIOKafkaProducer(bootstrap_servers=fresh_kafka.bootstrap_servers)
    await started.start()
    try:
        yield started.client
    finally:
        await started.stop()


async def read(kafka: KafkaSettings, topic: str, count: int) -> dict[int, list[bytes]]:
    seen: dict[int, list[bytes]] = {}
    async with consumer(kafka, [topic], "check") as check:
        while sum(map(len, seen.values())) < count:
            for tp, messages in (await check.getmany(timeout_ms=1000)).items():
                seen.setdefault(tp.partition, []).extend(m.value or b"" for m in messages)
    return seen


def errors(producer: Producer, error: str, outcome: str) -> float:
    labels = {"error": error, "outcome": outcome}
    value = producer.metrics.registry.get_sample_value(
        "cadenza_scheduler_produce_errors_total", labels
    )
    return value or 0.0


async def warm_up(producer: Producer, topics: list[str], partitions: int) -> None:
    """One empty record to each partition, so that every leader is known and ready (a
    partition just created may answer NOT_LEADER for a moment: retried)."""
    records = [Outgoing(t, p, None, b"", []) for t in topics for p in range(partitions)]
    await asyncio.wait_for(asyncio.gather(*producer.send(records)), timeout=30)


async def test_what_two_tasks_hand_over_in_one_loop_turn_goes_out_in_one_request(
    fresh_kafka: KafkaSettings, client: object
) -> None:
    topics = ev.Topics(fresh_kafka.topic_prefix)
    await ensure_topics(fresh_kafka)
    producer = Producer(lambda: client)

    async def hand_over(topic: str, first: int) -> list[object]:
        numbers = range(first, first + 6)
        records = [Outgoing(topic, n % 3, b"k", b"%d" % n, [("n", b"x")]) for n in numbers]
        return await asyncio.gather(*producer.send(records))

    await warm_up(producer, [topics.steps_ready, topics.executions_events], 3)
    before = producer.requests
    states, _ = await asyncio.gather(
        hand_over(topics.steps_ready, 0), hand_over(topics.executions_events, 6)
    )

    assert producer.requests == before + 1
    assert [m.partition for m in states] == [0, 1, 2, 0, 1, 2]  # type: ignore[attr-defined]
    ready = await read(fresh_kafka, topics.steps_ready, 9)
    assert ready == {0: [b"", b"0", b"3"], 1: [b"", b"1", b"4"], 2: [b"", b"2", b"5"]}
    events = await read(fresh_kafka, topics.executions_events, 9)
    assert events == {0: [b"", b"6", b"9"], 1: [b"", b"7", b"10"], 2: [b"", b"8", b"11"]}


async def test_records_handed_over_while_a_request_is_in_flight_go_in_the_next_in_order(
    fresh_kafka: KafkaSettings, client: object
) -> None:
    topic = ev.Topics(fresh_kafka.topic_prefix).steps_ready
    await ensure_topics(fresh_kafka)
    producer = Producer(lambda: client)

    await warm_up(producer, [topic], 1)
    before = producer.requests
    first = producer.send([Outgoing(topic, 0, None, b"a", [])])
    while producer.requests == before:  # until the request with "a" is in flight
        await asyncio.sleep(0)
    second = producer.send([Outgoing(topic, 0, None, b"b", []), Outgoing(topic, 0, None, b"c", [])])
    done = await asyncio.gather(*first, *second)

    assert producer.requests == before + 2
    assert second[0] is second[1]  # one batch
    assert [m.offset for m in done] == [1, 2, 2]  # type: ignore[attr-defined]
    assert await read(fresh_kafka, topic, 4) == {0: [b"", b"a", b"b", b"c"]}


async def test_a_partition_that_appears_within_the_delivery_timeout_gets_its_records(
    fresh_kafka: KafkaSettings, client: object
) -> None:
    # The leader is unknown at first (the topic does not exist): retried with a metadata
    # refresh until the topic is created.
    topic = f"{fresh_kafka.topic_prefix}.late"
    producer = Producer(lambda: client, retry_backoff_s=0.05, delivery_timeout_s=60)

    acks = producer.send([Outgoing(topic, 1, b"k", b"late", [])])
    await asyncio.sleep(0.5)
    assert not acks[0].done()
    await ensure_topics(fresh_kafka, [topic])

    stored = await asyncio.wait_for(acks[0], timeout=30)
    assert stored.partition == 1
    assert errors(producer, "UnknownTopicOrPartitionError", "retried") >= 1
    registry = producer.metrics.registry
    sent = registry.get_sample_value("cadenza_scheduler_produce_requests_total")
    assert sent == producer.requests >= 1
    answered = registry.get_sample_value("cadenza_scheduler_produce_seconds_count")
    assert answered == sent  # every request got its answer
    assert await read(fresh_kafka, topic, 1) == {1: [b"late"]}


async def test_a_batch_fails_with_kafkas_error_when_the_broker_refuses_it(
    fresh_kafka: KafkaSettings, client: object
) -> None:
    # Larger than the broker's message.max.bytes (1 MiB): not retriable, failed at once,
    # and the partition's next batch still goes out.
    topic = ev.Topics(fresh_kafka.topic_prefix).steps_ready
    await ensure_topics(fresh_kafka)
    producer = Producer(lambda: client, max_batch_bytes=4 * 1024 * 1024)

    too_big = producer.send([Outgoing(topic, 0, None, b"x" * (2 * 1024 * 1024), [])])
    with pytest.raises(kafka_errors.MessageSizeTooLargeError):
        await asyncio.wait_for(too_big[0], timeout=30)
    assert errors(producer, "MessageSizeTooLargeError", "failed") == 1
    after = producer.send([Outgoing(topic, 0, None, b"fine", [])])
    await asyncio.wait_for(after[0], timeout=30)
    assert await read(fresh_kafka, topic, 1) == {0: [b"fine"]}


async def test_an_unknown_partition_fails_after_the_delivery_timeout(
    fresh_kafka: KafkaSettings, client: object
) -> None:
    topic = ev.Topics(fresh_kafka.topic_prefix).steps_ready
    await ensure_topics(fresh_kafka)
    producer = Producer(lambda: client, retry_backoff_s=0.05, delivery_timeout_s=1.0)

    acks = producer.send([Outgoing(topic, fresh_kafka.partitions + 5, None, b"v", [])])
    with pytest.raises(kafka_errors.UnknownTopicOrPartitionError, match=r"\[17\]"):
        await asyncio.wait_for(acks[0], timeout=30)
    assert errors(producer, "UnknownTopicOrPartitionError", "failed") == 1


async def test_stopping_the_sending_task_fails_what_it_holds(
    fresh_kafka: KafkaSettings, client: object
) -> None:
    topic = f"{fresh_kafka.topic_prefix}.missing"  # never created: never sent
    producer = Producer(lambda: client, retry_backoff_s=0.05)

    acks = producer.send([Outgoing(topic, 0, None, b"v", [])])
    await asyncio.sleep(0.2)
    assert producer._task is not None
    producer._task.cancel()
    with pytest.raises(kafka_errors.KafkaError, match="producer stopped"):
        await acks[0]


async def test_a_record_without_a_partition_is_refused() -> None:
    producer = Producer(lambda: None)
    with pytest.raises(ValueError, match="no partition"):
        producer.send([Outgoing("t", None, None, b"v", [])])
    with pytest.raises(ValueError, match="acks=0"):
        Producer(lambda: None, acks=0)


async def test_a_request_whose_connection_breaks_is_sent_again(
    fresh_kafka: KafkaSettings, client: Any
) -> None:
    # The broker's answer never comes: the connection is closed with the request in flight.
    # Retried on a new connection; at least once (the broker may have stored it already).
    topic = ev.Topics(fresh_kafka.topic_prefix).steps_ready
    await ensure_topics(fresh_kafka)
    producer = Producer(lambda: client, retry_backoff_s=0.05)
    await warm_up(producer, [topic], 1)
    before = producer.requests

    acks = producer.send([Outgoing(topic, 0, None, b"again", [])])
    while producer.requests == before:  # until the request is written
        await asyncio.sleep(0)
    for connection in list(client._conns.values()):
        connection.close(reason=CloseReason.CONNECTION_BROKEN)
    stored = await asyncio.wait_for(acks[0], timeout=30)

    assert stored.partition == 0
    assert errors(producer, "KafkaConnectionError", "retried") == 1
    assert producer.requests == before + 2
    assert b"again" in (await read(fresh_kafka, topic, 2))[0]
