"""Fixtures for the audit-sink against the real Kafka and Postgres: settings and a pool."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from cadenza_audit_sink.settings import Settings
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
