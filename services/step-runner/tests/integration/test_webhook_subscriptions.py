"""Outbound webhook subscriptions over real Kafka, Postgres and a local receiver."""

from __future__ import annotations

import asyncio
import time
import uuid

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from standardwebhooks.webhooks import Webhook
from step_runner_stub import StubServer
from step_runner_support import BOX_SETTINGS, make_settings, publish, running

from cadenza_common import events as ev
from cadenza_common.crypto import SecretBox
from cadenza_common.db import tables
from cadenza_common.settings import KafkaSettings
from cadenza_common.webhook_signing import generate_secret
from cadenza_step_runner.settings import Settings, WebhookSettings

pytestmark = pytest.mark.integration


async def subscribe(
    engine: AsyncEngine,
    org_id: uuid.UUID,
    url: str,
    event_types: list[str],
    secret: str,
    *,
    allow_private: bool = True,
) -> uuid.UUID:
    ident = uuid.uuid4()
    sealed = SecretBox.from_settings(BOX_SETTINGS).encrypt(secret, context=f"org:{org_id}")
    async with engine.begin() as db:
        await db.execute(
            tables.webhook_subscriptions.insert().values(
                id=ident,
                org_id=org_id,
                url=url,
                event_types=event_types,
                secret_ciphertext=sealed,
                allow_private_network=allow_private,
            )
        )
    return ident


def history(org_id: uuid.UUID) -> list[ev.Event]:
    exec_id = uuid.uuid4()
    common = {"execution_id": exec_id, "org_id": org_id}
    err = ev.StepError(error_class=ev.ErrorClass.HTTP_4XX, message="no", retryable=False)
    return [
        ev.ExecutionStarted(workflow_id=uuid.uuid4(), workflow_version=1, **common),
        ev.StepSucceeded(node_id="a", output={"x": 1}, **common),
        ev.StepFailed(node_id="b", error=err, **common),
        ev.ExecutionFailed(error=err, **common),
    ]


async def wait_for(predicate, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def webhook_settings(database_url: str, kafka: KafkaSettings, **kw: object) -> Settings:
    hooks = WebhookSettings(initial_backoff_s=0.05, max_backoff_s=0.2, timeout_s=2, **kw)
    return make_settings(database_url, kafka=kafka, webhook=hooks)


async def test_subscription_receives_exactly_its_event_types_and_retries_on_500(
    fresh_kafka: KafkaSettings,
    engine: AsyncEngine,
    database_url: str,
    org_id: uuid.UUID,
    stub: StubServer,
) -> None:
    secret = generate_secret()
    stub.state.scripts["sub-a"] = [500, 200]
    sub = await subscribe(
        engine,
        org_id,
        f"{stub.url}/scripted/sub-a",
        ["cadenza.step.succeeded", "execution.failed"],
        secret,
    )
    events = history(org_id)
    topics = ev.Topics(fresh_kafka.topic_prefix)
    deliveries = tables.webhook_deliveries

    async def both_delivered() -> bool:
        async with engine.connect() as db:
            rows = (
                (
                    await db.execute(
                        sa.select(deliveries.c.status).where(deliveries.c.subscription_id == sub)
                    )
                )
                .scalars()
                .all()
            )
        return sorted(rows) == ["delivered", "delivered"]

    async with running(webhook_settings(database_url, fresh_kafka)):
        await publish(fresh_kafka, topics.executions_events, events)
        await wait_for(both_delivered)

    seen = stub.state.requests_to("/scripted/sub-a")
    bodies = [Webhook(secret).verify(s.body, s.headers) for s in seen]
    assert {b["type"] for b in bodies} == {"cadenza.step.succeeded", "cadenza.execution.failed"}
    assert len(seen) == 3  # one of the two was answered 500 first and retried
    assert len({s.headers["webhook-id"] for s in seen}) == 2
    async with engine.connect() as db:
        attempts = sorted(
            (
                await db.execute(
                    sa.select(deliveries.c.attempts).where(deliveries.c.subscription_id == sub)
                )
            )
            .scalars()
            .all()
        )
    assert attempts == [1, 2]
    assert orjson.loads(seen[-1].body)["data"]["org_id"] == str(org_id)


async def test_subscription_is_disabled_after_a_run_of_failed_deliveries(
    fresh_kafka: KafkaSettings,
    engine: AsyncEngine,
    database_url: str,
    org_id: uuid.UUID,
    stub: StubServer,
) -> None:
    stub.state.scripts["sub-down"] = [500]
    sub = await subscribe(engine, org_id, f"{stub.url}/scripted/sub-down", ["*"], generate_secret())
    topics = ev.Topics(fresh_kafka.topic_prefix)
    states = tables.webhook_subscription_states
    settings = webhook_settings(database_url, fresh_kafka, max_attempts=2, disable_after_failures=2)

    async def disabled() -> bool:
        async with engine.connect() as db:
            row = (
                await db.execute(
                    sa.select(states.c.disabled_at).where(states.c.subscription_id == sub)
                )
            ).first()
        return row is not None and row[0] is not None

    async with running(settings):
        await publish(fresh_kafka, topics.executions_events, history(org_id)[:2])
        await wait_for(disabled)
        calls = len(stub.state.requests_to("/scripted/sub-down"))
        await publish(fresh_kafka, topics.executions_events, history(org_id)[:1])
        await asyncio.sleep(1.0)

    assert calls == 4
    assert len(stub.state.requests_to("/scripted/sub-down")) == calls


async def test_subscription_to_a_private_address_is_refused_without_a_request(
    fresh_kafka: KafkaSettings,
    engine: AsyncEngine,
    database_url: str,
    org_id: uuid.UUID,
    stub: StubServer,
) -> None:
    sub = await subscribe(
        engine,
        org_id,
        f"{stub.url}/echo/private-sub",
        ["*"],
        generate_secret(),
        allow_private=False,
    )
    topics = ev.Topics(fresh_kafka.topic_prefix)
    deliveries = tables.webhook_deliveries

    async def failed() -> bool:
        async with engine.connect() as db:
            rows = (
                await db.execute(
                    sa.select(deliveries.c.status, deliveries.c.error).where(
                        deliveries.c.subscription_id == sub
                    )
                )
            ).all()
        return len(rows) == 1 and rows[0][0] == "failed"

    async with running(webhook_settings(database_url, fresh_kafka)):
        await publish(fresh_kafka, topics.executions_events, history(org_id)[:1])
        await wait_for(failed)

    async with engine.connect() as db:
        error = (
            await db.execute(
                sa.select(deliveries.c.error).where(deliveries.c.subscription_id == sub)
            )
        ).scalar_one()
    assert "SSRF" in error
    assert stub.state.requests_to("/echo/private-sub") == []
