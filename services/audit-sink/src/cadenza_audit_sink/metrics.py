"""Prometheus metrics of the audit-sink (served on `/metrics` of the metrics port)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """The sink's metrics, in a registry of their own (tests run several sinks in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.applied = Counter(
            "cadenza_audit_sink_events_applied_total",
            "Events applied, by type",
            ["type"],
            registry=r,
        )
        self.duplicates = Counter(
            "cadenza_audit_sink_duplicates_total", "Events skipped as already applied", registry=r
        )
        self.dead_letters = Counter(
            "cadenza_audit_sink_dead_letters_total", "Records sent to the DLQ", registry=r
        )
        self.retries = Counter(
            "cadenza_audit_sink_db_retries_total",
            "Batches retried after a database error",
            registry=r,
        )
        self.fenced = Counter(
            "cadenza_audit_sink_offsets_moved_total",
            "Batches dropped because another writer moved the stored offsets",
            registry=r,
        )
        self.batch_size = Histogram(
            "cadenza_audit_sink_batch_size",
            "Records per committed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000),
            registry=r,
        )
        self.commit_seconds = Histogram(
            "cadenza_audit_sink_commit_seconds",
            "Time to write and commit one batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.lag = Gauge(
            "cadenza_audit_sink_lag",
            "Records behind the end, per partition",
            ["topic", "partition"],
            registry=r,
        )

    def serve(self, port: int) -> Callable[[], None]:
        """Serve `/metrics` on `port` (0: do not serve); return how to stop serving."""
        if not port:
            return lambda: None
        server, _ = start_http_server(port, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return stop
