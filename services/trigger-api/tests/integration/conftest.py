"""Fixtures: a real app (lifespan entered) on the session's database and topics, orgs and keys."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi import FastAPI
from pydantic import BaseModel

from cadenza_common.db.tables import api_keys
from cadenza_common.events import Event
from cadenza_common.kafka import decode, ensure_topics
from cadenza_common.settings import DatabaseSettings, KafkaSettings
from cadenza_devstack.pytest_plugin import delete_prefixed_topics
from cadenza_trigger_api.app import create_app
from cadenza_trigger_api.auth import Role
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.orgs import create_org
from cadenza_trigger_api.outbox import OutboxRelay
from cadenza_trigger_api.settings import Settings

VALID_SPEC: dict[str, Any] = {
    "inputs": {
        "type": "object",
        "required": ["customer"],
        "properties": {"customer": {"type": "string"}},
    },
    "nodes": [
        {"id": "greet", "type": "transform", "expression": "{\"hello\": trigger.customer}"},
    ],
}


@pytest.fixture(scope="session")
def api_kafka(kafka_bootstrap: str) -> Iterator[KafkaSettings]:
    """Kafka settings of this session's API (topics are created only by tests that need them,
    and deleted at the end of the session)."""
    prefix = f"tapi{uuid.uuid4().hex[:10]}."
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix,
                             client_id="trigger-api-tests")
    yield settings
    delete_prefixed_topics(settings)


@pytest.fixture
async def live_kafka(api_kafka: KafkaSettings) -> KafkaSettings:
    """The API's Kafka settings with its topics created on the real broker."""
    await ensure_topics(api_kafka)
    return api_kafka


@pytest.fixture
def settings(database_url: str, api_kafka: KafkaSettings) -> Settings:
    return Settings(
        database=DatabaseSettings(url=database_url, pool_size=5),
        kafka=api_kafka,
        relay_enabled=False,
        key_cache_ttl_s=0,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def ctx(app: FastAPI) -> AppContext:
    context: AppContext = app.state.ctx
    return context


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


@dataclass
class Org:
    """An org of this test with keys per role."""

    id: uuid.UUID
    keys: dict[Role, tuple[str, str]]

    def headers(self, role: Role = Role.ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[role][1]}"}

    def key_id(self, role: Role = Role.ADMIN) -> str:
        return self.keys[role][0]


MakeOrg = Callable[..., Awaitable[Org]]


@pytest.fixture
def make_org(ctx: AppContext) -> MakeOrg:
    async def make(executions_per_minute: int | None = None) -> Org:
        created = await create_org(ctx.engine, ctx.hasher, f"org-{uuid.uuid4().hex[:12]}",
                                   executions_per_minute=executions_per_minute)
        org = Org(created.org_id, {Role.ADMIN: (created.key_id, created.key)})
        for role in Role:
            if role is Role.ADMIN:
                continue
            async with ctx.engine.begin() as conn:
                new = ctx.hasher.mint()
                await conn.execute(api_keys.insert().values(
                    id=new.key_id, org_id=created.org_id, name=role.value, role=role.value,
                    secret_hash=new.secret_hash))
            org.keys[role] = (new.key_id, new.plaintext)
        return org

    return make


@pytest.fixture
async def org(make_org: MakeOrg) -> Org:
    return await make_org()


@pytest.fixture
async def other_org(make_org: MakeOrg) -> Org:
    return await make_org()


Publish = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def publish(client: httpx.AsyncClient) -> Publish:
    """Create and publish a workflow; return the workflow document."""

    async def run(org: Org, slug: str | None = None, spec: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
        return await _publish(client, org, slug, spec)

    return run


async def _publish(
    client: httpx.AsyncClient, org: Org, slug: str | None, spec: dict[str, Any] | None
) -> dict[str, Any]:
    slug = slug or f"wf-{uuid.uuid4().hex[:8]}"
    created = await client.post("/api/workflows", headers=org.headers(), json={
        "slug": slug, "name": slug, "spec": spec if spec is not None else VALID_SPEC})
    assert created.status_code == 201, created.text
    published = await client.post(f"/api/workflows/{slug}/publish", headers=org.headers())
    assert published.status_code == 201, published.text
    got = await client.get(f"/api/workflows/{slug}", headers=org.headers())
    doc: dict[str, Any] = got.json()
    return doc



async def read_events(
    kafka: KafkaSettings, topic: str, want: Callable[[Event], bool], *, count: int,
    timeout_s: float = 20.0, settle_s: float = 1.0,
) -> list[Event]:
    """Events on `topic` matching `want`: waits for `count`, then `settle_s` more for extras."""
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(kafka.partitions)])
        await consumer.seek_to_beginning()
        found: list[Event] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        settled_at: float | None = None
        while loop.time() < deadline and (settled_at is None or loop.time() < settled_at):
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    event = decode(record.value, record.headers)
                    if want(event):
                        found.append(event)
            if len(found) >= count and settled_at is None:
                settled_at = loop.time() + settle_s
        return found
    finally:
        await consumer.stop()


@pytest.fixture
async def relay(ctx: AppContext, live_kafka: KafkaSettings) -> AsyncIterator[OutboxRelay]:
    """The outbox relay, running against the real Kafka for the test's duration."""
    relay = OutboxRelay(ctx.pool, live_kafka, idle_s=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    yield relay
    stop.set()
    await asyncio.wait_for(task, 30)


class Customer(BaseModel):
    name: str
    email: str


def _upstream_app() -> FastAPI:
    """A small real service with an OpenAPI document, standing in for a connected service."""
    service = FastAPI(title="crm")

    @service.get("/")
    async def root() -> dict[str, str]:
        return {"status": "up"}

    @service.post("/customers", summary="Create a customer", operation_id="createCustomer")
    async def create_customer(customer: Customer) -> Customer:
        return customer

    return service


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """Base URL of a real HTTP service on a free local port (uvicorn in a thread)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(_upstream_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
