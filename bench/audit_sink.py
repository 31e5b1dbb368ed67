"""Audit-sink throughput: sustained history events/s into Postgres with one sink process.

Pre-loads N onboarding histories (22 events each, spread over several orgs) into a
fresh topic prefix, starts `python -m cadenza_audit_sink` as ONE process against a
fresh database, and times it from its first committed batch to the last offset.
Every event becomes a `step_events` row, an upsert of its step/run and a hash-chained
`audit_log` row. Needs Kafka and Postgres: CADENZA_TEST_KAFKA and
CADENZA_TEST_DATABASE_URL (or CADENZA_KAFKA_BOOTSTRAP_SERVERS / CADENZA_DATABASE_URL).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.report import report
from cadenza_audit_sink.samples import onboarding_history
from cadenza_common.events import Topics
from cadenza_common.kafka import delete_prefixed_topics, encode, ensure_topics, producer
from cadenza_common.settings import DatabaseSettings, KafkaSettings
from cadenza_devstack.databases import create_database, drop_database

EXECUTIONS = 1500
ORGS = 10
BATCH_SIZES = (500, 2000)


def _servers() -> tuple[str, str]:
    kafka = os.environ.get("CADENZA_TEST_KAFKA") or os.environ.get(
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS"
    )
    db = os.environ.get("CADENZA_TEST_DATABASE_URL") or os.environ.get("CADENZA_DATABASE_URL")
    if not kafka or not db:
        raise SystemExit("set CADENZA_TEST_KAFKA and CADENZA_TEST_DATABASE_URL")
    return kafka, DatabaseSettings(url=db).url


def _dsn(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


async def _load_topic(kafka: KafkaSettings) -> int:
    await ensure_topics(kafka)
    topic = Topics(kafka.topic_prefix).executions_events
    orgs = [uuid.uuid4() for _ in range(ORGS)]
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    sent = 0
    async with producer(kafka, linger_ms=20) as prod:
        futures = []
        for n in range(EXECUTIONS):
            for event in onboarding_history(uuid.uuid4(), orgs[n % ORGS], t0, external_id=str(n)):
                msg = encode(event, source="/cadenza/bench")
                futures.append(await prod.send(topic, msg.value, key=msg.key, headers=msg.headers))
                sent += 1
        await asyncio.gather(*futures)
    return sent


async def _consumed(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval('SELECT coalesce(sum("offset"), 0) FROM sink_offsets'))
    finally:
        await conn.close()


async def _run_once(kafka_servers: str, base_url: str, batch: int) -> dict[str, Any]:
    url = await create_database(base_url, "cadenza_bench")
    try:
        kafka = KafkaSettings(
            bootstrap_servers=kafka_servers, topic_prefix=f"bench{uuid.uuid4().hex[:8]}."
        )
        try:
            total = await _load_topic(kafka)
            return await _measure(kafka, url, batch, total)
        finally:
            await delete_prefixed_topics(kafka)
    finally:
        await drop_database(url)


async def _measure(kafka: KafkaSettings, url: str, batch: int, total: int) -> dict[str, Any]:
    env = {
        **os.environ,
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CADENZA_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "CADENZA_DATABASE_URL": url,
        "CADENZA_AUDIT_SINK_METRICS_PORT": "0",
        "CADENZA_AUDIT_SINK_BATCH_MAX_RECORDS": str(batch),
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cadenza_audit_sink"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        first_at, first = None, 0
        deadline = started + 300
        done = 0
        while done < total and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            done = await _consumed(_dsn(url))
            if first_at is None and done:
                first_at, first = time.perf_counter(), done
        finished = time.perf_counter()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert first_at is not None, "the sink never committed"
    assert done >= total, f"sink did not finish: {done}/{total}"
    sustained = (total - first) / max(finished - first_at, 1e-9)
    return {
        "batch_max_records": batch,
        "events": total,
        "seconds_from_first_commit": round(finished - first_at, 2),
        "events_per_s": round(sustained, 1),
        "events_per_s_incl_startup": round(total / (finished - started), 1),
        "target_events_per_s": 5000,
    }


def main() -> None:
    kafka_servers, base_url = _servers()
    rows = [asyncio.run(_run_once(kafka_servers, base_url, batch)) for batch in BATCH_SIZES]
    report(
        "audit_sink",
        rows,
        notes=(
            f"{EXECUTIONS} onboarding executions x 22 history events over {ORGS} orgs, one sink "
            "process, fresh database; sustained = from the first committed batch to the last offset"
        ),
    )
