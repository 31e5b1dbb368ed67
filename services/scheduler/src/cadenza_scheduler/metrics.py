"""Prometheus metrics of the scheduler, in a registry of its own, served on the web port."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    """Events processed by type, transitions, active executions, timers, decide() latency,
    where each batch's time went, lag."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Counter, str], Any] = {}
        self.events = Counter(
            "cadenza_scheduler_events_total",
            "Input records processed, by event type (dlq: sent to the DLQ)",
            ["type"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "cadenza_scheduler_transitions_total",
            "Events emitted by decide(), by event type",
            ["type"],
            registry=self.registry,
        )
        self.active = Gauge(
            "cadenza_scheduler_active_executions",
            "Unfinished executions in the partitions this process owns",
            registry=self.registry,
        )
        self.timers = Gauge(
            "cadenza_scheduler_timers_pending",
            "Entries in the in-memory timer heap",
            registry=self.registry,
        )
        self.specs = Gauge(
            "cadenza_scheduler_specs_stored",
            "Workflow specs and sub-workflow bundles stored in the table for the partitions "
            "this process owns (each once a partition, beside the states that name it)",
            registry=self.registry,
        )
        self.decide_seconds = Histogram(
            "cadenza_scheduler_decide_seconds",
            "Time spent in decide() per event",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
            registry=self.registry,
        )
        # where a batch's time goes: at half load the round trip to the broker (states
        # durable and emits acknowledged, sent together) takes most of it, and the agent
        # takes no new records meanwhile (bench/README.md, scheduler sessions 8 and 16)
        self.batch_seconds = Histogram(
            "cadenza_scheduler_batch_seconds",
            "Time a batch of input records spent in each step: apply (decode and decide() "
            "every record, dead-letter the bad ones), persist (until its states were on the "
            "broker), send (until its emits were acknowledged), flush (until both were; states and "
            "emits are sent together, so all three count from the end of apply); retries "
            "included",
            ["phase"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.batch_records = Histogram(
            "cadenza_scheduler_batch_records",
            "Input records per batch the agent took",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=self.registry,
        )
        self.apply_seconds = self.batch_seconds.labels("apply")
        self.persist_seconds = self.batch_seconds.labels("persist")
        self.send_seconds = self.batch_seconds.labels("send")
        self.flush_seconds = self.batch_seconds.labels("flush")
        self.gc_pause = Histogram(
            "cadenza_scheduler_gc_pause_seconds",
            "Pauses of Python's garbage collector, by generation and by what started the pass: "
            "between_batches (the agent, once a batch is flushed) or other (the collector's "
            "own backstop trigger, recovery's full pass); see cadenza_scheduler.heap",
            ["generation", "trigger"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.produce_requests = Counter(
            "cadenza_scheduler_produce_requests_total",
            "Produce requests the scheduler sent (each carries a batch of records for every "
            "partition written at the time; see cadenza_scheduler.produce)",
            registry=self.registry,
        )
        self.produce_seconds = Histogram(
            "cadenza_scheduler_produce_seconds",
            "Round trip of a produce request: from handing it to the connection to the "
            "broker's answer (acks=all)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
            registry=self.registry,
        )
        self.produce_errors = Counter(
            "cadenza_scheduler_produce_errors_total",
            "Partition batches the broker did not store, by Kafka error and outcome: retried "
            "(retriable, within the delivery timeout) or failed (the batch's writer sees the "
            "error; the shell retries its whole flush)",
            ["error", "outcome"],
            registry=self.registry,
        )
        self.fetch_requests = Counter(
            "cadenza_scheduler_fetch_requests_total",
            "Fetch requests the scheduler's intake sent for its input topic (one a broker in "
            "flight; see cadenza_scheduler.intake)",
            registry=self.registry,
        )
        self.fetch_errors = Counter(
            "cadenza_scheduler_fetch_errors_total",
            "Failed fetch requests and partitions the broker answered with an error, by error",
            ["error"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "cadenza_scheduler_consumer_lag",
            "Records behind the end of each assigned input partition",
            ["topic", "partition"],
            registry=self.registry,
        )

    def event(self, ce_type: str) -> Any:
        """The `events` child of one type (`labels()` takes a lock and builds a key each call)."""
        return self._child(self.events, ce_type)

    def transition(self, ce_type: str) -> Any:
        """The `transitions` child of one type."""
        return self._child(self.transitions, ce_type)

    def _child(self, counter: Counter, ce_type: str) -> Any:
        child = self._children.get((counter, ce_type))
        if child is None:
            child = self._children[(counter, ce_type)] = counter.labels(ce_type)
        return child
