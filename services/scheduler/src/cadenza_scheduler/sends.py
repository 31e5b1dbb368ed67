"""The scheduler's producer: changelog writes, emits and dead letters through librdkafka.

Faust's producer is aiokafka, pure Python on the event loop: building each produce
request, the sender task, and reading each acknowledgement ran on the one thread that
also applies every record. `python -m bench kafka_floor` measures the scheduler's I/O
with no logic at 1,000 records/s: aiokafka ~540-590 us of the main thread a record,
the same sends through confluent-kafka (librdkafka, C, with threads of its own) ~300
(the consumer still aiokafka's). So everything the shell sends goes through `Sends`;
Faust's producer stays started but idle (the table's changelog is written here too,
see `app.DurableTable`).

Guarantees kept from the aiokafka path: acks=all, idempotence (so a partition's records
land once each and in the order given, across retries), explicit partitions as
`agents.partition_of` computes them (Java's murmur2), and for a record without one
librdkafka's `murmur2_random` partitioner, which is the same function.

Delivery reports: librdkafka hands them out in `poll()`. A thread of ours (`deliveries`)
waits in `poll()` (without the GIL), runs the callbacks, and resolves each send's future
on the event loop with one `call_soon_threadsafe` per poll. The loop thread only calls
`produce()`, which queues the record and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import confluent_kafka

from cadenza_common.kafka import MAX_RECORD_BYTES
from cadenza_common.settings import KafkaSettings
from cadenza_scheduler.agents import Outgoing

_Settled = list[tuple[asyncio.Future[None], BaseException | None]]


class SendError(Exception):
    """A record was not delivered (the broker refused it, or librdkafka's queue is full)."""


class Sends:
    """Send `Outgoing` records with librdkafka; `send` returns futures the loop awaits.

    Started on the first `send` (from the event loop that will await the futures) and
    closed with `close()`, which waits for what is queued to be delivered.
    """

    def __init__(self, kafka: KafkaSettings, *, poll_s: float = 0.1) -> None:
        self.config: dict[str, Any] = {
            "bootstrap.servers": kafka.bootstrap_servers,
            "client.id": kafka.client_id,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",  # Java's (and aiokafka's) for keyed records
            "message.max.bytes": MAX_RECORD_BYTES + 64 * 1024,  # record overhead on top
            "linger.ms": 0,  # a batch's records are produced together, then awaited
            "socket.nagle.disable": True,
        }
        self.poll_s = poll_s
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._settled: _Settled = []  # filled by callbacks, in the deliveries thread only

    def send(self, records: Sequence[Outgoing]) -> list[asyncio.Future[None]]:
        """Queue `records` in order; one future for all of them (for each, in a list).

        The future resolves once the broker acknowledged every record, or fails with
        `SendError` at the first one it refused. Call from the event loop.
        """
        if self._producer is None:
            if self._closing:
                raise SendError("the scheduler's producer is closed")
            self._start()
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        if not records:
            done.set_result(None)
            return []
        left = len(records)
        settled = self._settled_append

        def delivered(error: Any, _message: Any) -> None:
            nonlocal left
            left -= 1
            if error is not None:
                settled((done, SendError(str(error))))
            elif left == 0:
                settled((done, None))

        produce = self._producer.produce
        try:
            for record in records:
                produce(
                    record.topic,
                    record.value,
                    record.key,
                    -1 if record.partition is None else record.partition,  # -1: partitioner
                    on_delivery=delivered,
                    headers=list(record.headers),
                )
        except (BufferError, confluent_kafka.KafkaException) as exc:
            # the records queued before it are still sent; the caller retries all of them
            done.set_exception(SendError(f"not queued: {exc}"))
        return [done] * len(records)

    def _settled_append(self, item: tuple[asyncio.Future[None], BaseException | None]) -> None:
        self._settled.append(item)

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = confluent_kafka.Producer(self.config)
        self._running = True
        self._closed = self._loop.create_future()
        self._thread = threading.Thread(target=self._deliveries, name="deliveries", daemon=True)
        self._thread.start()

    def _deliveries(self) -> None:
        """The thread: serve delivery reports until closed, then deliver what is left."""
        producer = self._producer
        while self._running:
            producer.poll(self.poll_s)
            self._hand_over()
        producer.flush(10.0)
        self._hand_over()
        assert self._closed is not None
        self._call(_settle, [(self._closed, None)])

    def _hand_over(self) -> None:
        if self._settled:
            settled, self._settled = self._settled, []
            self._call(_settle, settled)

    def _call(self, fun: Any, settled: _Settled) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fun, settled)

    async def close(self) -> None:
        """Deliver what is queued (for up to 10 s) and stop the deliveries thread."""
        self._closing = True
        if self._producer is None or self._closed is None:
            return
        self._running = False
        await self._closed
        self._producer = None


def _settle(settled: _Settled) -> None:
    for done, error in settled:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
