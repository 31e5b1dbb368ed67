"""A running approvals service (in-process) against the real Kafka and Postgres, and a harness."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest_asyncio
from aiokafka import AIOKafkaProducer
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_approvals.service import ApprovalsService
from cadenza_approvals.settings import Settings
from cadenza_common import events as ev
from cadenza_common.db.engine import create_engine
from cadenza_common.db.tables import approval_decisions, approval_tasks, orgs
from cadenza_common.kafka import consumer, decode, producer, send_event
from cadenza_common.settings import DatabaseSettings, KafkaSettings

WAIT_S = 20.0


def service_settings(kafka: KafkaSettings, database_url: str, **overrides: Any) -> Settings:
    """Settings for one in-process instance: its own consumer group, any free HTTP port."""
    fields: dict[str, Any] = {
        "kafka": kafka,
        "database": DatabaseSettings(url=database_url, pool_size=3),
        "port": 0,
        "group_id": f"approvals-test-{uuid.uuid4().hex[:8]}",
        "resend_interval_s": 600.0,
    }
    fields.update(overrides)
    return Settings(**fields)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[ApprovalsService]:
    """Run a service instance until the block ends; fail loudly if it dies."""
    service = ApprovalsService(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    ready = asyncio.create_task(service.ready.wait())
    await asyncio.wait({task, ready}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert service.ready.is_set(), "the approvals service did not start"
    try:
        yield service
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT_S)


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float = WAIT_S) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.1)


class Completed:
    """Collects every step outcome on executions.commands, by execution id."""

    def __init__(self) -> None:
        self.by_execution: dict[uuid.UUID, list[ev.Event]] = defaultdict(list)

    async def collect(self, kafka: KafkaSettings, topic: str, started: asyncio.Event) -> None:
        group = f"reader-{uuid.uuid4().hex[:8]}"
        async with consumer(kafka, [topic], group_id=group) as cons:
            started.set()
            while True:
                for records in (await cons.getmany(timeout_ms=200)).values():
                    for record in records:
                        event = decode(record.value, record.headers)
                        if not isinstance(event, (ev.StepSucceeded, ev.StepFailed)):
                            continue
                        self.by_execution[event.execution_id].append(event)

    async def of(self, execution_id: uuid.UUID, count: int = 1) -> list[ev.Event]:
        """Wait until `count` outcomes of the execution arrived; return them all."""

        async def enough() -> list[ev.Event] | None:
            got = self.by_execution.get(execution_id, [])
            return got if len(got) >= count else None

        return list(await wait_until(enough))


class Harness:
    """Publishes requests and decisions, reads tasks, decisions and outcomes."""

    def __init__(
        self,
        kafka: KafkaSettings,
        engine: AsyncEngine,
        prod: AIOKafkaProducer,
        completed: Completed,
        service: ApprovalsService,
        org_id: uuid.UUID,
    ) -> None:
        self.kafka = kafka
        self.topics = ev.Topics(kafka.topic_prefix)
        self.engine = engine
        self.producer = prod
        self.completed = completed
        self.service = service
        self.org_id = org_id

    async def publish(self, topic: str, event: ev.Event) -> None:
        await send_event(self.producer, topic, event, source="/cadenza/tests")

    async def request(
        self, node_id: str = "approve", initiated_by: str = "starter", **fields: Any
    ) -> ev.ApprovalRequested:
        """Publish an ApprovalRequested for a new execution and wait until its task is open."""
        defaults: dict[str, Any] = {"approvers": ["role:finance", "key:alice"]}
        defaults.update(fields)
        event = ev.ApprovalRequested(
            execution_id=ev.new_event_id(),
            org_id=self.org_id,
            node_id=node_id,
            initiated_by=ev.Actor(kind="api_key", id=initiated_by, roles=["operator"]),
            expires_at=ev.utcnow() + timedelta(hours=1),
            instructions="check the refund",
            context={"amount": 120},
            **defaults,
        )
        await self.publish(self.topics.executions_events, event)
        await wait_until(lambda: self.task(event))
        return event

    async def decide(
        self,
        request: ev.ApprovalRequested,
        key: str,
        decision: str = "approve",
        *roles: str,
        kind: str = "api_key",
        comment: str = "",
        token_id: str | None = None,
        task_id: uuid.UUID | None = None,
    ) -> ev.ApprovalDecisionSubmitted:
        """Publish one decision on approvals.decisions."""
        event = ev.ApprovalDecisionSubmitted(
            execution_id=request.execution_id,
            org_id=request.org_id,
            node_id=request.node_id,
            attempt=request.attempt,
            decision=decision,  # type: ignore[arg-type]
            comment=comment,
            decided_by=ev.Actor(kind=kind, id=key, roles=list(roles)),  # type: ignore[arg-type]
            token_id=token_id,
            task_id=task_id,
        )
        await self.publish(self.topics.approvals_decisions, event)
        return event

    async def task(self, request: ev.StepEvent) -> Any:
        stmt = select(approval_tasks).where(
            approval_tasks.c.execution_id == request.execution_id,
            approval_tasks.c.node_id == request.node_id,
        )
        async with self.engine.connect() as conn:
            return (await conn.execute(stmt)).first()

    async def decisions(self, execution_id: uuid.UUID) -> list[Any]:
        stmt = (
            select(approval_decisions)
            .where(approval_decisions.c.execution_id == execution_id)
            .order_by(approval_decisions.c.id)
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(stmt)).all())

    async def recorded(self, execution_id: uuid.UUID, count: int) -> list[Any]:
        """Wait until `count` decisions of the execution are recorded; return them."""

        async def enough() -> list[Any] | None:
            rows = await self.decisions(execution_id)
            return rows if len(rows) >= count else None

        return list(await wait_until(enough))

    async def wait_for(self, check: Callable[[], Awaitable[Any]]) -> Any:
        return await wait_until(check)

    async def recorded_event(self, event: ev.ApprovalDecisionSubmitted) -> Any:
        """Wait until this very decision is recorded (so everything before it was handled)."""

        async def found() -> Any:
            rows = await self.decisions(event.execution_id)
            return next((r for r in rows if r.event_id == event.event_id), None)

        return await wait_until(found)

    async def task_status(self, request: ev.StepEvent, status: str) -> Any:
        """Wait until the request's task has `status`; return the row."""

        async def reached() -> Any:
            row = await self.task(request)
            return row if row is not None and row.status == status else None

        return await wait_until(reached)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def harness(kafka_settings: KafkaSettings, database_url: str) -> AsyncIterator[Harness]:
    """One service instance, one outcome reader and one org for the whole module."""
    engine = create_engine(DatabaseSettings(url=database_url, pool_size=3))
    org_id = ev.new_event_id()
    async with engine.begin() as conn:
        await conn.execute(insert(orgs).values(id=org_id, name=f"approvals-{org_id}"))
    completed = Completed()
    started = asyncio.Event()
    topics = ev.Topics(kafka_settings.topic_prefix)
    reader = asyncio.create_task(
        completed.collect(kafka_settings, topics.executions_commands, started)
    )
    await asyncio.wait_for(started.wait(), WAIT_S)
    async with (
        producer(kafka_settings) as prod,
        running(service_settings(kafka_settings, database_url)) as service,
    ):
        yield Harness(kafka_settings, engine, prod, completed, service, org_id)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    await engine.dispose()
