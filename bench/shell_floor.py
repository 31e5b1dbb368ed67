"""The scheduler's shell over librdkafka, without Faust: what a librdkafka transport could give.

`bench scheduler` measures the Faust app. Here the same harness (`bench.scheduler`: the
synthetic runner, the same chains, phases and figures) drives a child process that runs
the scheduler's own `Shell` (decode, `decide()`, state and outbox, the changelog write
before the emits) with confluent-kafka (librdkafka, C, its I/O in threads of its own) for
both the input records and every write, and a dict for the table. Nothing else of the
scheduler: no Faust, no rebalancing, no recovery, no timer task (the chains have no
timers); offsets are committed every second. So its figures are a ceiling for replacing
aiokafka under the scheduler, not a product: compare them with `bench scheduler` run on the
same broker in the same minutes.

Needs a Kafka broker: `CADENZA_BENCH_KAFKA` (or `CADENZA_TEST_KAFKA`), default 127.0.0.1:9092.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench import scheduler
from bench.kafka_floor import librdkafka_consumer, librdkafka_producer
from bench.report import report
from cadenza_common.events import Topics
from cadenza_common.settings import KafkaSettings
from cadenza_scheduler.agents import Outgoing, Record, Shell, partition_of
from cadenza_scheduler.settings import Settings as SchedulerSettings

UNASSIGNED = -1  # librdkafka: let the partitioner choose


class _Writer:
    """A librdkafka producer: `write` hands records over, then waits in `flush()` (the GIL
    released) until the broker acknowledged all of them; raises if any failed."""

    def __init__(self, kafka: KafkaSettings) -> None:
        from confluent_kafka import Producer

        self.producer = Producer(librdkafka_producer(kafka))
        self.failed: list[str] = []

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed.append(str(err))

    def write(self, records: Iterable[Outgoing]) -> None:
        for r in records:
            self.producer.produce(
                r.topic,
                r.value,
                r.key,
                partition=UNASSIGNED if r.partition is None else r.partition,
                headers=list(r.headers),
                on_delivery=self._delivered,
            )
        self.producer.flush()
        if self.failed:
            error, self.failed = self.failed[0], []
            raise RuntimeError(f"a write failed: {error}")


async def _serve(kafka: KafkaSettings, port: int) -> None:
    """The child: consume both input topics, apply each batch through the shell."""
    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient, NewTopic
    from prometheus_client import start_http_server

    topics = Topics(kafka.topic_prefix)
    changelog = f"{kafka.topic_prefix}shell-floor-changelog"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for future in admin.create_topics([NewTopic(changelog, kafka.partitions, 1)]).values():
        future.result()
    writer = _Writer(kafka)
    table: dict[str, bytes] = {}
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)

    async def persist(keys: Iterable[str]) -> None:
        writer.write(
            Outgoing(changelog, partition_of(k, kafka.partitions), k.encode(), table.get(k), [])
            for k in keys
        )

    async def send(records: Sequence[Outgoing]) -> list[asyncio.Future[None]]:
        writer.write(records)
        return [done]

    shell = Shell(
        table,  # type: ignore[arg-type]
        send,
        topics,
        source="/bench/shell-floor",
        consumer_name="shell-floor",
        retention_s=3600,
        partitions=kafka.partitions,
        persist=persist,
    )
    cons = Consumer(librdkafka_consumer(kafka, f"{kafka.topic_prefix}shell-floor"))
    cons.subscribe([topics.executions_commands])
    while not cons.assignment():
        cons.poll(0.1)
    start_http_server(port, "127.0.0.1", registry=shell.metrics.registry)  # also "ready"
    committed = time.monotonic()
    while True:
        first = cons.poll(0.1)  # returns as soon as one record is there
        messages = [] if first is None else [first, *cons.consume(499, 0)]
        records = [
            Record(m.value(), m.headers(), m.key(), m.topic(), m.partition(), m.offset())
            for m in messages
            if m.error() is None
        ]
        if records:
            await shell.on_records(records)
        if time.monotonic() - committed > 1.0:
            committed = time.monotonic()
            cons.commit(asynchronous=True)


def _start(kafka: KafkaSettings, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CADENZA_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "CADENZA_BENCH_SHELL_PORT": str(port),
    }
    log = (workdir / scheduler.SCHEDULER_LOG).open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "bench.shell_floor"], env=env, cwd=workdir, stdout=log, stderr=log
    )


def child() -> None:
    import uvloop

    from cadenza_scheduler import heap

    gc.set_threshold(*SchedulerSettings.model_fields["gc_thresholds"].default)
    heap.settle()
    uvloop.run(_serve(KafkaSettings(), int(os.environ["CADENZA_BENCH_SHELL_PORT"])))


def main() -> None:
    executions = int(os.environ.get("CADENZA_BENCH_EXECUTIONS", "600"))
    seconds = float(os.environ.get("CADENZA_BENCH_SECONDS", "20"))
    paced = os.environ.get("CADENZA_BENCH_PACED_RATE")
    rows = asyncio.run(
        scheduler.run(executions, seconds, float(paced) if paced else None, start=_start)
    )
    report(
        "shell_floor",
        rows,
        notes=(
            "the scheduler's Shell over confluent-kafka in one process, no Faust (a dict "
            f"table); chains of {scheduler.CHAIN} service_call nodes, synthetic runner "
            "answering at once; latency = StepSucceeded produced -> next StepReady consumed"
        ),
    )


if __name__ == "__main__":
    child()
