"""Workflows through the scheduler process: onboarding branches, fork/join, retry with backoff.

The harness plays the step-runner (answers StepReady by node id) and the approvals service
(answers ApprovalRequested seen on executions.events with a StepSucceeded decision).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from cadenza_common import events as ev
from cadenza_common.kafka import send_event
from cadenza_common.workflow import load_workflow_text

from .conftest import ORG, Harness, SchedulerProcess, call, succeeded, workflow

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ONBOARDING: dict[str, Any] = load_workflow_text(
    (Path(__file__).parents[4] / "examples" / "onboarding.yaml").read_text()
)


@pytest.fixture
async def scheduler(schedulers: Callable[[], SchedulerProcess]) -> SchedulerProcess:
    proc = schedulers()  # the `schedulers` fixture kills it at teardown
    proc.start()
    await proc.wait_ready()
    return proc


def answering(outputs: dict[str, Any]) -> Callable[[ev.StepReady], list[ev.Event]]:
    """A runner answering each node with its output in `outputs` (default: `{}`)."""

    def answer(ready: ev.StepReady) -> list[ev.Event]:
        return [succeeded(ready, outputs.get(ready.node_id, {}))]

    return answer


@contextlib.asynccontextmanager
async def approver(harness: Harness, decisions: dict[str, str]) -> AsyncIterator[None]:
    """Answers every ApprovalRequested for a node in `decisions` (as the approvals service)."""

    async def loop() -> None:
        answered: set[tuple[Any, str, int]] = set()
        while True:
            for events in list(harness.history.events.values()):
                for request in [e for e in events if isinstance(e, ev.ApprovalRequested)]:
                    mark = (request.execution_id, request.node_id, request.attempt)
                    if mark in answered or request.node_id not in decisions:
                        continue
                    answered.add(mark)
                    decided = ev.StepSucceeded(
                        execution_id=request.execution_id,
                        org_id=ORG,
                        node_id=request.node_id,
                        attempt=request.attempt,
                        output={"decision": decisions[request.node_id], "approvers": ["u1"]},
                    )
                    await send_event(
                        harness.producer, harness.topics.executions_commands, decided, source="/t"
                    )
            await asyncio.sleep(0.05)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def succeeded_nodes(harness: Harness, execution_id: Any) -> set[str]:
    return {e.node_id for e in harness.history.of_type(execution_id, ev.StepSucceeded)}


@pytest.mark.parametrize(
    ("outputs", "decisions", "status", "ran"),
    [
        (
            {"capture_ktp": {"verdict": "passed"}, "aml_screening": {"result": "clear"}},
            {},
            ev.ExecutionSucceeded,
            {"capture_ktp", "route_kyc", "aml_screening", "route_aml", "onboarded_webhook"},
        ),
        (
            {"capture_ktp": {"verdict": "requires_review"}, "aml_screening": {"result": "clear"}},
            {"kyc_review": "approved"},
            ev.ExecutionSucceeded,
            {"kyc_review", "review_gate", "aml_screening", "onboarded_webhook"},
        ),
        (
            {"capture_ktp": {"verdict": "rejected"}},
            {},
            ev.ExecutionSucceeded,
            {"capture_ktp", "route_kyc", "reject_customer"},
        ),
        (
            {"capture_ktp": {"verdict": "passed"}, "aml_screening": {"result": "confirmed_hit"}},
            {"mlro_approval": "rejected"},
            ev.ExecutionFailed,
            {"capture_ktp", "aml_screening", "compensate:capture_ktp"},
        ),
    ],
    ids=["passed-clear", "review-approved", "identity-rejected", "aml-hit-mlro-rejects"],
)
async def test_onboarding_runs_to_its_end_along_each_branch(
    scheduler: SchedulerProcess,
    harness: Harness,
    outputs: dict[str, Any],
    decisions: dict[str, str],
    status: type[ev.Event],
    ran: set[str],
) -> None:
    harness.runner.answer = answering(outputs)

    async with approver(harness, decisions):
        execution_id = await harness.request(ONBOARDING)
        await harness.history.wait_finished([execution_id], timeout=60)

    assert isinstance(harness.history.finished(execution_id), status)
    assert ran <= succeeded_nodes(harness, execution_id)


async def test_fork_join_starts_the_join_only_after_both_branches_succeeded(
    scheduler: SchedulerProcess, harness: Harness
) -> None:
    harness.runner.delay_s = lambda: 0.2
    flow = workflow(call("a"), call("b", "a"), call("c", "a"), call("d", "b", "c"))

    execution_id = await harness.request(flow)
    await harness.history.wait_finished([execution_id], timeout=60)

    history = harness.history.events[execution_id]
    seq = {
        (type(e).__name__, getattr(e, "node_id", None)): e.seq
        for e in history
        if isinstance(e, ev.StepScheduled | ev.StepSucceeded)
    }
    assert seq[("StepScheduled", "b")] > seq[("StepSucceeded", "a")]
    assert seq[("StepScheduled", "c")] > seq[("StepSucceeded", "a")]
    joined = max(seq[("StepSucceeded", "b")], seq[("StepSucceeded", "c")])
    assert seq[("StepScheduled", "d")] > joined
    assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)


async def test_a_retryable_failure_is_retried_with_backoff_until_it_succeeds(
    scheduler: SchedulerProcess, harness: Harness
) -> None:
    retry = {"max_attempts": 3, "initial_interval": "1s", "backoff_coefficient": 2, "jitter": 0}
    flow = workflow(call("a", retry=retry))

    def flaky(ready: ev.StepReady) -> list[ev.Event]:
        if ready.attempt < 3:
            error = ev.StepError(error_class=ev.ErrorClass.HTTP_5XX, message="503", retryable=True)
            return [
                ev.StepFailed(
                    execution_id=ready.execution_id,
                    org_id=ready.org_id,
                    node_id=ready.node_id,
                    attempt=ready.attempt,
                    error=error,
                )
            ]
        return answering({})(ready)

    harness.runner.answer = flaky
    execution_id = await harness.request(flow)
    await harness.history.wait_finished([execution_id], timeout=60)

    scheduled = {
        e.attempt: e.occurred_at for e in harness.history.of_type(execution_id, ev.StepScheduled)
    }
    failed = {
        e.attempt: e.occurred_at for e in harness.history.of_type(execution_id, ev.StepFailed)
    }
    assert sorted(scheduled) == [1, 2, 3]
    assert (scheduled[2] - failed[1]).total_seconds() >= 1.0
    assert (scheduled[3] - failed[2]).total_seconds() >= 2.0
    assert isinstance(harness.history.finished(execution_id), ev.ExecutionSucceeded)
