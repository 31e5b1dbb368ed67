"""How the agent takes its batches from a Faust stream (`app.take_available`), no broker.

A real Faust app, channel and stream: only the Kafka consumer is never started. A busy task
stands for the rest of the scheduler's loop (fetches, acknowledgements, the timer task):
each loop turn takes half a millisecond, and Faust's iterator hands over an event a turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import faust
import pytest
from faust.types.tuples import ConsumerMessage

from cadenza_scheduler.app import take_available

TOPIC = "t.executions.commands"


@pytest.fixture
async def stream() -> AsyncIterator[Any]:
    app = faust.App("take-available-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.flow_control.resume()
    app.topics._acking_topics.add(TOPIC)
    stream = app.stream(app.channel())

    async def rest_of_the_loop() -> None:
        while True:
            time.sleep(0.0005)
            await asyncio.sleep(0)

    busy = asyncio.create_task(rest_of_the_loop())
    yield stream
    busy.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await busy
    await stream.stop()


def queue(stream: Any, offsets: range, generation: int | None = None) -> list[Any]:
    """Events of TOPIC partition 0 at `offsets`, put straight into the stream's channel, as
    Faust's conductor delivers fetched records."""
    if generation is None:
        generation = stream.app.consumer_generation_id
    events = []
    for offset in offsets:
        message = ConsumerMessage(
            TOPIC, 0, offset, 0.0, 0, None, b"k", b"v", None, generation_id=generation
        )
        event = stream.channel._create_event(b"k", offset, None, message)
        stream.channel.queue.put_nowait(event)
        events.append(event)
    return events


async def batches(stream: Any, count: int, max_: int = 500) -> list[list[int]]:
    """The offsets of the first `count` batches the agent would take."""
    taken: list[list[int]] = []
    async with asyncio.timeout(5):
        async for batch in take_available(stream, max_, 0.001):
            taken.append([event.message.offset for event in batch])
            if len(taken) == count:
                break
    return taken


async def test_a_backlog_in_the_channel_is_taken_as_one_batch_in_order(stream: Any) -> None:
    events = queue(stream, range(300))

    (first,) = await batches(stream, 1)

    # Faust's iterator alone hands over a few in the batch's first millisecond
    assert first == list(range(300))
    # tracked as unacked (a weak set: `events` keeps them), and the agent's acks commit them
    consumer = stream.app.consumer
    assert set(consumer.unacked) == {event.message for event in events}
    for event in events:
        await stream.ack(event)
    assert not consumer.unacked
    assert sorted(consumer._acked[events[0].message.tp]) == first  # what the commit reads


async def test_a_full_batch_leaves_the_rest_for_the_next_ones_in_order(stream: Any) -> None:
    queue(stream, range(25))

    taken = await batches(stream, 3, max_=10)

    assert [offset for batch in taken for offset in batch] == list(range(25))
    assert all(len(batch) <= 10 for batch in taken)


async def test_events_of_an_older_consumer_generation_are_dropped_unacked(stream: Any) -> None:
    current = stream.app.consumer_generation_id
    events = queue(stream, range(0, 5))
    events += queue(stream, range(5, 10), generation=current - 1)  # fetched before a rebalance
    events += queue(stream, range(10, 12))

    (first,) = await batches(stream, 1)

    assert first == [0, 1, 2, 3, 4, 10, 11]
    assert {m.offset for m in stream.app.consumer.unacked} == set(first)
