"""Fixtures for the audit-sink against the real Kafka and Postgres: settings, a sink, helpers."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cadenza_audit_sink.__main__ import serve
from cadenza_audit_sink.settings import Settings
from cadenza_common import events as ev
from cadenza_common.kafka import encode, producer
from cadenza_common.settings import DatabaseSettings, KafkaSettings


def dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


@pytest.fixture
def sink_settings(fresh_kafka: KafkaSettings, database_url: str) -> Settings:
    return Settings(
        kafka=fresh_kafka,
        database=DatabaseSettings(url=database_url),
        group_id=f"sink-{uuid.uuid4().hex[:8]}",
        metrics_port=0,
        batch_timeout_ms=50,
        backoff_initial_s=0.1,
        backoff_max_s=1.0,
        session_timeout_ms=6000,
        retention_interval_s=3600,
    )


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(dsn(database_url), min_size=1, max_size=2)
    yield pool
    await pool.close()


@asynccontextmanager
async def running_sink(settings: Settings) -> AsyncIterator[None]:
    """The sink in this process, stopped (gracefully) when the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def sink_environment(settings: Settings, database_url: str | None = None) -> dict[str, str]:
    """Environment for `python -m cadenza_audit_sink` as a subprocess."""
    return {
        **os.environ,
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "CADENZA_KAFKA_TOPIC_PREFIX": settings.kafka.topic_prefix,
        "CADENZA_DATABASE_URL": database_url or settings.database.url,
        "CADENZA_AUDIT_SINK_GROUP_ID": settings.group_id,
        "CADENZA_AUDIT_SINK_METRICS_PORT": "0",
        "CADENZA_AUDIT_SINK_BATCH_TIMEOUT_MS": "50",
        "CADENZA_AUDIT_SINK_SESSION_TIMEOUT_MS": "6000",
    }


async def start_sink_process(settings: Settings, log: Path) -> asyncio.subprocess.Process:
    handle = log.open("ab")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cadenza_audit_sink",
        env=sink_environment(settings),
        stdout=handle,
        stderr=handle,
    )


async def produce(settings: KafkaSettings, topic: str, events: Sequence[ev.Event]) -> None:
    async with producer(settings, linger_ms=20) as prod:
        futures = []
        for event in events:
            msg = encode(event, source="/cadenza/tests")
            futures.append(await prod.send(topic, msg.value, key=msg.key, headers=msg.headers))
        await asyncio.gather(*futures)


async def wait_for(
    check: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "condition"
) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    return int(await pool.fetchval(sql, *args))
