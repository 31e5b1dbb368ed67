"""A consumer that handles many records concurrently yet commits only finished prefixes.

Records of all partitions run as tasks (at most `max_in_flight`); each partition's
commit advances only up to the first record not finished yet (`PartitionOffsets`), for
partitions this member still owns. On revocation the finished prefix is committed and the
partition's tracker dropped (its late answers are harmless duplicates). On stop, fetching
ends, in-flight records drain (bounded), and the final offsets are committed. A handler
exception is fatal: the loop re-raises it after draining, so the process restarts and the
unfinished records are re-delivered (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from cadenza_step_runner import metrics
from cadenza_step_runner.offsets import PartitionOffsets

log = logging.getLogger(__name__)

RecordHandler = Callable[[ConsumerRecord[Any, Any]], Awaitable[None]]


class ConcurrentConsumer(ConsumerRebalanceListener):  # type: ignore[misc]
    """Runs `handle` on every record with bounded concurrency and prefix commits."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        handle: RecordHandler,
        *,
        name: str,
        max_in_flight: int,
        commit_interval_s: float = 0.5,
    ) -> None:
        self._consumer = consumer
        self._handle = handle
        self._name = name
        self._max = max_in_flight
        self._interval = commit_interval_s
        self._trackers: dict[TopicPartition, PartitionOffsets] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: BaseException | None = None
        self._last_commit = 0.0

    def subscribe(self, topics: list[str]) -> None:
        """Subscribe with this object as the rebalance listener."""
        self._consumer.subscribe(topics, listener=self)

    async def run(self, stop: asyncio.Event, drain_timeout_s: float = 30.0) -> None:
        """Consume until `stop` is set (or a handler fails), then drain and commit."""
        try:
            while not stop.is_set() and self._failure is None:
                await self._step()
        finally:
            await self._drain(drain_timeout_s)
        if self._failure is not None:
            raise self._failure

    async def _step(self) -> None:
        if len(self._tasks) >= self._max:
            await asyncio.wait(self._tasks, timeout=0.1, return_when=asyncio.FIRST_COMPLETED)
        else:
            batches = await self._consumer.getmany(
                timeout_ms=100, max_records=self._max - len(self._tasks)
            )
            for tp, records in batches.items():
                self._start(tp, records)
        if time.monotonic() - self._last_commit >= self._interval:
            await self.commit()

    def _start(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        tracker = self._trackers.get(tp)
        if tracker is None:
            tracker = self._trackers[tp] = PartitionOffsets()
        for record in records:
            tracker.started(record.offset)
            task = asyncio.create_task(self._run_one(tracker, record))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        metrics.IN_FLIGHT.labels(self._name).set(len(self._tasks))

    async def _run_one(self, tracker: PartitionOffsets, record: ConsumerRecord[Any, Any]) -> None:
        try:
            await self._handle(record)
        except Exception as exc:
            log.exception(
                "record handler failed",
                extra={
                    "consumer": self._name,
                    "partition": record.partition,
                    "offset": record.offset,
                },
            )
            if self._failure is None:
                self._failure = exc
            return
        tracker.finished(record.offset)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit each owned partition's finished prefix, if it moved."""
        self._last_commit = time.monotonic()
        owned = self._consumer.assignment()
        offsets = {}
        for tp, tracker in self._trackers.items():
            offset = tracker.committable()
            wanted = tp in owned and (only is None or tp in only)
            if wanted and offset is not None and self._committed.get(tp) != offset:
                offsets[tp] = offset
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
            self._committed.update(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            log.warning(
                "commit failed; will retry", extra={"consumer": self._name, "error": str(exc)}
            )

    async def _drain(self, timeout_s: float) -> None:
        if self._tasks:
            log.info("draining", extra={"consumer": self._name, "in_flight": len(self._tasks)})
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
        await self.commit()
        # records still running after the drain timeout are abandoned uncommitted:
        # the next owner re-delivers them
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
        metrics.IN_FLIGHT.labels(self._name).set(len(self._tasks))

    # --- rebalance listener --------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what finished on the partitions we are losing, then forget them."""
        await self.commit(only=set(revoked))
        for tp in revoked:
            self._trackers.pop(tp, None)
            self._committed.pop(tp, None)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Nothing to do: trackers are created when a partition's first record arrives."""
