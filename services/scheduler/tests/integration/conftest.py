"""The scheduler as a separate process, a step-runner stand-in, and a history collector."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer

from cadenza_common import events as ev
from cadenza_common.kafka import consumer, decode, producer, send_event
from cadenza_common.settings import KafkaSettings

ORG = uuid.UUID("0190f0f0-0000-7000-8000-0000000000aa")
WORKFLOW = uuid.UUID("0190f0f0-0000-7000-8000-0000000000bb")
READY_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SchedulerProcess:
    """`python -m cadenza_scheduler` with its own port and data dir, in the test's app id."""

    def __init__(self, kafka: KafkaSettings, app_id: str, workdir: Path, name: str) -> None:
        self.kafka = kafka
        self.app_id = app_id
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "scheduler.log"
        self.starts = 0

    def start(self, **env: str) -> None:
        self.starts += 1
        self.port = free_port()
        environment = {
            **os.environ,
            "CADENZA_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap_servers,
            "CADENZA_KAFKA_TOPIC_PREFIX": self.kafka.topic_prefix,
            "CADENZA_KAFKA_PARTITIONS": str(self.kafka.partitions),
            "CADENZA_SCHEDULER_APP_ID": self.app_id,
            "CADENZA_SCHEDULER_WEB_PORT": str(self.port),
            "CADENZA_SCHEDULER_DATA_DIR": str(self.workdir / f"data{self.starts}"),
            "CADENZA_SCHEDULER_SESSION_TIMEOUT_S": "6",
            "CADENZA_SCHEDULER_REBALANCE_TIMEOUT_S": "10",
            "CADENZA_SCHEDULER_LOG_LEVEL": os.environ.get("SCHED_TEST_LOG", "warning"),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cadenza_scheduler"],
                env=environment,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            url = f"http://127.0.0.1:{self.port}{path}"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return int(resp.status), resp.read()
        except Exception:
            return 0, b""

    async def get(self, path: str) -> tuple[int, bytes]:
        return await asyncio.to_thread(self._get, path)

    async def wait_ready(self, timeout: float = READY_S) -> None:
        async with asyncio.timeout(timeout):
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(f"scheduler exited: {self.log.read_text()[-3000:]}")
                status, _ = await self.get("/health/ready")
                if status == 200:
                    return
                await asyncio.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no commit, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def schedulers(
    fresh_kafka: KafkaSettings, tmp_path: Path
) -> Iterator[Callable[[], SchedulerProcess]]:
    """Makes scheduler processes sharing one app id (one consumer group, one changelog)."""
    app_id = f"{fresh_kafka.topic_prefix}scheduler"
    made: list[SchedulerProcess] = []

    def make() -> SchedulerProcess:
        proc = SchedulerProcess(fresh_kafka, app_id, tmp_path, f"s{len(made)}")
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()
    for proc in made:
        text = proc.log.read_text(errors="replace") if proc.log.exists() else ""
        if "Traceback" in text:
            print(f"--- {proc.name} log (tail) ---\n{text[-4000:]}")


Answer = Callable[[ev.StepReady], list[ev.Event] | None]


def succeeded(ready: ev.StepReady, output: Any) -> ev.StepSucceeded:
    """The runner's answer that `ready`'s attempt succeeded with `output`."""
    return ev.StepSucceeded(
        execution_id=ready.execution_id,
        org_id=ready.org_id,
        node_id=ready.node_id,
        attempt=ready.attempt,
        output=output,
    )


def succeed(ready: ev.StepReady) -> list[ev.Event]:
    """The default runner: every call succeeds with its node id as output."""
    return [succeeded(ready, {"node": ready.node_id})]


@dataclass
class Runner:
    """Plays the step-runner: consumes steps.ready, answers on executions.commands."""

    kafka: KafkaSettings
    answer: Answer = succeed
    delay_s: Callable[[], float] | None = None
    readies: Counter[tuple[uuid.UUID, str, int]] = field(default_factory=Counter)
    # delayed answers not sent yet
    pending: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, prod: AIOKafkaProducer) -> None:
        topics = ev.Topics(self.kafka.topic_prefix)
        group = f"runner-{uuid.uuid4().hex[:8]}"
        async with consumer(self.kafka, [topics.steps_ready], group) as cons:
            while True:
                batch = await cons.getmany(timeout_ms=100)
                for records in batch.values():
                    for record in records:
                        ready = decode(record.value, record.headers)
                        assert isinstance(ready, ev.StepReady)
                        self.readies[(ready.execution_id, ready.node_id, ready.attempt)] += 1
                        outs = self.answer(ready) or []
                        if self.delay_s is None:
                            await self._send(prod, topics, outs, 0.0)
                        else:
                            self.pending.add(
                                asyncio.create_task(self._send(prod, topics, outs, self.delay_s()))
                            )
                            self.pending = {t for t in self.pending if not t.done()}
                if batch:
                    await cons.commit()

    async def _send(
        self, prod: AIOKafkaProducer, topics: ev.Topics, outs: list[ev.Event], delay: float
    ) -> None:
        if delay:
            await asyncio.sleep(delay)
        for out in outs:
            await send_event(prod, topics.executions_commands, out, source="/test")


@dataclass
class History:
    """Everything the scheduler wrote to executions.events (and the DLQ), by execution."""

    kafka: KafkaSettings
    events: dict[uuid.UUID, list[ev.Event]] = field(default_factory=lambda: defaultdict(list))
    dlq: list[Any] = field(default_factory=list)

    async def run(self) -> None:
        topics = ev.Topics(self.kafka.topic_prefix)
        group = f"history-{uuid.uuid4().hex[:8]}"
        async with consumer(self.kafka, [topics.executions_events, topics.dlq], group) as cons:
            while True:
                batch = await cons.getmany(timeout_ms=100)
                for records in batch.values():
                    for record in records:
                        if record.topic == topics.dlq:
                            self.dlq.append(record)
                            continue
                        event = decode(record.value, record.headers)
                        assert isinstance(event, ev.ExecutionEvent)
                        self.events[event.execution_id].append(event)

    def finished(self, execution_id: uuid.UUID) -> ev.Event | None:
        for event in self.events.get(execution_id, ()):
            if isinstance(
                event, ev.ExecutionSucceeded | ev.ExecutionFailed | ev.ExecutionCancelled
            ):
                return event
        return None

    def of_type(self, execution_id: uuid.UUID, cls: type[ev.Event]) -> list[Any]:
        return [e for e in self.events.get(execution_id, ()) if isinstance(e, cls)]

    async def wait_finished(self, ids: list[uuid.UUID], timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                while any(self.finished(i) is None for i in ids):
                    await asyncio.sleep(0.1)
        except TimeoutError:
            stuck = [i for i in ids if self.finished(i) is None]
            seen = {i: [e.CE_TYPE.split(".", 1)[1] for e in self.events.get(i, ())] for i in stuck}
            sample = "; ".join(f"{i}: {seen[i]}" for i in stuck[:3])
            raise AssertionError(
                f"{len(stuck)} of {len(ids)} executions unfinished, e.g. {sample}"
            ) from None

    async def wait_for(self, check: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.05)


@dataclass
class Harness:
    kafka: KafkaSettings
    topics: ev.Topics
    producer: AIOKafkaProducer
    runner: Runner
    history: History

    async def request(
        self, workflow: dict[str, Any], execution_id: uuid.UUID | None = None
    ) -> uuid.UUID:
        """Publish an ExecutionRequested for `workflow`; return its execution id."""
        execution_id = execution_id or uuid.uuid4()
        event = ev.ExecutionRequested(
            execution_id=execution_id,
            org_id=ORG,
            workflow_id=WORKFLOW,
            workflow_version=1,
            workflow=workflow,
            input={"name": "ada"},
        )
        await send_event(self.producer, self.topics.executions_commands, event, source="/test")
        return execution_id


@pytest_asyncio.fixture
async def harness(fresh_kafka: KafkaSettings) -> AsyncIterator[Harness]:
    """A producer, the runner stand-in and the history collector, running in the background."""
    async with producer(fresh_kafka) as prod:
        runner = Runner(fresh_kafka)
        history = History(fresh_kafka)
        tasks = [asyncio.create_task(runner.run(prod)), asyncio.create_task(history.run())]
        try:
            yield Harness(fresh_kafka, ev.Topics(fresh_kafka.topic_prefix), prod, runner, history)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def call(node_id: str, *deps: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": node_id,
        "type": "service_call",
        "connection": "svc",
        "path": f"/{node_id}",
        "depends_on": list(deps),
        **extra,
    }


def workflow(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"slug": "t", "nodes": list(nodes)}
