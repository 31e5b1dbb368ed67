"""Scheduler throughput and latency: one scheduler process, a synthetic runner answering at once.

Each execution is a chain of service_call nodes. A transition is one StepSucceeded applied
by the scheduler. Latency is from the runner producing StepSucceeded for node n to the runner
consuming the StepReady of node n+1 (both clocks are this process). Two phases: saturation
(many executions at once) and a paced run at half the measured rate.

Needs a Kafka broker: `CADENZA_BENCH_KAFKA` (or `CADENZA_TEST_KAFKA`), default 127.0.0.1:9092.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.report import percentile, report
from cadenza_common import events as ev
from cadenza_common.kafka import (
    consumer,
    decode,
    delete_prefixed_topics,
    encode,
    ensure_topics,
    producer,
)
from cadenza_common.settings import KafkaSettings
from cadenza_scheduler import heap
from cadenza_scheduler.settings import Settings as SchedulerSettings

CHAIN = 10
SCHEDULER_LOG = "scheduler.log"
ORG = uuid.UUID("0190f0f0-0000-7000-8000-0000000000aa")


def _workflow() -> dict[str, Any]:
    nodes = [
        {
            "id": f"n{i}",
            "type": "service_call",
            "connection": "svc",
            "path": f"/n{i}",
            "depends_on": [f"n{i - 1}"] if i else [],
        }
        for i in range(CHAIN)
    ]
    return {"slug": "bench", "nodes": nodes}


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bench:
    def __init__(self, kafka: KafkaSettings, log: Path | None = None) -> None:
        self.kafka = kafka
        self.log = log
        self.topics = ev.Topics(kafka.topic_prefix)
        self.sent_at: dict[tuple[uuid.UUID, int], float] = {}
        self.latencies: list[float] = []
        self.completed = 0
        self.finished: set[uuid.UUID] = set()

    async def runner(self, prod: AIOKafkaProducer, stop: asyncio.Event) -> None:
        group = f"bench-runner-{uuid.uuid4().hex[:8]}"
        acks: list[asyncio.Future[Any]] = []
        async with consumer(self.kafka, [self.topics.steps_ready], group) as cons:
            while not stop.is_set():
                batch = await cons.getmany(timeout_ms=50, max_records=2000)
                now = time.perf_counter()
                futures = []
                answered = []
                for records in batch.values():
                    for record in records:
                        ready = decode(record.value, record.headers)
                        assert isinstance(ready, ev.StepReady)
                        index = int(ready.node_id[1:])
                        previous = self.sent_at.pop((ready.execution_id, index - 1), None)
                        if previous is not None:
                            self.latencies.append(now - previous)
                        out = ev.StepSucceeded(
                            execution_id=ready.execution_id,
                            org_id=ready.org_id,
                            node_id=ready.node_id,
                            attempt=ready.attempt,
                        )
                        msg = encode(out, source="/bench")
                        answered.append((ready.execution_id, index))
                        futures.append(
                            await prod.send(
                                self.topics.steps_completed,
                                msg.value,
                                key=msg.key,
                                headers=msg.headers,
                            )
                        )
                # produced now: the producer sends the batch once this task yields (stamping
                # each record as it was built counted the rest of the batch's handling)
                sent = time.perf_counter()
                for answer in answered:
                    self.sent_at[answer] = sent
                if futures:
                    # acks are awaited aside: the next StepReady is not left unread meanwhile
                    acks.append(asyncio.gather(*futures))
                for ack in [a for a in acks if a.done()]:
                    acks.remove(ack)
                    ack.result()  # a failed send fails the bench
            await asyncio.gather(*acks)

    async def history(self, stop: asyncio.Event) -> None:
        group = f"bench-history-{uuid.uuid4().hex[:8]}"
        async with consumer(self.kafka, [self.topics.executions_events], group) as cons:
            while not stop.is_set():
                batch = await cons.getmany(timeout_ms=50, max_records=5000)
                for records in batch.values():
                    for record in records:
                        ce_type = dict(record.headers).get("ce_type", b"")
                        if ce_type == b"cadenza.step.succeeded":
                            self.completed += 1
                        elif ce_type == b"cadenza.execution.succeeded":
                            self.finished.add(uuid.UUID(record.key.decode()))

    async def request(self, prod: AIOKafkaProducer, count: int, rate: float | None) -> list[Any]:
        ids = []
        start = time.perf_counter()
        for i in range(count):
            event = ev.ExecutionRequested(
                execution_id=uuid.uuid4(),
                org_id=ORG,
                workflow_id=ORG,
                workflow_version=1,
                workflow=_workflow(),
            )
            msg = encode(event, source="/bench")
            await prod.send(
                self.topics.executions_commands, msg.value, key=msg.key, headers=msg.headers
            )
            ids.append(event.execution_id)
            if rate:
                delay = start + (i + 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        return ids

    async def phase(self, prod: AIOKafkaProducer, count: int, rate: float | None) -> dict[str, Any]:
        self.latencies.clear()
        done_before = self.completed
        errors_before = self.scheduler_errors()
        start = time.perf_counter()
        ids = await self.request(prod, count, rate)
        deadline = start + 600
        while not self.finished.issuperset(ids) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - start
        transitions = self.completed - done_before
        return {
            "phase": "saturation" if rate is None else f"paced {rate * CHAIN:,.0f}/s",
            "executions": count,
            "finished": len(self.finished.intersection(ids)),
            "transitions": transitions,
            "seconds": round(elapsed, 2),
            "transitions_per_s": round(transitions / elapsed, 1),
            "p50_ms": round(percentile(self.latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 2),
            # a failed flush is retried after a back-off: it shows as latency, so count them
            "scheduler_errors": self.scheduler_errors() - errors_before,
        }

    def scheduler_errors(self) -> int:
        """ERROR lines in the scheduler's log so far."""
        if self.log is None or not self.log.exists():
            return 0
        with self.log.open("rb") as lines:
            return sum(b"ERROR" in line for line in lines)


def _start_scheduler(kafka: KafkaSettings, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CADENZA_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "CADENZA_SCHEDULER_APP_ID": f"{kafka.topic_prefix}scheduler",
        "CADENZA_SCHEDULER_WEB_PORT": str(port),
        "CADENZA_SCHEDULER_DATA_DIR": str(workdir / "data"),
        "CADENZA_SCHEDULER_LOG_LEVEL": "warning",
    }
    log = (workdir / SCHEDULER_LOG).open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cadenza_scheduler"], env=env, cwd=workdir, stdout=log, stderr=log
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
            return int(r.status) == 200
    except Exception:
        return False


async def run(executions: int) -> list[dict[str, Any]]:
    bootstrap = os.environ.get("CADENZA_BENCH_KAFKA") or os.environ.get(
        "CADENZA_TEST_KAFKA", "127.0.0.1:9092"
    )
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka)
    port = _port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = _start_scheduler(kafka, Path(tmp), port)
        try:
            for _ in range(300):
                if await asyncio.to_thread(_ready, port):
                    break
                await asyncio.sleep(0.3)
            bench = Bench(kafka, Path(tmp) / SCHEDULER_LOG)
            # the runner's own collector pauses would count as scheduler latency: same
            # settings as the scheduler's (cadenza_scheduler.heap)
            gc.set_threshold(*SchedulerSettings.model_fields["gc_thresholds"].default)
            heap.settle()
            stop = asyncio.Event()
            async with producer(kafka, linger_ms=1) as prod:
                tasks = [
                    asyncio.create_task(bench.runner(prod, stop)),
                    asyncio.create_task(bench.history(stop)),
                ]
                await asyncio.sleep(2.0)
                rows = [await bench.phase(prod, executions, None)]
                half = rows[0]["transitions_per_s"] / 2 / CHAIN
                rows.append(await bench.phase(prod, executions // 2, half))
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
            return rows
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            await delete_prefixed_topics(kafka)


def main() -> None:
    executions = int(os.environ.get("CADENZA_BENCH_EXECUTIONS", "300"))
    rows = asyncio.run(run(executions))
    report(
        "scheduler",
        rows,
        notes=(
            f"one scheduler process (memory store), chains of {CHAIN} service_call nodes, "
            "synthetic runner answering at once; latency = StepSucceeded produced -> next "
            "StepReady consumed"
        ),
    )
