"""The floor under `bench scheduler`: the scheduler's Kafka I/O with no logic at all.

A child process (so its CPU is counted alone) echoes what the scheduler does on the wire
for each batch of input records, and nothing else: it takes the records fetched so far
from a 12-partition input topic, writes one `STATE_BYTES` record per input to a
changelog-like topic and waits for the acknowledgements (the scheduler's `persist`), then
writes two `EVENT_BYTES` records per input to two event topics and waits again (its
emits: the StepReady and the history event). No decoding, no decide(), no Faust.

The bench process feeds the input topic at `CADENZA_BENCH_FLOOR_RATE` records/s (1,000,
the scheduler's paced target) for `CADENZA_BENCH_SECONDS` (20), open loop, with the same
producer for every client. Each row is one Kafka client doing the echo:

- `aiokafka`: the client Faust (so the scheduler) uses, on uvloop, with the scheduler's
  fetch wait, acks=all and idempotence;
- `aiokafka+librdkafka-producer`: aiokafka's consumer (as Faust's), the sends through a
  confluent-kafka producer whose delivery reports a thread of its own hands to the loop;
- `confluent-kafka` (librdkafka, C; its I/O runs in its own threads): the same loop with
  blocking `flush()` for the acknowledgements.

Figures: records/s, the process's CPU per record (all threads) and its main thread's,
records per batch, and latency from the feeder's record timestamp to the echo's second
acknowledgement. They are taken after the first `WARM_UP_S` seconds of records.

Needs a Kafka broker: `CADENZA_BENCH_KAFKA` (or `CADENZA_TEST_KAFKA`), default 127.0.0.1:9092.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from bench.report import percentile, report
from cadenza_common.kafka import delete_prefixed_topics, ensure_topics, producer
from cadenza_common.settings import KafkaSettings

STATE_BYTES = 7_000  # a state record of the scheduler bench's chain (bench/README.md)
EVENT_BYTES = 600
WARM_UP_S = 3.0
STATE, EVENT = b"s" * STATE_BYTES, b"e" * EVENT_BYTES  # what the echo writes
IDLE_END_S = 2.0  # the echo stops after this long without records, once it had some
CLIENTS = ("aiokafka", "aiokafka+librdkafka-producer", "confluent-kafka")


def _names(prefix: str) -> dict[str, str]:
    return {t: f"{prefix}{t}" for t in ("in", "changelog", "ready", "history")}


class Tally:
    """The echo's measurements, from its first record after the warm-up."""

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.started = False
        self.cpu = self.main = self.wall = 0.0
        self.end = (0.0, 0.0, 0.0)  # CPU, main thread, wall: after the last batch
        self.batches = 0
        self.latencies: list[float] = []

    def batch(self, timestamps_ms: list[float]) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        if not self.started:
            if now - self.first_at < WARM_UP_S:
                return
            self.started = True
            self.cpu, self.main, self.wall = time.process_time(), time.thread_time(), now
        acked = time.time()
        self.batches += 1
        self.latencies.extend(acked - ts / 1000 for ts in timestamps_ms)
        self.end = (time.process_time(), time.thread_time(), time.perf_counter())

    def result(self, client: str) -> dict[str, Any]:
        n = max(1, len(self.latencies))
        cpu, main, end = self.end
        wall = max(1e-9, end - self.wall)
        return {
            "client": client,
            "records": len(self.latencies),
            "records_per_s": round(len(self.latencies) / wall, 1),
            "cpu_us": round((cpu - self.cpu) / n * 1e6),
            "cpu_main_us": round((main - self.main) / n * 1e6),
            "batch_records": round(len(self.latencies) / max(1, self.batches), 1),
            "p50_ms": round(percentile(self.latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 2),
        }


async def _aiokafka_consumer(kafka: KafkaSettings, names: dict[str, str], group: str) -> Any:
    """The echo's aiokafka consumer of the input topic, started; says "ready" to the bench."""
    from aiokafka import AIOKafkaConsumer

    cons = AIOKafkaConsumer(
        names["in"],
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
    )
    await cons.start()
    print("ready", flush=True)
    return cons


async def _fetched(cons: Any, tally: Tally) -> AsyncIterator[list[Any]]:
    """The records fetched so far, a list at a time, until the feed has stopped."""
    last = time.perf_counter()
    while tally.first_at is None or time.perf_counter() - last < IDLE_END_S:
        fetched = await cons.getmany(timeout_ms=100, max_records=500)
        records = [r for part in fetched.values() for r in part]
        if records:
            last = time.perf_counter()
            yield records


async def _echo_aiokafka(kafka: KafkaSettings, names: dict[str, str], group: str) -> Tally:
    tally = Tally()
    cons = await _aiokafka_consumer(kafka, names, group)
    try:
        async with producer(kafka, linger_ms=0, max_batch_size=256 * 1024) as prod:
            async for records in _fetched(cons, tally):
                sends = [await prod.send(names["changelog"], STATE, key=r.key) for r in records]
                await asyncio.gather(*sends)
                sends = [
                    await prod.send(names[topic], EVENT, key=r.key)
                    for r in records
                    for topic in ("ready", "history")
                ]
                await asyncio.gather(*sends)
                tally.batch([r.timestamp for r in records])
    finally:
        await cons.stop()
    return tally


def librdkafka_consumer(kafka: KafkaSettings, group: str) -> dict[str, Any]:
    """A librdkafka consumer's settings: manual commits, earliest reset, our fetch wait."""
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "socket.nagle.disable": True,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": kafka.fetch_max_wait_ms,
    }


def librdkafka_producer(kafka: KafkaSettings) -> dict[str, Any]:
    """The echoes' librdkafka producer: acks=all and idempotent, as the scheduler's."""
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "socket.nagle.disable": True,
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 0,
    }


class _Deliveries:
    """A confluent-kafka producer for an asyncio loop: `produce` on the loop, delivery
    reports served by a thread of its own (blocked in librdkafka, without the GIL), which
    resolves each batch's future on the loop."""

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        from confluent_kafka import Producer

        self.producer = Producer(config)
        self.loop = loop
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            self.producer.poll(0.1)

    def send(self, records: list[tuple[str, bytes, bytes]]) -> asyncio.Future[None]:
        """Produce `records` (topic, key, value); the future resolves once all are acked."""
        done = self.loop.create_future()
        left = len(records)

        def delivered(err: Any, _msg: Any) -> None:
            nonlocal left
            left -= 1
            if err is not None:
                self.loop.call_soon_threadsafe(_settle, done, RuntimeError(str(err)))
            elif left == 0:
                self.loop.call_soon_threadsafe(_settle, done, None)

        for topic, key, value in records:
            self.producer.produce(topic, value, key, on_delivery=delivered)
        return done

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.producer.flush()


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


async def _echo_mixed(kafka: KafkaSettings, names: dict[str, str], group: str) -> Tally:
    tally = Tally()
    cons = await _aiokafka_consumer(kafka, names, group)
    prod = _Deliveries(librdkafka_producer(kafka), asyncio.get_running_loop())
    try:
        async for records in _fetched(cons, tally):
            await prod.send([(names["changelog"], r.key, STATE) for r in records])
            await prod.send(
                [(names[t], r.key, EVENT) for r in records for t in ("ready", "history")]
            )
            tally.batch([r.timestamp for r in records])
    finally:
        prod.close()
        await cons.stop()
    return tally


def _echo_confluent(kafka: KafkaSettings, names: dict[str, str], group: str) -> Tally:
    from confluent_kafka import Consumer, Producer

    tally = Tally()
    cons = Consumer(librdkafka_consumer(kafka, group))
    prod = Producer(librdkafka_producer(kafka))
    cons.subscribe([names["in"]])
    print("ready", flush=True)
    last = time.perf_counter()
    try:
        while tally.first_at is None or time.perf_counter() - last < IDLE_END_S:
            first = cons.poll(0.1)  # returns as soon as one record is there
            if first is None:
                continue
            records = [first, *cons.consume(499, 0)]  # and whatever else is fetched
            records = [r for r in records if r.error() is None]
            last = time.perf_counter()
            for r in records:
                prod.produce(names["changelog"], STATE, r.key())
            prod.flush()
            for r in records:
                prod.produce(names["ready"], EVENT, r.key())
                prod.produce(names["history"], EVENT, r.key())
            prod.flush()
            tally.batch([r.timestamp()[1] for r in records])
    finally:
        cons.close()
    return tally


def echo(client: str, prefix: str) -> None:
    """The child: echo until the feed stops, then print its figures as one JSON line."""
    kafka = KafkaSettings(bootstrap_servers=_bootstrap(), topic_prefix=prefix)
    names, group = _names(prefix), f"{prefix}echo"
    if client == "aiokafka":
        import uvloop

        tally = uvloop.run(_echo_aiokafka(kafka, names, group))
    elif client == "aiokafka+librdkafka-producer":
        import uvloop

        tally = uvloop.run(_echo_mixed(kafka, names, group))
    else:
        tally = _echo_confluent(kafka, names, group)
    print(json.dumps(tally.result(client)), flush=True)


async def _feed(kafka: KafkaSettings, topic: str, rate: float, seconds: float) -> None:
    """Open loop: `rate` records a second for `seconds`, keyed like executions."""
    value = b"c" * EVENT_BYTES
    async with producer(kafka, linger_ms=1) as prod:
        start = time.perf_counter()
        sent = 0
        acks = []
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(int(elapsed * rate) + 1 - sent):
                acks.append(await prod.send(topic, value, key=uuid.uuid4().hex.encode()))
                sent += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*acks)


def _one(client: str, rate: float, seconds: float) -> dict[str, Any]:
    kafka = KafkaSettings(
        bootstrap_servers=_bootstrap(), topic_prefix=f"floor{uuid.uuid4().hex[:8]}."
    )
    names = _names(kafka.topic_prefix)
    asyncio.run(ensure_topics(kafka, list(names.values())))
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.kafka_floor", client, kafka.topic_prefix],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {client} echo did not start")
        asyncio.run(_feed(kafka, names["in"], rate, seconds))
        out, _ = child.communicate(timeout=120)
        return {"rate": rate, **json.loads(out.strip().splitlines()[-1])}
    finally:
        if child.poll() is None:
            child.kill()
        asyncio.run(delete_prefixed_topics(kafka))


def _bootstrap() -> str:
    return os.environ.get("CADENZA_BENCH_KAFKA") or os.environ.get(
        "CADENZA_TEST_KAFKA", "127.0.0.1:9092"
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in CLIENTS:  # the echo child
        echo(sys.argv[1], sys.argv[2])
        return
    rate = float(os.environ.get("CADENZA_BENCH_FLOOR_RATE", "1000"))
    seconds = float(os.environ.get("CADENZA_BENCH_SECONDS", "20"))
    rows = [_one(client, rate, seconds) for client in CLIENTS]
    report(
        "kafka_floor",
        rows,
        notes=(
            "the scheduler's Kafka I/O per input record with no logic: one "
            f"{STATE_BYTES:,} B changelog write acked, then two {EVENT_BYTES} B events acked; "
            "CPU per record of the echo process (all threads, and its main thread)"
        ),
    )


if __name__ == "__main__":
    main()
