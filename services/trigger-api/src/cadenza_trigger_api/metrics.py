"""Prometheus metrics of one app instance, and the ASGI middleware that records requests."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    """The app's metrics, in a registry of their own (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "cadenza_api_requests_total", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cadenza_api_request_seconds", "HTTP request latency", ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.executions_requested = Counter(
            "cadenza_api_executions_requested_total", "Executions requested", ["workflow"],
            registry=self.registry,
        )
        self.outbox_sent = Counter(
            "cadenza_outbox_sent_total", "Outbox rows published", registry=self.registry
        )
        self.outbox_unsent = Gauge(
            "cadenza_outbox_unsent_rows", "Outbox rows not yet published", registry=self.registry
        )
        self.outbox_lag_seconds = Gauge(
            "cadenza_outbox_lag_seconds", "Age of the oldest unsent outbox row",
            registry=self.registry,
        )


class MetricsMiddleware:
    """Counts requests and times them by route template (never by raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
