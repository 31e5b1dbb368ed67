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

Acknowledgements without a callback a record: confluent-kafka runs each delivery report's
callback in the thread that polls, taking the GIL for each one; with the event loop busy
every take waited for it to let go (up to the switch interval), so a batch's ~30 reports
took longer than its round trip. Here librdkafka reports only failures
(`delivery.report.only.error`), and a thread of ours (`deliveries`) waits in `flush()`,
without the GIL, until everything queued is acknowledged: every send queued before that
wait began is then delivered, and their futures are resolved on the loop with one
`call_soon_threadsafe`. A failed record's callback fails its send's future first. Sends
come one batch at a time from the agent (and rarely from the timer task), so the queue
empties between them and no send waits on much more than itself.
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

    def __init__(self, kafka: KafkaSettings, *, wait_s: float = 0.5) -> None:
        self.config: dict[str, Any] = {
            "bootstrap.servers": kafka.bootstrap_servers,
            "client.id": kafka.client_id,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",  # Java's (and aiokafka's) for keyed records
            "message.max.bytes": MAX_RECORD_BYTES + 64 * 1024,  # record overhead on top
            "linger.ms": 0,  # a batch's records are produced together, then awaited
            "socket.nagle.disable": True,
            "delivery.report.only.error": True,  # success: the queue emptied (see above)
            "message.timeout.ms": 30_000,  # then the send fails and the shell retries it
        }
        self.wait_s = wait_s
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._closing = False
        self._closed: asyncio.Future[None] | None = None
        self._queued: list[asyncio.Future[None]] = []  # sends not yet known delivered
        self._queue_lock = threading.Lock()  # appended on the loop, taken by the thread
        self._sent = threading.Event()  # set by `send`: the thread has something to wait for
        self._settled: _Settled = []  # failures, from callbacks in the deliveries thread

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

        def refused(error: Any, _message: Any) -> None:  # only called for a failure
            self._settled.append((done, SendError(str(error))))  # in the deliveries thread

        produce = self._producer.produce
        try:
            for record in records:
                produce(
                    record.topic,
                    record.value,
                    record.key,
                    -1 if record.partition is None else record.partition,  # -1: partitioner
                    on_delivery=refused,
                    headers=list(record.headers),
                )
        except (BufferError, confluent_kafka.KafkaException) as exc:
            # the records queued before it are still sent; the caller retries all of them
            done.set_exception(SendError(f"not queued: {exc}"))
        with self._queue_lock:
            self._queued.append(done)  # after its records: see `_deliveries`
        self._sent.set()
        return [done] * len(records)

    def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._producer = confluent_kafka.Producer(self.config)
        self._running = True
        self._closed = self._loop.create_future()
        self._thread = threading.Thread(target=self._deliveries, name="deliveries", daemon=True)
        self._thread.start()

    def _deliveries(self) -> None:
        """The thread: resolve sends as the queue empties, until closed; then deliver the
        rest (for up to 10 s) and report that it is done."""
        producer = self._producer
        waiting: list[asyncio.Future[None]] = []
        while self._running or self._queued or waiting:
            if not (self._queued or waiting):
                self._sent.wait(self.wait_s)
                self._sent.clear()
                producer.poll(0)  # failures reported meanwhile
                continue
            # Every send taken here queued its records before `flush` starts waiting.
            with self._queue_lock:
                waiting += self._queued
                self._queued = []
            left = producer.flush(self.wait_s if self._running else 10.0)
            done: _Settled = []
            if not left:
                done = [(future, None) for future in waiting]
            elif not self._running:  # closing, and the broker did not take it in time
                lost = SendError(f"{left} records not delivered before the producer closed")
                done = [(future, lost) for future in waiting]
            if done:
                waiting = []
            settled, self._settled = self._settled, []
            if settled or done:
                self._call(settled + done)  # failures first: a failed send stays failed
        assert self._closed is not None
        self._call([(self._closed, None)])

    def _call(self, settled: _Settled) -> None:
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(_settle, settled)

    async def close(self) -> None:
        """Deliver what is queued (for up to 10 s) and stop the deliveries thread."""
        self._closing = True
        if self._producer is None or self._closed is None:
            return
        self._running = False
        self._sent.set()
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
