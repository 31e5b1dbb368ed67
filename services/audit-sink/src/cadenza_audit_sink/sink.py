"""The consumer loop: batches from Kafka, applied to Postgres exactly once.

Exactly-once rests on three things: (1) each batch's rows and its next offsets are
written in ONE transaction; (2) on assignment the consumer seeks to the offsets
stored in Postgres (Kafka's committed offsets are only a courtesy for lag tools);
(3) the transaction first locks the partitions' offset rows and checks they still
hold what this instance last read or wrote, so a zombie instance after a rebalance,
or a retry after a COMMIT whose outcome was lost, cannot apply a batch twice.
The trace's unique event id and (execution, seq) catch events duplicated upstream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from cadenza_audit_sink import repository as repo
from cadenza_audit_sink.batch import Applied, Item, Record, sort_records, write
from cadenza_audit_sink.metrics import Metrics
from cadenza_audit_sink.settings import Settings
from cadenza_common.events import Topics
from cadenza_common.kafka import DeadLetters

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
)
"""Database errors worth waiting out: the batch is retried unchanged."""

RECORD_PROBLEMS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
    TypeError,  # a value the encoders refuse
    ValueError,
)
"""Errors one record can cause: the batch is split and the offending record dead-lettered."""


class Stopping(Exception):
    """The sink was asked to stop while waiting for the database."""


def _key(tp: TopicPartition) -> repo.TopicPartitionKey:
    return (tp.topic, tp.partition)


class AuditSink:
    """Consumes history and audit records and writes them to Postgres exactly once."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        consumer: AIOKafkaConsumer,
        dead_letters: DeadLetters,
        metrics: Metrics,
        stop: asyncio.Event,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._consumer = consumer
        self._dead = dead_letters
        self._metrics = metrics
        self._stop = stop
        self._topics = Topics(settings.kafka.topic_prefix)
        self._positions: dict[TopicPartition, int | None] = {}
        self._pending: set[TopicPartition] = set()

    def subscribe(self) -> None:
        """Subscribe to both input topics with the seek-to-stored-offsets listener."""
        topics = [self._topics.executions_events, self._topics.audit_records]
        self._consumer.subscribe(topics=topics, listener=_Rebalance(self))

    async def run(self) -> None:
        """Poll, apply, repeat until stopped."""
        while not self._stop.is_set():
            try:
                await self._resync()
                batches = await self._consumer.getmany(
                    timeout_ms=self._settings.batch_timeout_ms,
                    max_records=self._settings.batch_max_records,
                )
                records = self._owned(batches)
                if records:
                    await self._process(records)
                self._report_lag()
            except Stopping:
                return

    # --- partitions and offsets ----------------------------------------------------------------

    def assigned(self, tps: Sequence[TopicPartition]) -> None:
        self._pending |= set(tps)

    def revoked(self, tps: Sequence[TopicPartition]) -> None:
        for tp in tps:
            self._positions.pop(tp, None)
            self._pending.discard(tp)

    async def _resync(self) -> None:
        """Seek newly assigned (or fenced) partitions to the offsets stored in Postgres."""
        if not self._pending:
            return
        tps = sorted(self._pending & self._consumer.assignment())
        self._pending -= set(self._pending) - set(tps)
        if not tps:
            return

        async def load(conn: repo.Connection) -> dict[repo.TopicPartitionKey, int | None]:
            return await repo.stored_offsets(conn, self._settings.group_id, [_key(t) for t in tps])

        stored = await self._with_retry(load)
        for tp in tps:
            if tp not in self._consumer.assignment():  # revoked while we read the offsets
                self._pending.discard(tp)
                continue
            offset = stored[_key(tp)]
            if offset is None:
                await self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)
            self._positions[tp] = offset
            self._pending.discard(tp)
        log.info("partitions positioned from stored offsets", extra={"offsets": stored})

    def _owned(self, batches: dict[TopicPartition, list[Record]]) -> list[Record]:
        """Records of partitions this instance has positioned, in partition then offset order."""
        records: list[Record] = []
        for tp in sorted(batches):
            if tp in self._pending or tp not in self._positions:
                continue
            start = self._positions[tp] or 0
            records.extend(r for r in batches[tp] if r.offset >= start)
        return records

    def _report_lag(self) -> None:
        for tp in self._consumer.assignment():
            position = self._positions.get(tp)
            highwater = self._consumer.highwater(tp)
            if highwater is not None and position is not None:
                self._metrics.lag.labels(tp.topic, str(tp.partition)).set(highwater - position)

    # --- batches -------------------------------------------------------------------------------

    async def _process(self, records: list[Record]) -> None:
        started = time.perf_counter()
        batch = sort_records(records, self._topics.executions_events)
        for record, reason in batch.dead:  # before the commit: a retry may send it again
            await self._dead.send(record, reason)
            self._metrics.dead_letters.inc()
        try:
            applied = await self._commit(batch.items, records)
        except RECORD_PROBLEMS as exc:
            log.warning("batch refused by Postgres, applying record by record", exc_info=exc)
            await self._one_by_one(batch.items, records)
            return
        except repo.OffsetsMoved as exc:
            self._fenced(records, exc)
            return
        self._metrics.duplicates.inc(batch.duplicates + applied.duplicates)
        self._metrics.batch_size.observe(len(records))
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        for event in applied.applied:
            self._metrics.applied.labels(event.CE_TYPE).inc()

    async def _one_by_one(self, items: Sequence[Item], records: Sequence[Record]) -> None:
        try:
            for item in items:
                try:
                    await self._commit([item], [item.record])
                except RECORD_PROBLEMS as exc:
                    await self._dead.send(item.record, f"refused by Postgres: {exc}")
                    self._metrics.dead_letters.inc()
            await self._commit([], records)
        except repo.OffsetsMoved as exc:
            self._fenced(records, exc)

    def _fenced(self, records: Sequence[Record], exc: repo.OffsetsMoved) -> None:
        log.warning("stored offsets moved under us; re-reading them", extra={"stored": exc.stored})
        self._metrics.fenced.inc()
        self._pending |= {TopicPartition(r.topic, r.partition) for r in records}

    async def _commit(self, items: Sequence[Item], records: Sequence[Record]) -> Applied:
        """Write items and advance the records' partitions, in one transaction."""
        tps = {TopicPartition(r.topic, r.partition) for r in records}
        expected = {_key(tp): self._positions.get(tp) for tp in tps}
        new: dict[repo.TopicPartitionKey, int] = {}
        for r in records:
            new[(r.topic, r.partition)] = max(new.get((r.topic, r.partition), 0), r.offset + 1)

        async def transaction(conn: repo.Connection) -> Applied:
            async with conn.transaction():
                await repo.fence_offsets(conn, self._settings.group_id, expected)
                applied = await write(conn, items, datetime.now(UTC))
                await repo.store_offsets(conn, self._settings.group_id, expected, new)
            return applied

        applied = await self._with_retry(transaction)
        for tp in tps & self._consumer.assignment():  # a revoked one is re-read if it returns
            self._positions[tp] = new[_key(tp)]
        await self._courtesy_commit({tp: new[_key(tp)] for tp in tps})
        return applied

    async def _courtesy_commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit to Kafka too, for lag tools; Postgres stays the source of truth."""
        try:
            await self._consumer.commit(offsets)
        except (KafkaError, AssertionError) as exc:
            log.debug("kafka commit skipped", exc_info=exc)

    # --- the database --------------------------------------------------------------------------

    async def _once(self, work: Callable[[repo.Connection], Awaitable[T]]) -> T:
        async with self._pool.acquire() as conn:
            return await work(conn)

    async def _with_retry(self, work: Callable[[repo.Connection], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection, backing off while the database is unreachable."""
        delay = self._settings.backoff_initial_s
        while True:
            try:
                return await self._once(work)
            except TRANSIENT as exc:
                self._metrics.retries.inc()
                log.warning(
                    "database unavailable, retrying", extra={"delay_s": delay, "error": repr(exc)}
                )
            if self._stop.is_set():
                raise Stopping
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.backoff_max_s)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Marks newly assigned partitions to be positioned at their stored offsets."""

    def __init__(self, sink: AuditSink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._sink.revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        # Only mark them: the loop seeks before it handles any of their records, and
        # doing it here too would race the loop's own seek (and block on the database).
        self._sink.assigned(list(assigned))
