"""`make run`'s scenario: one onboarding execution per branch, approvals decided through the
API, each execution's trace printed as a timeline, and a check that it ended as expected."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from cadenza_devstack.demo_setup import auth, expect

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})


@dataclass(frozen=True)
class Branch:
    """One path through the onboarding workflow and what it must end with."""

    name: str
    nik: str
    full_name: str
    expect_status: str
    expect_steps: dict[str, str]
    decisions: tuple[tuple[str, str], ...] = ()


BRANCHES: tuple[Branch, ...] = (
    Branch("identity passed, screening clear", "3171234567890001", "Siti Rahma", "succeeded",
           {"aml_screening": "succeeded", "onboarded_webhook": "succeeded",
            "reject_customer": "skipped"}),
    Branch("identity needs review, approved", "3171234567890007", "Andi Wijaya", "succeeded",
           {"kyc_review": "succeeded", "onboarded_webhook": "succeeded"},
           (("kyc_review", "approve"),)),
    Branch("identity needs review, rejected", "3171234567890017", "Rina Putri", "succeeded",
           {"kyc_review": "succeeded", "reject_customer": "succeeded",
            "aml_screening": "skipped"},
           (("kyc_review", "reject"),)),
    Branch("identity rejected", "3171234567890008", "Joko Susilo", "succeeded",
           {"reject_customer": "succeeded", "aml_screening": "skipped"}),
    Branch("AML confirmed hit, MLRO approves", "3171234567890002", "Dewi Sanksi", "succeeded",
           {"mlro_approval": "succeeded", "onboarded_webhook": "succeeded"},
           (("mlro_approval", "approve"),)),
    Branch("AML confirmed hit, MLRO rejects: compensated", "3171234567890003", "Budi Pencuci",
           "failed", {"mlro_approval": "failed", "capture_ktp": "compensated",
                      "onboarded_webhook": "skipped"},
           (("mlro_approval", "reject"),)),
)


@dataclass
class Outcome:
    """How one branch ended."""

    branch: Branch
    execution: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class Keys:
    admin: str
    approver: str


async def wait_for(check: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Call the async `check` until it returns something truthy.

    Raises:
        TimeoutError: naming `what` after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")
        await asyncio.sleep(interval)


async def decide(api: httpx.AsyncClient, keys: Keys, execution_id: str, node: str,
                 decision: str, timeout: float) -> None:
    """Wait for the approval task in the approver's inbox, then decide it through the API."""

    async def task() -> bool:
        inbox = expect(await api.get("/api/approvals", headers=auth(keys.approver),
                                     params={"limit": 200}), 200)
        return any(i["executionId"] == execution_id and i["nodeId"] == node
                   for i in inbox["items"])

    await wait_for(task, timeout, f"the {node} approval task")
    expect(await api.post(f"/api/executions/{execution_id}/approve",
                          headers=auth(keys.approver),
                          json={"stepId": node, "decision": decision,
                                "comment": f"demo: {decision}"}), 202)


async def finished(api: httpx.AsyncClient, key: str, execution_id: str,
                   timeout: float) -> dict[str, Any]:
    """The execution once the read model shows it terminal."""

    async def read() -> dict[str, Any] | None:
        body: dict[str, Any] = expect(
            await api.get(f"/api/executions/{execution_id}", headers=auth(key)), 200)
        return body if body["status"] in TERMINAL else None

    result: dict[str, Any] = await wait_for(read, timeout, f"execution {execution_id}")
    return result


async def run_branch(api: httpx.AsyncClient, keys: Keys, slug: str, branch: Branch,
                     stamp: str, timeout: float) -> Outcome:
    """Execute one branch to its end and compare it with what it should be."""
    outcome = Outcome(branch)
    customer = f"cus-{stamp}-{branch.nik[-2:]}"
    try:
        started = expect(await api.post(
            f"/api/workflows/{slug}/execute", headers=auth(keys.admin),
            json={"externalId": f"demo-{stamp}-{branch.nik}",
                  "input": {"customer_id": customer, "ktp_number": branch.nik,
                            "full_name": branch.full_name}}), 202, 200)
        execution_id = str(started["executionId"])
        for node, decision in branch.decisions:
            await decide(api, keys, execution_id, node, decision, timeout)
        outcome.execution = await finished(api, keys.admin, execution_id, timeout)
    except (TimeoutError, httpx.HTTPError, RuntimeError) as exc:
        outcome.problems.append(str(exc))
        return outcome
    outcome.problems += problems(branch, outcome.execution)
    return outcome


def problems(branch: Branch, execution: dict[str, Any]) -> list[str]:
    """How an execution differs from what its branch expects."""
    found = [] if execution["status"] == branch.expect_status else [
        f"status {execution['status']}, expected {branch.expect_status}"]
    steps = {s["nodeId"]: s["status"] for s in execution.get("steps") or []}
    for node, status in branch.expect_steps.items():
        if steps.get(node) != status:
            found.append(f"{node} is {steps.get(node)}, expected {status}")
    return found


async def run_all(api: httpx.AsyncClient, keys: Keys, slug: str,
                  timeout: float = 90.0) -> list[Outcome]:
    """Every branch at once (each waits for its own approvals)."""
    stamp = uuid.uuid4().hex[:8]
    return list(await asyncio.gather(
        *(run_branch(api, keys, slug, b, stamp, timeout) for b in BRANCHES)))


def _at(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _ms(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    ms = (end - start).total_seconds() * 1000
    return f"{ms:,.0f} ms" if ms < 10_000 else f"{ms / 1000:,.1f} s"


def _order(step: dict[str, Any]) -> tuple[bool, str, str, str]:
    """Steps in the order they ran: by scheduling time, then by finishing time."""
    begun = step["scheduledAt"] or step["startedAt"]
    return (begun is None, begun or "", step["finishedAt"] or "~", step["nodeId"])


def timeline(outcome: Outcome) -> str:
    """One execution as a readable table: node, type, status, attempt, start, duration."""
    branch, execution = outcome.branch, outcome.execution
    mark = "ok" if outcome.ok else "UNEXPECTED: " + "; ".join(outcome.problems)
    if not execution:
        return f"\n== {branch.name}: {mark}"
    t0 = _at(execution.get("startedAt")) or _at(execution["createdAt"])
    lines = [f"\n== {branch.name}  [{mark}]",
             f"   execution {execution['id']}  {execution['status']}  in "
             f"{_ms(t0, _at(execution.get('finishedAt')))}",
             f"   {'node':<22} {'type':<15} {'status':<12} {'attempt':>7} {'at':>9} "
             f"{'duration':>10}"]
    steps = sorted(execution.get("steps") or [], key=_order)
    for step in steps:
        begun = _at(step["startedAt"]) or _at(step["scheduledAt"])
        offset = f"+{_ms(t0, begun)}" if begun else "-"
        lines.append(f"   {step['nodeId']:<22} {step['nodeType'] or '-':<15} "
                     f"{step['status']:<12} {step['attempts']:>7} {offset:>9} "
                     f"{_ms(begun, _at(step['finishedAt'])):>10}")
    return "\n".join(lines)
