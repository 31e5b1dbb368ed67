"""Helpers of the step-runner tests (settings, StepReady factory, connection rows)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import ConsumerRecord
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common import kafka
from cadenza_common.crypto import SecretBox
from cadenza_common.db import tables
from cadenza_common.events import Event, StepReady
from cadenza_common.settings import DatabaseSettings, KafkaSettings, SecuritySettings
from cadenza_common.testing import serving
from cadenza_step_runner.app import serve
from cadenza_step_runner.blobs import BlobStore
from cadenza_step_runner.calls import HttpCaller
from cadenza_step_runner.connections import ConnectionRepository
from cadenza_step_runner.handlers import StepHandler
from cadenza_step_runner.refs import RefSource
from cadenza_step_runner.settings import BreakerSettings, Settings
from cadenza_step_runner.webhooks import SubscriptionStore

BOX_SETTINGS = SecuritySettings(
    secret_key=SecretStr("test-secret-key-0123456789"), secret_key_id="k1"
)


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Runner settings for tests: small breaker, loopback allowed for absolute URLs."""
    base: dict[str, Any] = {
        "database": DatabaseSettings(url=database_url, pool_size=5),
        "security": BOX_SETTINGS,
        "breaker": BreakerSettings(window=4, min_calls=3, failure_rate=0.5, cooldown_s=0.5),
        "allow_private_network": True,
        "metrics_port": 0,
        "connection_cache_ttl_s": 0,
    }
    base.update(overrides)
    return Settings(**base)


def ready(org_id: uuid.UUID, request: dict[str, Any], **kw: Any) -> StepReady:
    """A StepReady for one fresh execution."""
    exec_id = uuid.uuid4()
    fields: dict[str, Any] = {"node_type": "service_call", "node_id": "call", "attempt": 1}
    fields.update(kw)
    return StepReady(
        execution_id=exec_id,
        org_id=org_id,
        request=request,
        idempotency_key=f"{exec_id}:{fields['node_id']}",
        **fields,
    )


async def add_connection(
    engine: AsyncEngine,
    org_id: uuid.UUID,
    name: str,
    base_url: str,
    *,
    secret: str | None = None,
    auth_type: str = "bearer",
    allow_private: bool = True,
    **columns: Any,
) -> None:
    """Insert a service connection as the trigger-api would (secret sealed for the org)."""
    box = SecretBox.from_settings(BOX_SETTINGS)
    sealed = box.encrypt(secret, context=f"org:{org_id}") if secret else None
    async with engine.begin() as db:
        await db.execute(
            tables.service_connections.insert().values(
                id=uuid.uuid4(),
                org_id=org_id,
                name=name,
                base_url=base_url,
                auth_type=auth_type,
                secret_ciphertext=sealed,
                allow_private_network=allow_private,
                **columns,
            )
        )


def make_handler(
    engine: AsyncEngine,
    settings: Settings,
    refs: RefSource | None = None,
    clock: Any = None,
) -> StepHandler:
    box = SecretBox.from_settings(settings.security)
    caller = HttpCaller(max_response_bytes=settings.max_response_bytes, max_connections=64)
    extra = {"clock": clock} if clock is not None else {}
    return StepHandler(
        settings,
        ConnectionRepository(engine, box, 0),
        caller,
        BlobStore(engine),
        refs or RefSource(),
        subscriptions=SubscriptionStore(engine, box),
        **extra,
    )


async def publish(
    settings: KafkaSettings, topic: str, events: list[Event]
) -> list[tuple[int, int]]:
    """Send events; return each one's (partition, offset)."""
    placed: list[tuple[int, int]] = []
    async with kafka.producer(settings) as prod:
        futures = []
        for event in events:
            msg = kafka.encode(event, source="/tests", traceparent=TRACEPARENT)
            futures.append(await prod.send(topic, msg.value, key=msg.key, headers=msg.headers))
        for fut in futures:
            meta = await fut
            placed.append((meta.partition, meta.offset))
    return placed


async def read_events(
    settings: KafkaSettings,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 30.0,
) -> list[ConsumerRecord[Any, Any]]:
    """Read a topic from the start until `until(records)` holds (or fail after the timeout)."""
    records: list[ConsumerRecord[Any, Any]] = []
    async with kafka.consumer(settings, [topic], f"reader-{uuid.uuid4().hex[:8]}") as cons:
        async with asyncio.timeout(timeout_s):
            while not until(records):
                for batch in (await cons.getmany(timeout_ms=200)).values():
                    records.extend(batch)
    return records


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@asynccontextmanager
async def running(settings: Settings, refs: RefSource | None = None) -> AsyncIterator[None]:
    """The runner in this process, stopped (gracefully) when the block ends."""
    async with serving(lambda stop: serve(settings, stop, refs)):
        yield
