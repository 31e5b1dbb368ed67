"""How the agent takes its batches of input records (`app.Inbox`), no broker.

A real Faust app, consumer (never started) and flow control; records are Faust's
`ConsumerMessage`s, put as `_take` hands them over after a fetch.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest
from faust.types.tuples import ConsumerMessage

from cadenza_scheduler.app import Inbox

TOPIC = "t.executions.commands"


@pytest.fixture
async def inbox() -> Inbox:
    app = faust.App("inbox-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.flow_control.resume()
    app.topics._acking_topics.add(TOPIC)
    return Inbox(app, TOPIC, maxsize=1_000)


def message(inbox: Inbox, offset: int, generation: int | None = None) -> Any:
    if generation is None:
        generation = inbox.app.consumer_generation_id
    return ConsumerMessage(
        TOPIC, 0, offset, 0.0, 0, None, b"k", b"v", None, generation_id=generation
    )


async def put(inbox: Inbox, offsets: range, generation: int | None = None) -> list[Any]:
    messages = [message(inbox, offset, generation) for offset in offsets]
    for m in messages:
        await inbox.put(m)
    return messages


async def batches(inbox: Inbox, count: int, max_: int = 500) -> list[list[int]]:
    """The offsets of the first `count` batches the agent would take."""
    taken: list[list[int]] = []
    async with asyncio.timeout(5):
        async for batch in inbox.batches(max_, 0.001):
            taken.append([m.offset for m in batch])
            if len(taken) == count:
                break
    return taken


async def test_a_backlog_is_taken_as_one_batch_in_order_and_its_acks_commit(
    inbox: Inbox,
) -> None:
    messages = await put(inbox, range(300))

    (first,) = await batches(inbox, 1)

    assert first == list(range(300))
    # tracked as unacked (a weak set: `messages` keeps them), as Faust's conductor does, so
    # a rebalance waits for the batch that holds them; the agent's acks are what commits
    consumer = inbox.app.consumer
    assert set(consumer.unacked) == set(messages)
    for m in messages:
        consumer.ack(m)
    assert not consumer.unacked
    assert sorted(consumer._acked[messages[0].tp]) == first  # what the commit reads


async def test_a_full_batch_leaves_the_rest_for_the_next_ones_in_order(inbox: Inbox) -> None:
    await put(inbox, range(25))

    taken = await batches(inbox, 3, max_=10)

    assert [offset for batch in taken for offset in batch] == list(range(25))
    assert all(len(batch) <= 10 for batch in taken)
    assert not inbox.messages
    assert not inbox.arrived.is_set()


async def test_records_of_an_older_consumer_generation_are_dropped_untracked(
    inbox: Inbox,
) -> None:
    current = inbox.app.consumer_generation_id
    await put(inbox, range(0, 5))
    stale = await put(inbox, range(5, 10), generation=current - 1)  # fetched before a rebalance
    await put(inbox, range(10, 12))

    (first,) = await batches(inbox, 1)

    assert first == [0, 1, 2, 3, 4, 10, 11]
    assert not any(m in inbox.app.consumer.unacked for m in stale)


async def test_flow_control_holds_records_back_and_drops_what_the_inbox_holds(
    inbox: Inbox,
) -> None:
    flow = inbox.app.flow_control
    held = await put(inbox, range(3))

    flow.suspend()  # a rebalance starts: Faust suspends, then clears its queues
    flow.clear()
    assert not inbox.messages
    waiting = asyncio.create_task(inbox.put(message(inbox, 3)))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # a fetched record waits, as the conductor's delivery does

    flow.resume()  # clears the queues again, then lets the waiting record in
    await asyncio.wait_for(waiting, 1)

    (first,) = await batches(inbox, 1)
    assert first == [3]
    assert all(not m.acked for m in held)  # dropped unacked: fetched again after the rebalance


async def test_a_full_inbox_holds_the_next_record_back_until_a_batch_is_taken(
    inbox: Inbox,
) -> None:
    await put(inbox, range(1_000))
    waiting = asyncio.create_task(inbox.put(message(inbox, 1_000)))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the drain loop waits: aiokafka fetches no further

    (first,) = await batches(inbox, 1, max_=500)
    await asyncio.wait_for(waiting, 1)

    assert first == list(range(500))
    assert [m.offset for m in inbox.messages] == list(range(500, 1_001))
