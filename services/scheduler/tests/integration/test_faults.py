"""Crashes and scale-out: SIGKILLed schedulers lose nothing and leave nothing stuck."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Callable

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


async def test_a_second_scheduler_takes_over_the_partitions_of_a_killed_one(
    schedulers: Callable[[], SchedulerProcess], harness: Harness
) -> None:
    harness.runner.delay_s = lambda: 0.4
    first, second = schedulers(), schedulers()
    first.start()
    second.start()
    await asyncio.gather(first.wait_ready(), second.wait_ready())
    await harness.history.wait_for(lambda: True, timeout=1)
    shares = [(await s.get("/health/ready"))[1] for s in (first, second)]
    assert all(b'"partitions":[]' not in share.replace(b" ", b"") for share in shares)
    ids = [await harness.request(FIVE_STEPS) for _ in range(60)]
    await asyncio.sleep(1.0)
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
