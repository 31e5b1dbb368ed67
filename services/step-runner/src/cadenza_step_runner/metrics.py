"""Prometheus metrics of the step-runner (served on `CADENZA_METRICS_PORT` at `/metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS = Counter(
    "cadenza_step_runner_calls_total",
    "Step calls by connection and outcome",
    ["connection", "outcome"],
)
CALL_DURATION = Histogram(
    "cadenza_step_runner_call_duration_seconds",
    "Outbound call duration",
    ["connection"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("cadenza_step_runner_in_flight", "Records being handled", ["consumer"])
BREAKER_STATE = Gauge(
    "cadenza_step_runner_breaker_state",
    "Breaker state (0 closed, 1 half-open, 2 open)",
    ["connection"],
)
WEBHOOK_DELIVERIES = Counter(
    "cadenza_step_runner_webhook_deliveries_total",
    "Subscription deliveries by outcome",
    ["outcome"],
)
