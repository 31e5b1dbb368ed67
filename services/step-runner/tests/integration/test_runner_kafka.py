"""The runner as a whole over real Kafka: answers, commits, DLQ, secrets kept out of events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine
from step_runner_stub import StubServer
from step_runner_support import (
    TRACEPARENT,
    add_connection,
    make_settings,
    publish,
    read_events,
    running,
)
from step_runner_support import ready as make_ready

from cadenza_common import kafka
from cadenza_common.events import StepSucceeded, Topics
from cadenza_common.settings import KafkaSettings
from cadenza_step_runner.refs import RefSource
from cadenza_step_runner.settings import WebhookSettings

pytestmark = pytest.mark.integration


async def committed(settings: KafkaSettings, group: str, topic: str) -> dict[int, int]:
    cons = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group)
    await cons.start()
    try:
        parts = range(settings.partitions)
        return {p: (await cons.committed(TopicPartition(topic, p))) or 0 for p in parts}
    finally:
        await cons.stop()


async def test_every_step_ready_is_answered_and_offsets_committed_after_drain(
    fresh_kafka: KafkaSettings,
    engine: AsyncEngine,
    database_url: str,
    org_id: uuid.UUID,
    stub: StubServer,
) -> None:
    topics = Topics(fresh_kafka.topic_prefix)
    key = "sk_" + uuid.uuid4().hex
    await add_connection(engine, org_id, "crm", stub.url, secret=key)
    steps = [
        make_ready(
            org_id,
            {
                "connection": "crm",
                "method": "POST",
                "path": f"/echo/k{i}",
                "body": {"i": i, "region": "${env.REGION}"},
            },
        )
        for i in range(30)
    ]
    settings = make_settings(
        database_url, kafka=fresh_kafka, webhook=WebhookSettings(enabled=False)
    )
    placed = await publish(fresh_kafka, topics.steps_ready, list(steps))

    async with running(settings, RefSource(env={"REGION": "eu"})):
        records = await read_events(
            fresh_kafka, topics.executions_commands, until=lambda r: len(r) >= len(steps)
        )

    answers = [kafka.decode(r.value, r.headers) for r in records]
    assert {a.execution_id for a in answers} == {s.execution_id for s in steps}
    assert all(isinstance(a, StepSucceeded) for a in answers)
    assert all(kafka.header(r.headers, "traceparent") == TRACEPARENT for r in records)
    assert all(key.encode() not in r.value for r in records)
    ends: dict[int, int] = {}
    for partition, offset in placed:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    offsets = await committed(fresh_kafka, settings.group_id, topics.steps_ready)
    assert {p: o for p, o in offsets.items() if p in ends} == ends


async def test_poison_record_goes_to_the_dlq_and_is_committed(
    fresh_kafka: KafkaSettings, database_url: str
) -> None:
    topics = Topics(fresh_kafka.topic_prefix)
    settings = make_settings(
        database_url, kafka=fresh_kafka, webhook=WebhookSettings(enabled=False)
    )
    async with kafka.producer(fresh_kafka) as prod:
        await prod.send_and_wait(
            topics.steps_ready, b"{not json", key=b"k", headers=[("ce_type", b"cadenza.step.ready")]
        )

    async with running(settings):
        dead = await read_events(fresh_kafka, topics.dlq, until=lambda r: len(r) >= 1)

    assert kafka.header(
        dead[0].headers,
        "dlq_reason",
    ).startswith("malformed JSON")  # type: ignore[union-attr]


async def test_runners_joining_and_leaving_the_group_answer_every_record(
    fresh_kafka: KafkaSettings, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    topics = Topics(fresh_kafka.topic_prefix)
    steps = [make_ready(org_id, {"url": f"{stub.url}/jitter?max_ms=300"}) for _ in range(200)]
    settings = make_settings(
        database_url, kafka=fresh_kafka, max_in_flight=20, webhook=WebhookSettings(enabled=False)
    )
    placed = await publish(fresh_kafka, topics.steps_ready, list(steps))
    want = {s.execution_id for s in steps}

    def answered(records: list[Any]) -> bool:
        return {kafka.decode(r.value, r.headers).execution_id for r in records} >= want

    async with running(settings):
        async with running(settings):
            await read_events(fresh_kafka, topics.executions_commands, until=lambda r: len(r) >= 60)
        records = await read_events(
            fresh_kafka, topics.executions_commands, until=answered, timeout_s=60
        )

    assert answered(records)
    ends: dict[int, int] = {}
    for partition, offset in placed:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    offsets = await committed(fresh_kafka, settings.group_id, topics.steps_ready)
    assert {p: o for p, o in offsets.items() if p in ends} == ends
