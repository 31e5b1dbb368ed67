"""Helpers for the audit-sink's tests against real Kafka and Postgres (no pytest here)."""

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

from cadenza_audit_sink import repository as repo
from cadenza_audit_sink.__main__ import serve
from cadenza_audit_sink.samples import fold
from cadenza_audit_sink.settings import Settings
from cadenza_common import events as ev
from cadenza_common.kafka import encode, producer
from cadenza_common.settings import KafkaSettings
from cadenza_common.testing import serving


@asynccontextmanager
async def running_sink(settings: Settings) -> AsyncIterator[None]:
    """The sink in this process, stopped (gracefully) when the block ends."""
    async with serving(lambda stop: serve(settings, stop)):
        yield


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


async def all_consumed(db: asyncpg.Pool, settings: Settings, n: int) -> bool:
    """Whether the sink's stored offsets add up to at least `n` records."""
    total = await db.fetchval(
        'SELECT coalesce(sum("offset"), 0) FROM sink_offsets WHERE group_id = $1',
        settings.group_id,
    )
    return int(total) >= n


async def audited(db: asyncpg.Pool, org: uuid.UUID, n: int) -> bool:
    """Whether the org has at least `n` audit rows."""
    return await count(db, "SELECT count(*) FROM audit_log WHERE org_id = $1", org) >= n


async def assert_rows_match_fold(
    db: asyncpg.Pool, events: list[ev.ExecutionEvent], executions: list[uuid.UUID]
) -> None:
    """The stored runs and steps equal what folding the events from nothing gives."""
    expected = fold(events)
    async with db.acquire() as conn:
        stored = await repo.load_projection(conn, executions)
    assert stored.runs == expected.runs
    assert stored.steps == expected.steps
