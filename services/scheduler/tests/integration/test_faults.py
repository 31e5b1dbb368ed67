"""Crashes and scale-out: SIGKILLed schedulers lose nothing and leave nothing stuck."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from cadenza_common import events as ev

from .conftest import Harness, SchedulerProcess, call, workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FIVE_STEPS = workflow(
    call("a"), call("b", "a"), call("c", "a"), call("d", "b", "c"), call("e", "d")
)
NODES = {"a", "b", "c", "d", "e"}


def terminal_transitions(harness: Harness, execution_id: uuid.UUID) -> tuple[Counter[str], int]:
    """Distinct terminal transitions per node (by event id) and how many records repeated one."""
    records = harness.history.of_type(execution_id, ev.StepSucceeded | ev.StepFailed)
    distinct = {e.event_id: e.node_id for e in records}
    return Counter(distinct.values()), len(records) - len(distinct)


async def test_executions_survive_three_sigkills(
    schedulers: Callable[[], SchedulerProcess], harness: Harness
) -> None:
    rng = random.Random(7)
    harness.runner.delay_s = lambda: rng.uniform(0.0, 0.3)
    scheduler = schedulers()
    scheduler.start()
    await scheduler.wait_ready()
    ids = [await harness.request(FIVE_STEPS) for _ in range(200)]

    for _ in range(3):
        await asyncio.sleep(rng.uniform(0.5, 2.5))
        scheduler.kill()
        scheduler.start()
        await scheduler.wait_ready()
    await harness.history.wait_finished(ids, timeout=120)

    repeated = 0
    for execution_id in ids:
        assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)
        per_node, dupes = terminal_transitions(harness, execution_id)
        assert per_node == Counter(dict.fromkeys(NODES, 1))
        repeated += dupes
    ready_dupes = sum(n - 1 for n in harness.runner.readies.values())
    print(f"crash test: {ready_dupes} duplicate StepReady, {repeated} repeated terminal records")


@pytest.mark.parametrize("committed_before", [False, True], ids=["first-answers", "later-answers"])
async def test_answers_that_arrived_while_the_scheduler_was_down_are_all_applied(
    schedulers: Callable[[], SchedulerProcess], harness: Harness, committed_before: bool
) -> None:
    """The restarted scheduler finds a backlog of answers on every partition of executions.commands.

    Two Faust hazards lost such backlogs (see `app._consumer_class` and `app._Recovery`):
    records returned for partitions not yet active were dropped with the position moved
    past them (lost where no offset was committed yet: `first-answers`), and records
    fetched while the partitions were seeked were cleared from the streams' queues and
    committed past as a gap (`later-answers`, where every partition has a committed
    offset to seek to).
    """
    two_steps = workflow(call("a"), call("b", "a"))
    scheduler = schedulers()
    scheduler.start()
    await scheduler.wait_ready()
    ids = []
    if committed_before:
        ids = [await harness.request(two_steps) for _ in range(60)]
        await harness.history.wait_finished(ids, timeout=60)
        await asyncio.sleep(2.0)  # past the commit interval: every partition has an offset
    harness.runner.delay_s = lambda: 5.0  # the answers to "a" arrive while it is down
    waiting = [await harness.request(two_steps) for _ in range(300)]
    ids += waiting
    readies = 2 * (len(ids) - len(waiting)) + len(waiting)  # a and b of the first ones
    await harness.history.wait_for(lambda: len(harness.runner.readies) >= readies, 60)
    scheduler.kill()
    await harness.history.wait_for(lambda: all(t.done() for t in harness.runner.pending), 30)
    harness.runner.delay_s = None
    scheduler.start()
    await scheduler.wait_ready()
    await harness.history.wait_finished(ids, timeout=60)

    for execution_id in ids:
        assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)
        per_node, _ = terminal_transitions(harness, execution_id)
        assert per_node == Counter({"a": 1, "b": 1})


async def shared_out(*members: SchedulerProcess, timeout: float = 60.0) -> None:
    """Until every member is ready with a share of its own and the shares cover every
    partition once (a member ready after one rebalance may be in the next one)."""
    async with asyncio.timeout(timeout):
        while True:
            shares = []
            for member in members:
                status, body = await member.get("/health/ready")
                if status == 200:
                    shares.append(orjson.loads(body)["partitions"])
            owned = sorted(p for share in shares for p in share)
            if len(shares) == len(members) and all(shares) and owned == list(range(12)):
                return
            await asyncio.sleep(0.2)


async def test_a_second_scheduler_takes_over_the_partitions_of_a_killed_one(
    schedulers: Callable[[], SchedulerProcess], harness: Harness
) -> None:
    harness.runner.delay_s = lambda: 1.0
    first, second = schedulers(), schedulers()
    first.start()
    second.start()
    await asyncio.gather(first.wait_ready(), second.wait_ready())
    await shared_out(first, second)
    ids = list(await asyncio.gather(*(harness.request(FIVE_STEPS) for _ in range(60))))
    # every execution started (its first step asked for), none can have finished yet: each
    # takes at least four answers of 1 s (requested one by one on a loaded machine, the
    # first ones had finished before the last was sent)
    await harness.history.wait_for(lambda: len({r[0] for r in harness.runner.readies}) >= 60, 30)
    in_flight = [i for i in ids if harness.history.finished(i) is None]

    first.kill()
    await harness.history.wait_finished(ids, timeout=60)

    for execution_id in ids:
        assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)
        per_node, _ = terminal_transitions(harness, execution_id)
        assert per_node == Counter(dict.fromkeys(NODES, 1))
    assert len(in_flight) == len(ids)
    status, body = await second.get("/health/ready")
    assert status == 200
    assert b'"partitions":[0,1,2,3,4,5,6,7,8,9,10,11]' in body.replace(b" ", b"")
