"""SIGKILL the runner mid-run: at-least-once answers and commits that never skip a record."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from step_runner_stub import StubServer, free_port
from step_runner_support import publish, ready

from cadenza_common import kafka
from cadenza_common.events import Topics
from cadenza_common.settings import KafkaSettings

pytestmark = pytest.mark.integration

STEPS = 300
GROUP = "cadenza-step-runner"


def start_runner(
    settings: KafkaSettings, database_url: str, metrics_port: int = 0
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "CADENZA_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "CADENZA_DATABASE_URL": database_url,
        "CADENZA_ALLOW_PRIVATE_NETWORK": "true",
        "CADENZA_METRICS_PORT": str(metrics_port),
        "CADENZA_WEBHOOK_ENABLED": "false",
        "CADENZA_MAX_IN_FLIGHT": "40",
        "CADENZA_SESSION_TIMEOUT_MS": "6000",
        "CADENZA_COMMIT_INTERVAL_S": "0.2",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cadenza_step_runner"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def read_to_end(settings: KafkaSettings, topic: str) -> list[Any]:
    """Every record of a topic, up to its current end."""
    cons = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await cons.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.partitions)]
        cons.assign(parts)
        await cons.seek_to_beginning(*parts)
        ends = await cons.end_offsets(parts)
        records: list[Any] = []
        async with asyncio.timeout(30):
            while [tp for tp in parts if await cons.position(tp) < ends[tp]]:
                for batch in (await cons.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await cons.stop()


async def answered(settings: KafkaSettings, topic: str) -> set[uuid.UUID]:
    return {
        kafka.decode(r.value, r.headers).execution_id  # type: ignore[attr-defined]
        for r in await read_to_end(settings, topic)
    }


async def committed(settings: KafkaSettings, topic: str) -> dict[int, int]:
    cons = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=GROUP)
    await cons.start()
    try:
        return {
            p: (await cons.committed(TopicPartition(topic, p))) or 0
            for p in range(settings.partitions)
        }
    finally:
        await cons.stop()


async def wait_answered(settings: KafkaSettings, topic: str, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while len(await answered(settings, topic)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} answers in {timeout_s}s"
        await asyncio.sleep(0.3)


async def test_sigkill_mid_run_loses_nothing_and_commits_skip_nothing(
    fresh_kafka: KafkaSettings, database_url: str, org_id: uuid.UUID, stub: StubServer
) -> None:
    topics = Topics(fresh_kafka.topic_prefix)
    steps = [ready(org_id, {"url": f"{stub.url}/jitter?max_ms=1500"}) for _ in range(STEPS)]
    placed = await publish(fresh_kafka, topics.steps_ready, list(steps))
    by_place = {p: s.execution_id for p, s in zip(placed, steps, strict=True)}

    first = start_runner(fresh_kafka, database_url)
    try:
        await wait_answered(fresh_kafka, topics.executions_commands, 60, timeout_s=40)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    after_kill = await answered(fresh_kafka, topics.executions_commands)
    offsets = await committed(fresh_kafka, topics.steps_ready)

    metrics_port = free_port()
    second = start_runner(fresh_kafka, database_url, metrics_port)
    try:
        await wait_answered(fresh_kafka, topics.executions_commands, STEPS, timeout_s=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=30)

    skipped = [p for p, e in by_place.items() if p[1] < offsets[p[0]] and e not in after_kill]
    assert skipped == []
    assert sum(offsets.values()) > 0  # commits happened before the kill: the check bites
    assert 0 < len(after_kill) < STEPS
    assert await answered(fresh_kafka, topics.executions_commands) == set(by_place.values())
    assert second.returncode == 0, err.decode()[-2000:]
    assert 'cadenza_step_runner_calls_total{connection="127.0.0.1",outcome="succeeded"}' in metrics
