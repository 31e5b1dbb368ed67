"""Prometheus metrics of the approvals service: open tasks, decisions, time to decision."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS_OPEN = Gauge("cadenza_approvals_tasks_open", "Approval tasks waiting for a decision")
TASKS_CLOSED = Counter(
    "cadenza_approvals_tasks_closed_total", "Approval tasks closed, by final status", ["status"]
)
DECISIONS = Counter(
    "cadenza_approvals_decisions_total",
    "Submitted decisions, by outcome (accepted or the refusal reason)",
    ["outcome"],
)
TIME_TO_DECISION = Histogram(
    "cadenza_approvals_time_to_decision_seconds",
    "From the approval request to the decision that ended the task",
    buckets=(1, 5, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 3 * 86400, 7 * 86400),
)
OUTCOMES_EMITTED = Counter(
    "cadenza_approvals_outcomes_emitted_total",
    "Step outcomes sent to executions.commands (resent ones included)",
)
