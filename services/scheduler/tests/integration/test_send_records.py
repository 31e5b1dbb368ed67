"""The scheduler's producer (`Sends`, librdkafka) on a real broker: partitions, order,
headers, records without a partition, and refusals."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from cadenza_common import events as ev
from cadenza_common.kafka import MAX_RECORD_BYTES, consumer
from cadenza_common.settings import KafkaSettings
from cadenza_scheduler.agents import Outgoing, partition_of
from cadenza_scheduler.sends import SendError, Sends

BIG = 100 * 1024


async def test_records_reach_their_partitions_in_order(fresh_kafka: KafkaSettings) -> None:
    topics = ev.Topics(fresh_kafka.topic_prefix)
    sends = Sends(fresh_kafka)
    records = [
        Outgoing(topics.steps_ready, n % 2, f"k{n}".encode(), bytes([n]) * BIG, [("n", b"%d" % n)])
        for n in range(8)
    ]
    records.append(Outgoing(topics.steps_ready, 1, b"small", b"s", ()))
    records.append(Outgoing(topics.dlq, None, b"anywhere", b"d", [("reason", b"x")]))
    try:
        acks = sends.send(records)
        await asyncio.wait_for(asyncio.gather(*acks), timeout=30)
    finally:
        await sends.close()

    assert len(acks) == len(records)
    seen: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    async with consumer(fresh_kafka, [topics.steps_ready, topics.dlq], "check") as check:
        while sum(map(len, seen.values())) < len(records):
            batches = await check.getmany(timeout_ms=1000)
            for tp, messages in batches.items():
                for message in messages:
                    seen[tp.topic, tp.partition].append(message.key or b"")
                    if message.key == b"k3":
                        assert message.headers == (("n", b"3"),)
                        assert message.value == bytes([3]) * BIG
    assert seen[topics.steps_ready, 0] == [b"k0", b"k2", b"k4", b"k6"]
    assert seen[topics.steps_ready, 1] == [b"k1", b"k3", b"k5", b"k7", b"small"]
    # without a partition, the key picks it as everywhere else (Java's murmur2)
    assert seen[topics.dlq, partition_of("anywhere", fresh_kafka.partitions)] == [b"anywhere"]


async def test_a_refused_record_fails_its_send_and_the_next_sends_go_on(
    fresh_kafka: KafkaSettings,
) -> None:
    topics = ev.Topics(fresh_kafka.topic_prefix)
    sends = Sends(fresh_kafka)
    too_big = b"x" * (MAX_RECORD_BYTES + 128 * 1024)
    try:
        refused = sends.send([Outgoing(topics.steps_ready, 0, b"k", too_big, ())])
        with pytest.raises(SendError):
            await asyncio.wait_for(asyncio.gather(*refused), timeout=30)
        fine = sends.send([Outgoing(topics.steps_ready, 0, b"k", b"ok", ())])
        await asyncio.wait_for(asyncio.gather(*fine), timeout=30)
    finally:
        await sends.close()
    with pytest.raises(SendError, match="closed"):
        sends.send([Outgoing(topics.steps_ready, 0, b"k", b"late", ())])
