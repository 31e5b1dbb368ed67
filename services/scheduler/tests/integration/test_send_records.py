"""The scheduler's batched sends: one batch per partition, in order, on a real broker."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from cadenza_common import events as ev
from cadenza_common.kafka import consumer
from cadenza_common.settings import KafkaSettings
from cadenza_scheduler.agents import Outgoing
from cadenza_scheduler.app import create_app, send_records
from cadenza_scheduler.settings import Settings

BIG = 100 * 1024  # three of them do not fit the producer's 256 KiB batch


async def test_records_reach_their_partitions_in_order_also_past_a_full_batch(
    fresh_kafka: KafkaSettings,
) -> None:
    topics = ev.Topics(fresh_kafka.topic_prefix)
    app = create_app(Settings(kafka=fresh_kafka, app_id=f"{fresh_kafka.topic_prefix}s")).app
    records = [
        Outgoing(topics.steps_ready, n % 2, f"k{n}".encode(), bytes([n]) * BIG, [("n", b"%d" % n)])
        for n in range(8)
    ]
    records.append(Outgoing(topics.steps_ready, 1, b"small", b"s", ()))
    records.append(Outgoing(topics.dlq, None, b"anywhere", b"d", [("reason", b"x")]))
    await app.producer.start()
    try:
        acks = await send_records(app, records)
        delivered = await asyncio.wait_for(asyncio.gather(*acks), timeout=30)
    finally:
        await app.producer.stop()

    assert len(acks) == len(records)
    assert len(set(acks[:-1])) == 4  # a 256 KiB batch holds two: two batches a partition
    assert [m.partition for m in delivered[:-1]] == [r.partition for r in records[:-1]]
    seen: dict[int, list[bytes]] = defaultdict(list)
    async with consumer(fresh_kafka, [topics.steps_ready, topics.dlq], "check") as check:
        while sum(map(len, seen.values())) < len(records):
            batches = await check.getmany(timeout_ms=1000)
            for tp, messages in batches.items():
                for message in messages:
                    part = -1 if tp.topic == topics.dlq else tp.partition
                    seen[part].append(message.key or b"")
                    if message.key == b"k3":
                        assert message.headers == (("n", b"3"),)
                        assert message.value == bytes([3]) * BIG
    assert seen[0] == [b"k0", b"k2", b"k4", b"k6"]
    assert seen[1] == [b"k1", b"k3", b"k5", b"k7", b"small"]
    assert seen[-1] == [b"anywhere"]
