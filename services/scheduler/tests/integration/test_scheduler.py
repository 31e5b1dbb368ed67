"""The scheduler process against real Kafka: workflows run, bad records go to the DLQ."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest

from cadenza_common import events as ev
from cadenza_common.kafka import encode

from .conftest import Harness, SchedulerProcess, call, succeed, workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_three_step_workflow_runs_to_success(
    schedulers: Callable[[], SchedulerProcess], harness: Harness
) -> None:
    scheduler = schedulers()
    # a young threshold any batch crosses: the agent collects between batches
    scheduler.start(CADENZA_SCHEDULER_GC_THRESHOLDS="[50, 10, 10]")
    execution_id = await harness.request(workflow(call("a"), call("b", "a"), call("c", "b")))

    await scheduler.wait_ready()
    await harness.history.wait_finished([execution_id], timeout=60)

    assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)
    done = [e.node_id for e in harness.history.of_type(execution_id, ev.StepSucceeded)]
    assert done == ["a", "b", "c"]
    seqs = [e.seq for e in harness.history.events[execution_id]]
    assert seqs == sorted(seqs)
    status, body = await scheduler.get("/metrics")
    assert status == 200
    assert b"cadenza_scheduler_transitions_total" in body
    assert b'_gc_pause_seconds_count{generation="0",trigger="between_batches"}' in body
    requests = re.search(rb"^cadenza_scheduler_produce_requests_total ([0-9.e+]+)$", body, re.M)
    assert requests is not None
    assert float(requests.group(1)) >= 1  # the states and emits went out in our own requests
    fetches = re.search(rb"^cadenza_scheduler_fetch_requests_total ([0-9.e+]+)$", body, re.M)
    assert fetches is not None
    assert float(fetches.group(1)) >= 1  # the input topic came through the intake


async def test_malformed_records_go_to_the_dlq_and_the_partition_keeps_flowing(
    schedulers: Callable[[], SchedulerProcess], harness: Harness
) -> None:
    scheduler = schedulers()
    scheduler.start()
    execution_id = uuid.uuid4()
    key = str(execution_id).encode()
    good = encode(
        ev.StepSucceeded(execution_id=execution_id, org_id=uuid.uuid4(), node_id="x"),
        source="/test",
    )
    await harness.producer.send_and_wait(
        harness.topics.executions_commands, b"{not json", key=key, headers=good.headers
    )
    await harness.producer.send_and_wait(
        harness.topics.executions_commands, b"{}", key=key, headers=[("ce_type", b"nope")]
    )

    await harness.request(workflow(call("a"), call("b", "a")), execution_id=execution_id)
    await scheduler.wait_ready()
    await harness.history.wait_finished([execution_id], timeout=60)
    await harness.history.wait_for(lambda: len(harness.history.dlq) == 2, timeout=10)

    assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)
    headers = [dict(r.headers) for r in harness.history.dlq]
    assert {h["dlq_topic"].decode() for h in headers} == {harness.topics.executions_commands}
    reasons = sorted(h["dlq_reason"].decode() for h in headers)
    assert "malformed JSON" in reasons[0]
    assert "nope" in reasons[1]
    assert all(dict(r.headers)["dlq_consumer"] for r in harness.history.dlq)


async def test_duplicated_and_late_completions_change_nothing(
    schedulers: Callable[[], SchedulerProcess], harness: Harness
) -> None:
    previous: dict[uuid.UUID, ev.Event] = {}

    def answer_twice_and_repeat_the_last(ready: ev.StepReady) -> list[ev.Event]:
        [done] = succeed(ready)
        late = previous.get(ready.execution_id)
        previous[ready.execution_id] = done
        return [done, done] + ([late] if late is not None else [])

    harness.runner.answer = answer_twice_and_repeat_the_last
    scheduler = schedulers()
    scheduler.start()
    ids = [
        await harness.request(
            workflow(call("a"), call("b", "a"), call("c", "a"), call("d", "b", "c"))
        )
        for _ in range(5)
    ]

    await scheduler.wait_ready()
    await harness.history.wait_finished(ids, timeout=60)

    for execution_id in ids:
        assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)
        done = sorted(e.node_id for e in harness.history.of_type(execution_id, ev.StepSucceeded))
        assert done == ["a", "b", "c", "d"]
    assert all(n == 1 for n in harness.runner.readies.values())
