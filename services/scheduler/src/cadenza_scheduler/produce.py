"""Produce requests the scheduler builds itself, on the Kafka client Faust's producer started.

aiokafka's producer path for a batch's records (a builder a partition, the accumulator,
the sender task, and its generic request encoder) took ~1.2 ms of the main thread to
flush 8 executions' records (40 records over ~20 partitions) in a standalone loop against
the local broker; building the partitions' record batches here (aiokafka's C builder)
and encoding the request directly takes ~0.45 ms (bench/README.md, scheduler session 19).

What it keeps from aiokafka's sender:

- **Order.** One request a broker is in flight at a time; records handed over meanwhile
  go in the next one. A partition's batches therefore reach the broker in the order they
  were handed over, also when one is retried (a retried batch goes before any later
  batch of its partition).
- **Retries.** Errors Kafka marks retriable (a lost connection, a moved leader, a
  timeout) are retried after `retry_backoff_s`, refreshing the metadata when it is
  stale, until `delivery_timeout_s` after the batch was handed over; then, and at once
  for any other error, the batch's future fails with the error.

It is not idempotent, as the scheduler's aiokafka producer is not (at least once: see the
package docstring). Records are sent with acks=all unless told otherwise; acks=0 (no
response) is not offered.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import errors as kafka_errors
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import RecordMetadata, TopicPartition

from cadenza_scheduler import wire
from cadenza_scheduler.agents import Outgoing
from cadenza_scheduler.metrics import Metrics

log = logging.getLogger(__name__)

_MAGIC = 2  # the record batch format of Kafka >= 0.11
_NO_PRODUCER = -1  # no producer id, epoch or sequence: not idempotent


@dataclass(eq=False)
class _Batch:
    """One partition's records for one request; its future resolves once they are stored."""

    topic: str
    partition: int
    future: asyncio.Future[RecordMetadata]
    builder: Any
    created: float = field(default_factory=time.monotonic)
    count: int = 0
    data: bytearray | None = None  # built once taken into a request (no more appends)

    def append(self, record: Outgoing) -> bool:
        """Add `record`; False when the batch is full (an empty batch takes any record)."""
        if self.data is not None:
            return False
        # aiokafka's C builder takes a list only
        headers = record.headers if isinstance(record.headers, list) else list(record.headers)
        if self.builder.append(self.count, None, record.key, record.value, headers) is None:
            return False
        self.count += 1
        return True

    def buffer(self) -> bytearray:
        if self.data is None:
            self.data = self.builder.build()  # the builder's own buffer: nothing appends now
        return self.data

    def done(self, offset: int) -> None:
        if not self.future.done():
            tp = TopicPartition(self.topic, self.partition)
            stored = RecordMetadata(self.topic, self.partition, tp, offset, -1, 0, -1)
            self.future.set_result(stored)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def _encode_produce(self: Any) -> bytes:
    """ProduceRequest v3-v8's body (they share one layout), without the generic encoder."""
    parts = [
        wire.encode_string(self.transactional_id),
        struct.pack(">hii", self.required_acks, self.timeout, len(self.topics)),
    ]
    for topic, partitions in self.topics:
        parts.append(wire.encode_string(topic) + wire.INT32.pack(len(partitions)))
        for partition, data in partitions:
            parts.append(struct.pack(">ii", partition, len(data)))
            parts.append(data)
    return b"".join(parts)


_RESPONSE_PARTITION = struct.Struct(">ihqqq")  # partition, error, offset, timestamp, log start


def _produce_partition(buf: bytes, at: int) -> tuple[tuple[Any, ...], int]:
    return _RESPONSE_PARTITION.unpack_from(buf, at), at + _RESPONSE_PARTITION.size


def _produce_topic(buf: bytes, at: int) -> tuple[tuple[Any, ...], int]:
    """One topic of a ProduceResponse v5-v7 at `at` (its partitions), and where the next starts."""
    topic, at = wire.read_string(buf, at)
    partitions, at = wire.read_array(buf, at, _produce_partition)
    return (topic, partitions), at


def _produce_response(response_class: Any, buf: bytes, at: int) -> tuple[Any, int]:
    topics, at = wire.read_array(buf, at, _produce_topic)
    (throttle,) = wire.INT32.unpack_from(buf, at)
    return response_class(topics, throttle), at + wire.INT32.size


def _decode_produce(response_class: Any, data: io.BytesIO) -> Any:
    """A ProduceResponse v5-v7 from `data` (read from its position), as aiokafka decodes it."""
    parse = functools.partial(_produce_response, response_class)
    return wire.decode(data, parse, "a produce response")


def _no_leader(cluster: Any, batch: _Batch) -> Exception:
    """Why `batch` has nowhere to go: its partition is unknown, or has no leader now."""
    partitions = cluster.partitions_for_topic(batch.topic)
    unknown = partitions is None or batch.partition not in partitions
    error: type[Exception] = (
        kafka_errors.UnknownTopicOrPartitionError
        if unknown
        else kafka_errors.LeaderNotAvailableError
    )
    return error(f"{batch.topic}[{batch.partition}]")


def _direct_members(request_struct_class: Any) -> dict[str, Any]:
    """Encoding directly, and decoding the response directly where its layout is v5-v7's
    (aiokafka offers up to v7)."""
    members: dict[str, Any] = {"encode": _encode_produce}
    if 5 <= request_struct_class.API_VERSION <= 7:
        response = request_struct_class.RESPONSE_TYPE
        decode = staticmethod(functools.partial(_decode_produce, response))
        members["RESPONSE_TYPE"] = type(f"Direct{response.__name__}", (), {"decode": decode})
    return members


class _Request(ProduceRequest):  # type: ignore[misc]
    """aiokafka's ProduceRequest (it picks the version the broker speaks), encoded directly
    for the versions whose layout `_encode_produce` writes, its response decoded directly
    for v5-v7 (`_decode_produce`: ~9 us against ~56 for a 22-partition answer)."""

    def build(self, request_struct_class: Any) -> Any:
        built = super().build(request_struct_class)
        if 3 <= request_struct_class.API_VERSION <= 8:  # else another layout: aiokafka's
            built.__class__ = wire.direct_class(request_struct_class, _direct_members)
        return built


class Producer:
    """Sends records to given partitions in as few requests as the brokers allow.

    `send(records)` returns at once, with a future a record (its batch's, shared by the
    records of a partition that went out together) that resolves to the batch's
    `RecordMetadata` once the broker stored it. Everything handed over before the sending
    task next runs goes out in one request a broker: the shell's state writes and emits
    of a batch, handed over by two tasks in one loop turn, share a request.
    """

    def __init__(
        self,
        client: Callable[[], Any],
        *,
        acks: int = -1,
        max_batch_bytes: int = 256 * 1024,
        request_timeout_ms: int = 30_000,
        retry_backoff_s: float = 0.1,
        delivery_timeout_s: float = 120.0,
        metrics: Metrics | None = None,
    ) -> None:
        if acks == 0:
            raise ValueError("acks=0 is not offered: the shell waits for every write")
        self._client = client  # aiokafka's client, once the producer started
        self.acks = acks
        self.max_batch_bytes = max_batch_bytes
        self.request_timeout_ms = request_timeout_ms
        self.retry_backoff_s = retry_backoff_s
        self.delivery_timeout_s = delivery_timeout_s
        self.metrics = metrics or Metrics()
        # (topic, partition) -> its batches, oldest first; the last one takes new records
        self._pending: dict[tuple[str, int], list[_Batch]] = {}
        self._task: asyncio.Task[None] | None = None
        self.requests = 0  # produce requests sent (a figure for tests and benches)

    def send(self, records: Iterable[Outgoing]) -> list[asyncio.Future[RecordMetadata]]:
        """Hand `records` (each with a partition) over; see the class docstring."""
        loop = asyncio.get_running_loop()
        pending = self._pending
        acks = []
        for record in records:
            if record.partition is None:
                raise ValueError(f"a record for {record.topic} has no partition")
            tp = (record.topic, record.partition)
            queue = pending.get(tp)
            if queue is None:
                queue = pending[tp] = [self._batch(tp, loop)]
            batch = queue[-1]
            if not batch.append(record):
                batch = self._batch(tp, loop)
                queue.append(batch)
                batch.append(record)
            acks.append(batch.future)
        if acks and (self._task is None or self._task.done()):
            self._task = loop.create_task(self._run())
        return acks

    def _batch(self, tp: tuple[str, int], loop: asyncio.AbstractEventLoop) -> _Batch:
        builder = DefaultRecordBatchBuilder(
            _MAGIC, 0, 0, _NO_PRODUCER, _NO_PRODUCER, _NO_PRODUCER, self.max_batch_bytes
        )
        return _Batch(tp[0], tp[1], loop.create_future(), builder)

    async def _run(self) -> None:
        """Send rounds (the oldest batch of every partition) until nothing is pending."""
        try:
            while self._pending:
                batches = [queue[0] for queue in self._pending.values()]
                retry = await self._round(batches)
                for batch in batches:
                    if batch not in retry:
                        queue = self._pending[(batch.topic, batch.partition)]
                        queue.pop(0)
                        if not queue:
                            del self._pending[(batch.topic, batch.partition)]
                if retry:
                    await asyncio.sleep(self.retry_backoff_s)
        except BaseException as exc:
            # cancelled (shutdown) or a bug: nothing pending may wait forever
            if not isinstance(exc, asyncio.CancelledError):
                log.exception("the producer's sending task failed")
            for queue in self._pending.values():
                for batch in queue:
                    batch.fail(kafka_errors.KafkaError(f"producer stopped: {exc!r}"))
            self._pending.clear()
            raise

    async def _round(self, batches: Sequence[_Batch]) -> set[_Batch]:
        """One request a broker for `batches`; return the ones to retry."""
        client = self._client()
        cluster = client.cluster

        def leaders() -> list[int | None]:
            nodes = (
                cluster.leader_for_partition(TopicPartition(batch.topic, batch.partition))
                for batch in batches
            )
            return [None if node is None or node == -1 else int(node) for node in nodes]

        nodes = leaders()
        if None in nodes:
            # a topic not seen yet (or a leader moved): one metadata refresh, then retries
            for batch, node in zip(batches, nodes, strict=True):
                if node is None:
                    client.add_topic(batch.topic)
            await client.force_metadata_update()
            nodes = leaders()
        by_node: dict[int, list[_Batch]] = {}
        retry: set[_Batch] = set()
        for batch, node in zip(batches, nodes, strict=True):
            if node is None:
                self._retry_or_fail(batch, _no_leader(cluster, batch), retry)
            else:
                by_node.setdefault(node, []).append(batch)
        outcomes = await asyncio.gather(
            *(self._request(client, node, node_batches) for node, node_batches in by_node.items())
        )
        for failed in outcomes:
            retry.update(failed)
        return retry

    async def _request(self, client: Any, node: int, batches: list[_Batch]) -> set[_Batch]:
        """Send one request to `node`; settle the batches it stored; return those to retry."""
        topics: dict[str, list[tuple[int, bytearray]]] = {}
        by_tp: dict[tuple[str, int], _Batch] = {}
        for batch in batches:
            topics.setdefault(batch.topic, []).append((batch.partition, batch.buffer()))
            by_tp[(batch.topic, batch.partition)] = batch
        request = _Request(None, self.acks, self.request_timeout_ms, list(topics.items()))
        retry: set[_Batch] = set()
        self.requests += 1
        self.metrics.produce_requests.inc()
        started = time.perf_counter()
        try:
            response = await client.send(node, request)
        except kafka_errors.KafkaError as exc:
            if getattr(exc, "invalid_metadata", False):
                client.force_metadata_update()
            for batch in batches:
                self._retry_or_fail(batch, exc, retry)
            return retry
        self.metrics.produce_seconds.observe(time.perf_counter() - started)
        if self._settle(response, by_tp, retry):
            client.force_metadata_update()
        return retry

    def _settle(
        self, response: Any, batches: dict[tuple[str, int], _Batch], retry: set[_Batch]
    ) -> bool:
        """Resolve or fail each batch by its partition's answer, or mark it to retry; return
        whether an answer said the metadata is stale."""
        stale = False
        for topic, partitions in response.topics:
            for info in partitions:
                partition, code, offset = info[0], info[1], info[2]
                batch = batches.pop((topic, partition), None)
                if batch is None:
                    continue
                error = kafka_errors.for_code(code)
                if error is kafka_errors.NoError:
                    batch.done(offset)
                    continue
                stale = stale or getattr(error, "invalid_metadata", False)
                self._retry_or_fail(batch, error(), retry)
        for batch in batches.values():  # not in the response: try again
            self._retry_or_fail(batch, kafka_errors.UnknownError("no response"), retry)
        return stale

    def _retry_or_fail(self, batch: _Batch, error: BaseException, retry: set[_Batch]) -> None:
        name = type(error).__name__
        fields = {"topic": batch.topic, "partition": batch.partition, "error": name}
        if getattr(error, "retriable", False) and (
            time.monotonic() - batch.created < self.delivery_timeout_s
        ):
            self.metrics.produce_errors.labels(name, "retried").inc()
            log.warning("produce failed, retrying", extra=fields)
            retry.add(batch)
        else:
            self.metrics.produce_errors.labels(name, "failed").inc()
            log.error("produce failed: %r", error, extra={**fields, "records": batch.count})
            batch.fail(error)


__all__ = ["Producer"]
