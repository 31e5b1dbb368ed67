"""Durable timers: a `wait: 2s` fires after two seconds, also across a SIGKILL and restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from cadenza_common import events as ev

from .conftest import Harness, SchedulerProcess, call, workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]


@pytest.mark.parametrize("kill_during_wait", [False, True], ids=["running", "sigkill-restart"])
async def test_wait_step_fires_after_its_duration(
    schedulers: Callable[[], SchedulerProcess], harness: Harness, kill_during_wait: bool
) -> None:
    scheduler = schedulers()
    scheduler.start()
    await scheduler.wait_ready()
    execution_id = await harness.request(
        workflow({"id": "w", "type": "wait", "duration": "2s"}, call("b", "w"))
    )
    await harness.history.wait_for(
        lambda: bool(harness.history.of_type(execution_id, ev.ExecutionStarted)), timeout=30
    )

    if kill_during_wait:
        await asyncio.sleep(0.8)
        scheduler.kill()
        scheduler.start()
    await harness.history.wait_finished([execution_id], timeout=90)

    assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)
    started = harness.history.of_type(execution_id, ev.ExecutionStarted)[0].occurred_at
    waited = {
        e.node_id: e.occurred_at for e in harness.history.of_type(execution_id, ev.StepSucceeded)
    }
    assert (waited["w"] - started).total_seconds() >= 2.0
    assert "b" in waited
