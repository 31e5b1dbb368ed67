"""How a fetched record is handed to the conductor: at once, unless its delivery must wait."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mode import Service
from mode.services import WaitResults

from cadenza_scheduler.app import _deliver


class FakeConsumer(Service):  # type: ignore[misc]
    """What `_deliver` uses of Faust's consumer: `wait_first` (mode's own) and the flow flag."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()
        self.waits = 0

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        self.waits += 1
        return await super().wait_first(*coros, timeout=timeout)


async def test_a_delivery_that_need_not_wait_is_done_before_deliver_returns() -> None:
    consumer = FakeConsumer()
    delivered: list[str] = []

    async def on_message() -> None:
        delivered.append("record")

    await _deliver(consumer, on_message())

    assert delivered == ["record"]
    assert consumer.waits == 0


async def test_a_delivery_that_waits_resumes_where_it_stopped() -> None:
    consumer = FakeConsumer()
    room = asyncio.Event()
    steps: list[str] = []

    async def on_message() -> None:
        steps.append("decoded")
        await room.wait()
        steps.append("queued")

    delivering = asyncio.create_task(_deliver(consumer, on_message()))
    await asyncio.sleep(0.01)
    assert steps == ["decoded"]

    room.set()
    await asyncio.wait_for(delivering, 1)

    assert steps == ["decoded", "queued"]
    assert consumer.waits == 1


async def test_a_waiting_delivery_is_abandoned_when_the_flow_stops() -> None:
    consumer = FakeConsumer()
    outcome: list[str] = []

    async def on_message() -> None:
        try:
            await asyncio.Event().wait()  # flow control suspended for a rebalance
            outcome.append("queued")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    delivering = asyncio.create_task(_deliver(consumer, on_message()))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    await asyncio.wait_for(delivering, 1)
    await asyncio.sleep(0)

    assert outcome == ["cancelled"]


async def test_an_error_after_the_wait_reaches_the_caller() -> None:
    consumer = FakeConsumer()
    room = asyncio.Event()

    async def on_message() -> None:
        await room.wait()
        raise ValueError("undecodable")

    delivering = asyncio.create_task(_deliver(consumer, on_message()))
    await asyncio.sleep(0.01)
    room.set()

    with pytest.raises(ValueError, match="undecodable"):
        await asyncio.wait_for(delivering, 1)


async def test_a_value_sent_into_the_delivery_after_its_wait_arrives() -> None:
    consumer = FakeConsumer()
    answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    got: list[str] = []

    async def on_message() -> None:
        got.append(await answer)

    delivering = asyncio.create_task(_deliver(consumer, on_message()))
    await asyncio.sleep(0.01)
    answer.set_result("partition 3")
    await asyncio.wait_for(delivering, 1)

    assert got == ["partition 3"]
