"""The input topic's own fetch loop: one fetch in flight, its records straight to the inbox.

aiokafka's fetcher and Faust's `getmany` cost the scheduler's main thread ~0.6 ms a fetch
at 1,000 transitions/s (~230 fetches a second, ~19 % of the thread; bench/README.md,
scheduler session 21): a task, an `asyncio.wait` over every pending future and a new
consume future a round, the partitions sorted by node and shuffled, the records buffered
per partition until Faust asks, then Faust's async generator and its waits per round.
The agent takes records in batches from its `Inbox` anyway, so `Intake` fetches the
input topic itself, on the consumer's own client and in its positions:

- it asks for the partitions Faust has active (resumed after recovery) whose position is
  valid, at those positions, from each one's leader, one request a broker in flight,
  each broker served by a loop of its own (one with nothing new holds its fetch up to
  the fetch wait, and must not hold back the others); the next request goes out as
  soon as the previous one's records are handed over; a partition is fetched by one
  loop at a time until its records are handed over (a leader that moved meanwhile
  cannot interleave them);
- a partition's records are kept only if its position is still the one fetched from
  (a seek meanwhile wins, as in aiokafka), the position moves past them before they are
  handed over (as aiokafka's `getall` does), and they go through `app._take` (gaps,
  commit cadence, the inbox with its flow-control wait and generation check), stopping
  when the flow stops or the consumer generation changes, as Faust's `getmany` does:
  the rebalance that follows seeks back to the committed offsets;
- errors are handled as aiokafka's fetcher handles them: a partition whose leader moved
  (or is unknown) refreshes the metadata, an offset out of range is reset by the
  consumer's reset strategy (aiokafka's fetcher does that), a failed request is retried
  after the consumer's retry backoff; a partition whose records cannot be read (a
  corrupt batch) keeps its position and is fetched again, the others go on; a round that
  raises is logged and retried: the loop never ends while the consumer runs. Errors are
  counted in `cadenza_scheduler_fetch_errors_total`.

aiokafka's fetcher still serves everything else (the changelog during recovery) and resets
positions: `leave_to_intake` has it skip the input topic's partitions that have a valid
position. Only at `read_uncommitted` (Faust's at-least-once): at `read_committed` aborted
transactions would have to be filtered, so the intake is not used (`supported`).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple, cast

from aiokafka import errors as kafka_errors
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, Fetcher, OffsetResetStrategy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from faust.types.tuples import ConsumerMessage

from cadenza_scheduler.fetch import DirectFetchRequest
from cadenza_scheduler.metrics import Metrics

log = logging.getLogger(__name__)

IDLE_S = 0.02  # how often to look again when no partition is fetchable (rebalance, pause)


class Fetch(NamedTuple):
    """One request to one broker: the partitions asked for, at which offsets, in which
    assignment (aiokafka's) and consumer generation (Faust's)."""

    node_id: int
    offsets: dict[TopicPartition, int]
    generation: int
    assignment: Any


def supported(kafka_consumer: Any) -> bool:
    """Whether the intake can fetch for this started aiokafka consumer (read_uncommitted
    only; its fetcher holds the level as aiokafka's number)."""
    return bool(kafka_consumer._fetcher._isolation_level == READ_UNCOMMITTED)


class _FetcherWithoutIntake(Fetcher):  # type: ignore[misc]
    """aiokafka's fetcher, leaving the intake's partitions that have a position to it."""

    intake_topic: str = ""

    def _get_actions_per_node(self, assignment: Any) -> Any:
        return super()._get_actions_per_node(_Without(assignment, self.intake_topic))


class _Without:
    """An assignment without `topic`'s partitions that have a valid position (the part of
    it `Fetcher._get_actions_per_node` reads: `tps` and `state_value`)."""

    def __init__(self, assignment: Any, topic: str) -> None:
        self._assignment = assignment
        self.tps = [
            tp
            for tp in assignment.tps
            if tp.topic != topic or not assignment.state_value(tp).has_valid_position
        ]

    def state_value(self, tp: TopicPartition) -> Any:
        return self._assignment.state_value(tp)


def leave_to_intake(kafka_consumer: Any, topic: str) -> None:
    """Have the started aiokafka consumer's fetcher leave `topic` to an `Intake`.

    Called right after the consumer started, before it subscribed: its fetcher has not sent
    a fetch for any partition yet."""
    fetcher = kafka_consumer._fetcher
    fetcher.__class__ = _FetcherWithoutIntake
    fetcher.intake_topic = topic


class Intake:
    """Fetches the input topic for the agent's inbox (see the module docstring)."""

    def __init__(self, topic: str, metrics: Metrics) -> None:
        self.topic = topic
        self.metrics = metrics
        self.enabled = False  # set once the consumer's fetcher leaves the topic to it
        self.unreadable: set[int] = set()  # brokers whose last answer had unreadable records
        # partitions a broker's loop is fetching or handing over: no other loop takes them
        # (a leader that moved meanwhile), so a partition's records reach the inbox in order
        self.taking: set[TopicPartition] = set()

    async def run(self, consumer: Any, take: Any) -> None:
        """Fetch and hand over records until the consumer stops (`take(consumer, tp,
        message)` hands one over: `app._take`).

        Each broker that leads active partitions is served by a loop of its own
        (`_serve`): a broker with nothing new holds its fetch up to the fetch wait, and
        must not hold back what another one has."""
        kafka = consumer._thread._ensure_consumer()
        loops: dict[int, asyncio.Task[None]] = {}
        try:
            while not consumer._stopped.is_set():
                try:
                    await self._supervise(kafka, consumer, take, loops)
                except Exception as exc:
                    await self._retry_later(kafka, exc)
        finally:
            for loop in loops.values():
                loop.cancel()
            await asyncio.gather(*loops.values(), return_exceptions=True)

    async def _supervise(
        self, kafka: Any, consumer: Any, take: Any, loops: dict[int, asyncio.Task[None]]
    ) -> None:
        """Start a loop for each broker that leads active partitions and has none running;
        then wait a little (or for the flow to resume)."""
        if not consumer.flow_active:
            await consumer.wait(consumer.can_resume_flow)
            return
        for node_id in self._plan(kafka, consumer, consumer.app.consumer_generation_id):
            if node_id not in loops or loops[node_id].done():
                loops[node_id] = asyncio.ensure_future(self._serve(kafka, consumer, take, node_id))
        await asyncio.sleep(IDLE_S)

    async def _serve(self, kafka: Any, consumer: Any, take: Any, node_id: int) -> None:
        """Fetch from one broker until it leads none of the active partitions or the flow
        stops (`run` starts it again when it does)."""
        while not consumer._stopped.is_set():
            try:
                if not await self._round(kafka, consumer, take, node_id):
                    return
            except Exception as exc:
                # never end quietly: the agent would wait for records forever
                await self._retry_later(kafka, exc)

    async def _retry_later(self, kafka: Any, exc: Exception) -> None:
        """A round (or the supervisor) failed: log and count it, wait the retry backoff."""
        log.error("fetching the input topic failed; retrying", exc_info=exc)
        self.metrics.fetch_errors.labels(type(exc).__name__).inc()
        await asyncio.sleep(kafka._fetcher._retry_backoff)

    async def _round(self, kafka: Any, consumer: Any, take: Any, node_id: int) -> bool:
        """One fetch from the broker, its records handed over; False when there is none
        to send (the flow stopped, or the broker leads none of the active partitions)."""
        app = consumer.app
        if not consumer.flow_active:
            return False
        fetch = self._plan(kafka, consumer, app.consumer_generation_id).get(node_id)
        if fetch is None:
            return False
        self.taking.update(fetch.offsets)
        try:
            for message in await self._fetch(kafka, fetch):
                if not consumer.flow_active or app.consumer_generation_id != fetch.generation:
                    break  # the rebalance seeks back to the committed offsets
                await take(consumer, message.tp, message)
        finally:
            self.taking.difference_update(fetch.offsets)
        if node_id in self.unreadable:  # a partition's records could not be read
            self.unreadable.discard(node_id)
            await asyncio.sleep(kafka._fetcher._retry_backoff)  # not again at once
        return True

    def _plan(self, kafka: Any, consumer: Any, generation: int) -> dict[int, Fetch]:
        """The requests to send now, by broker: Faust's active partitions of the topic."""
        subscription = kafka._subscription.subscription
        assignment = None if subscription is None else subscription.assignment
        if assignment is None or not assignment.active:
            return {}
        active = consumer._get_active_partitions()
        cluster = kafka._client.cluster
        by_node: dict[int, dict[TopicPartition, int]] = collections.defaultdict(dict)
        for tp in assignment.tps:
            if tp.topic != self.topic or tp not in active or tp in self.taking:
                continue
            state = assignment.state_value(tp)
            if not state.has_valid_position:
                continue  # aiokafka's fetcher resets it
            node_id = cluster.leader_for_partition(tp)
            if node_id is None or node_id == -1:
                kafka._client.force_metadata_update()
                continue
            by_node[node_id][tp] = state.position
        return {
            node_id: Fetch(node_id, offsets, generation, assignment)
            for node_id, offsets in by_node.items()
        }

    async def _fetch(self, kafka: Any, fetch: Fetch) -> Iterator[Any]:
        fetcher = kafka._fetcher
        by_topic: dict[str, list[tuple[int, int, int]]] = collections.defaultdict(list)
        for tp, offset in fetch.offsets.items():
            by_topic[tp.topic].append((tp.partition, offset, fetcher._max_partition_fetch_bytes))
        request = DirectFetchRequest(
            fetcher._fetch_max_wait_ms,
            fetcher._fetch_min_bytes,
            fetcher._fetch_max_bytes,
            READ_UNCOMMITTED,
            list(by_topic.items()),
            rack_id=fetcher._client_rack or "",
        )
        self.metrics.fetch_requests.inc()
        try:
            response = await kafka._client.send(fetch.node_id, request)
        except kafka_errors.KafkaError as exc:
            log.error("fetch from broker %s failed: %s", fetch.node_id, exc)
            self.metrics.fetch_errors.labels(type(exc).__name__).inc()
            await asyncio.sleep(fetcher._retry_backoff)
            return iter(())
        if not fetch.assignment.active:
            return iter(())  # the assignment changed while the request was out
        return self._received(kafka, fetch, response.topics)

    def _received(self, kafka: Any, fetch: Fetch, topics: Iterable[Any]) -> Iterator[Any]:
        """The answer's records as Faust's messages, made as they are handed over (one
        record batch in memory at a time, as aiokafka's fetcher reads them); the
        partitions' positions have moved past them when this returns."""
        assignment = fetch.assignment
        partitions_read: list[Iterator[Any]] = []
        now_ms = int(time.time() * 1000)
        for topic, partitions in topics:
            for partition, error_code, highwater, *data in partitions:
                tp = TopicPartition(topic, partition)
                offset = fetch.offsets.get(tp)
                if offset is None:
                    continue  # not asked for
                state = assignment.state_value(tp)
                if not state.has_valid_position or state.position != offset:
                    continue  # seeked while the request was out: the seek wins
                error = kafka_errors.for_code(error_code)
                if error is not kafka_errors.NoError:
                    self._failed(kafka, state, tp, error)
                    continue
                state.highwater, state.timestamp = highwater, now_ms
                state.lso = data[0] if len(data) > 1 else None  # v4 and later
                batches = self._batches_or_none(kafka, state, fetch, tp, data[-1])
                if batches:
                    partitions_read.append(_messages(tp, batches, offset, fetch.generation))
        return itertools.chain.from_iterable(partitions_read)

    def _batches_or_none(
        self, kafka: Any, state: Any, fetch: Fetch, tp: TopicPartition, raw: Any
    ) -> list[Any]:
        """`_batches`, or none when they cannot be read (a corrupt batch, no whole batch):
        the partition's position stays, so they are fetched again after the retry
        backoff; the other partitions go on."""
        offset = fetch.offsets[tp]
        try:
            return self._batches(kafka, state, tp, offset, raw)
        except Exception as exc:
            log.exception("records of %s at %d not read; fetching them again", tp, offset)
            self.metrics.fetch_errors.labels(type(exc).__name__).inc()
            self.unreadable.add(fetch.node_id)
            return []

    @staticmethod
    def _batches(kafka: Any, state: Any, tp: TopicPartition, offset: int, raw: Any) -> list[Any]:
        """The partition's record batches (CRCs checked, control batches left out); moves
        the partition's position past them."""
        if not raw:
            return []
        records = MemoryRecords(raw)
        check_crcs = kafka._fetcher._check_crcs
        batches: list[Any] = []
        next_offset = offset
        while records.has_next():
            batch = records.next_batch()
            if check_crcs and not batch.validate_crc():
                raise kafka_errors.CorruptRecordException(f"Invalid CRC - {tp}")
            if not batch.is_control_batch:
                batches.append(batch)
            next_offset = batch.next_offset
        if next_offset == offset and records.size_in_bytes() > 0:
            # A broker answering fetch v3 or later never does this (KIP-74). Skipping the
            # record, as aiokafka's fetcher does, would lose it: it stays, loudly.
            raise kafka_errors.KafkaError(f"no whole record batch of {tp} at {offset}")
        state.consumed_to(next_offset)
        return batches

    def _failed(self, kafka: Any, state: Any, tp: TopicPartition, error: type) -> None:
        """A partition the broker answered with an error (aiokafka's fetcher's handling)."""
        self.metrics.fetch_errors.labels(error.__name__).inc()
        if error in (
            kafka_errors.NotLeaderForPartitionError,
            kafka_errors.UnknownTopicOrPartitionError,
        ):
            kafka._client.force_metadata_update()
        elif error is kafka_errors.OffsetOutOfRangeError and _resets(kafka):
            log.info("fetch offset %s of %s out of range, resetting", state.position, tp)
            state.await_reset(kafka._fetcher._default_reset_strategy)
        else:
            log.warning("unexpected error fetching %s: %s", tp, error.__name__)


def _resets(kafka: Any) -> bool:
    """Whether the consumer resets an offset out of range (with none, it is only logged)."""
    return bool(kafka._fetcher._default_reset_strategy != OffsetResetStrategy.NONE)


def _messages(
    tp: TopicPartition, batches: Iterable[Any], offset: int, generation: int
) -> Iterator[Any]:
    """The batches' records from `offset` on (a batch may start before it)."""
    for batch in batches:
        for record in batch:
            if record.offset >= offset:
                yield _message(tp, record, generation)


def _message(tp: TopicPartition, record: Any, generation: int) -> Any:
    """A fetched record as Faust's `ConsumerMessage` (what `Consumer._to_message` makes)."""
    timestamp = record.timestamp
    key, value = record.key, record.value
    return ConsumerMessage(
        tp.topic,
        tp.partition,
        record.offset,
        cast(float, None if timestamp is None else timestamp / 1000.0),  # as Faust's
        record.timestamp_type,
        cast(Any, tuple(record.headers)),  # as aiokafka's records carry them
        key,
        value,
        record.checksum,
        -1 if key is None else len(key),
        -1 if value is None else len(value),
        tp,
        generation_id=generation,
    )
