"""The outbox relay on real Postgres with a fake producer: order, marking, one at a time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from cadenza_common.db.tables import outbox
from cadenza_common.events import CancelRequested
from cadenza_common.settings import KafkaSettings
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.outbox import OutboxRelay, outbox_row

pytestmark = pytest.mark.integration


class FakeProducer:
    """Records what it is asked to send; can hold every send until released."""

    def __init__(self, hold: asyncio.Event | None = None) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self._hold = hold

    async def send(
        self, topic: str, value: bytes, *, key: bytes, headers: Any
    ) -> asyncio.Future[None]:
        self.sent.append((topic, key))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._hold is None:
            future.set_result(None)
        else:
            hold = self._hold
            asyncio.get_running_loop().create_task(_release(hold, future))
        return future


async def _release(hold: asyncio.Event, future: asyncio.Future[None]) -> None:
    await hold.wait()
    future.set_result(None)


async def _enqueue(ctx: AppContext, n: int) -> list[str]:
    org_id = uuid.uuid4()
    keys = []
    async with ctx.engine.begin() as conn:
        for i in range(n):
            event = CancelRequested(execution_id=uuid.uuid4(), org_id=org_id, reason=str(i))
            keys.append(str(event.execution_id))
            await conn.execute(outbox.insert().values(outbox_row("t", event)))
    return keys


async def _drain_all(relay: OutboxRelay, producer: FakeProducer) -> None:
    while await relay.relay_once(producer) > 0:  # type: ignore[arg-type]
        pass


async def test_relay_sends_rows_in_id_order_and_marks_them_sent(
    ctx: AppContext, api_kafka: KafkaSettings
) -> None:
    relay = OutboxRelay(ctx.pool, api_kafka, batch_size=7)
    await _drain_all(relay, FakeProducer())  # rows other tests left behind
    keys = await _enqueue(ctx, 20)
    producer = FakeProducer()

    await _drain_all(relay, producer)
    async with ctx.engine.connect() as conn:
        unsent = (await conn.execute(sa.select(sa.func.count()).select_from(outbox)
                                     .where(outbox.c.sent_at.is_(None)))).scalar_one()

    assert [k.decode() for _, k in producer.sent] == keys
    assert unsent == 0


async def test_only_one_replica_relays_at_a_time(ctx: AppContext, api_kafka: KafkaSettings
                                                 ) -> None:
    first, second = (OutboxRelay(ctx.pool, api_kafka) for _ in range(2))
    await _drain_all(first, FakeProducer())
    await _enqueue(ctx, 3)
    hold = asyncio.Event()
    slow = FakeProducer(hold)

    in_flight = asyncio.create_task(first.relay_once(slow))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    meanwhile = await second.relay_once(FakeProducer())  # type: ignore[arg-type]
    hold.set()
    sent = await asyncio.wait_for(in_flight, 10)

    assert meanwhile == 0
    assert sent == 3
