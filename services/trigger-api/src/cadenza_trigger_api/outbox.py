"""The transactional outbox: rows written with the change they announce, and the relay.

Routes call `outbox_row` and insert it in the same transaction as their change.
The relay publishes unsent rows in id order, batch by batch, and marks them sent in
the same transaction. Several replicas run it side by side: a transaction-scoped
advisory lock lets one batch be in flight at a time (so one execution's commands
are never reordered between replicas, and a replica that dies hands over at once),
and `FOR UPDATE SKIP LOCKED` keeps claimed rows from being claimed twice. When Kafka
is down the batch rolls back and the rows wait: nothing is lost (a batch that failed
half-way is sent again, so delivery is at-least-once; consumers dedupe by event id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from cadenza_common import kafka
from cadenza_common.events import Event
from cadenza_common.settings import KafkaSettings
from cadenza_trigger_api.metrics import Metrics

log = logging.getLogger(__name__)

SOURCE = "/cadenza/trigger-api"
SEND_TIMEOUT_S = 30.0
LAG_EVERY_S = 1.0

RELAY_LOCK_ID = 0x6361_6465_6E7A_61  # "cadenza"
ONE_RELAY_AT_A_TIME = "SELECT pg_try_advisory_xact_lock($1)"
CLAIM = """
SELECT id, topic, key, value, headers FROM outbox
WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
MARK_SENT = "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])"
LAG = """
SELECT count(*) AS unsent, extract(epoch FROM now() - min(created_at))::float8 AS lag
FROM outbox WHERE sent_at IS NULL
"""


def outbox_row(topic: str, event: Event) -> dict[str, Any]:
    """The outbox row that will publish `event` on `topic`."""
    msg = kafka.encode(event, source=SOURCE)
    return {
        "topic": topic,
        "key": msg.key.decode(),
        "value": msg.value,
        "headers": [[k, v.decode()] for k, v in msg.headers],
    }


class OutboxRelay:
    """Publishes outbox rows to Kafka in order and marks them sent."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        kafka_settings: KafkaSettings,
        *,
        batch_size: int = 500,
        idle_s: float = 0.02,
        retry_s: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._kafka = kafka_settings
        self._batch = batch_size
        self._idle = idle_s
        self._retry = retry_s
        self._metrics = metrics
        self._lag_observed = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set, reconnecting to Kafka whenever it goes away."""
        while not stop.is_set():
            try:
                async with kafka.producer(self._kafka, request_timeout_ms=10_000) as prod:
                    await self._pump(prod, stop)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("outbox relay cannot reach kafka; rows wait", extra={"error": str(exc)})
                await _sleep(stop, self._retry)

    async def _pump(self, prod: AIOKafkaProducer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            sent = await self.relay_once(prod)
            if sent < self._batch:
                # a short batch means we caught up: wait so the next one is worth a round trip
                await self._observe_lag()
                await _sleep(stop, self._idle)

    async def relay_once(self, prod: AIOKafkaProducer) -> int:
        """Publish one batch of unsent rows; return how many were sent."""
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(ONE_RELAY_AT_A_TIME, RELAY_LOCK_ID):
                return 0  # another replica is relaying; it keeps the global order
            rows = await conn.fetch(CLAIM, self._batch)
            if not rows:
                return 0
            futures = [
                await prod.send(
                    row["topic"],
                    row["value"],
                    key=row["key"].encode(),
                    headers=[(k, v.encode()) for k, v in orjson.loads(row["headers"])],
                )
                for row in rows
            ]
            await asyncio.wait_for(asyncio.gather(*futures), SEND_TIMEOUT_S)
            await conn.execute(MARK_SENT, [row["id"] for row in rows])
        if self._metrics is not None:
            self._metrics.outbox_sent.inc(len(rows))
        return len(rows)

    async def _observe_lag(self) -> None:
        now = time.monotonic()
        if self._metrics is None or now - self._lag_observed < LAG_EVERY_S:
            return
        self._lag_observed = now
        row = await self._pool.fetchrow(LAG)
        self._metrics.outbox_unsent.set(row["unsent"])
        self._metrics.outbox_lag_seconds.set(row["lag"] or 0.0)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
