"""The scheduler's shell: decode → decide() → save (with outbox) → send → clear the outbox.

`Shell` knows nothing about Faust: it works on a table-like mapping and a send function,
so `app.py` wires it to the Faust table and producer and the unit tests to a dict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from aiokafka.partitioner import murmur2

from cadenza_common.events import (
    Event,
    ExecutionEvent,
    TimerFired,
    TimerKind,
    Topics,
)
from cadenza_common.kafka import PoisonRecord, decode, encode
from cadenza_scheduler import codec
from cadenza_scheduler.codec import Stored
from cadenza_scheduler.domain import ExecutionState, decide, timer_fired, topic_for
from cadenza_scheduler.domain.tx import derived_id
from cadenza_scheduler.metrics import Metrics
from cadenza_scheduler.timers import RETENTION, TimerHeap

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
# send(topic, key, value, headers) -> awaitable that resolves once the broker acknowledged
Send = Callable[[str, bytes | None, bytes | None, Headers], Awaitable[Awaitable[Any]]]
# durable(key) -> returns once the table's last write of `key` is on the broker
Durable = Callable[[str], Awaitable[None]]


async def _already_durable(key: str) -> None:
    return None


class Table(Protocol):
    """The part of a Faust table the shell uses."""

    def get(self, key: str) -> bytes | None: ...
    def __setitem__(self, key: str, value: bytes) -> None: ...
    def __delitem__(self, key: str) -> None: ...
    def items(self) -> Iterable[tuple[str, bytes]]: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` (how producers key executions)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class Shell:
    """Applies input records to the table and sends what decide() emits, at least once."""

    def __init__(
        self,
        table: Table,
        send: Send,
        topics: Topics,
        *,
        source: str,
        consumer_name: str,
        retention_s: float,
        partitions: int,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        send_attempts: int = 20,
        durable: Durable = _already_durable,
    ) -> None:
        self.table = table
        self._send = send
        self._durable = durable
        self.topics = topics
        self.source = source
        self.consumer_name = consumer_name
        self.retention_s = retention_s
        self.partitions = partitions
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.send_attempts = send_attempts
        self.heap = TimerHeap()
        self.cache = codec.StateCache()
        self.resent: set[str] = set()
        self.owned: set[int] = set(range(partitions))
        self.active: set[str] = set()

    # --- input records ---------------------------------------------------------------------

    async def on_record(
        self,
        value: bytes | None,
        headers: Headers | None,
        *,
        key: bytes | None,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        """Handle one record; never raises (a failing record goes to the DLQ with the reason)."""
        try:
            event = decode(value, headers)
            if not isinstance(event, ExecutionEvent):
                raise PoisonRecord(f"{event.CE_TYPE} is not an execution event")
        except PoisonRecord as exc:
            await self._dead_letter(value, headers, key, topic, partition, offset, str(exc))
            return
        try:
            await self.apply(event)
            self.metrics.events.labels(event.CE_TYPE).inc()
        except Exception as exc:
            log.exception("record not handled", extra={"topic": topic, "offset": offset})
            reason = f"unhandleable {event.CE_TYPE}: {type(exc).__name__}: {exc}"
            await self._dead_letter(value, headers, key, topic, partition, offset, reason)

    async def apply(self, event: ExecutionEvent) -> None:
        """Load the execution, resend a leftover outbox, decide, save, send, clear the outbox."""
        key = str(event.execution_id)
        stored = self.cache.load(key, self.table.get(key))
        if stored.outbox and key not in self.resent:
            await self.send_events(stored.outbox)
        self.resent.discard(key)
        if isinstance(event, TimerFired) and event.timer_id == RETENTION:
            self._expire(key, stored.state)
            return
        now = self.clock()
        started = time.perf_counter()
        decision = decide(stored.state, event, now)
        self.metrics.decide_seconds.observe(time.perf_counter() - started)
        if decision.state is stored.state and not decision.emits:
            if stored.outbox:
                self._save(key, Stored(stored.state), codec.state_json(stored.state))
            return
        state_bytes = codec.state_json(decision.state)
        self._save(key, Stored(decision.state, list(decision.emits)), state_bytes)
        # The new state (with its outbox) must be on the broker before anything it caused is:
        # otherwise a crash could restore the old state while a runner already answers a
        # StepReady of the new one, and decide() would drop that answer as unknown.
        await self._durable(key)
        await self.send_events(decision.emits)
        self._save(key, Stored(decision.state), state_bytes)
        self._track(key, decision.state)
        for emitted in decision.emits:
            self.metrics.transitions.labels(emitted.CE_TYPE).inc()

    def _save(self, key: str, stored: Stored, state_bytes: bytes) -> None:
        if stored.state is None and not stored.outbox:
            if self.table.get(key) is not None:
                del self.table[key]
            self.cache.forget(key)
            return
        raw = codec.dump(stored, state_bytes)
        self.table[key] = raw
        self.cache.put(key, raw, stored)

    def _expire(self, key: str, state: ExecutionState | None) -> None:
        """Delete a finished execution whose retention is over (a tombstone in the changelog)."""
        if state is None or not state.finished or state.finished_at is None:
            return
        if state.finished_at.timestamp() + self.retention_s > self.clock().timestamp():
            return
        self._save(key, Stored(None), b"null")
        self.active.discard(key)
        self.metrics.active.set(len(self.active))

    def _track(self, key: str, state: ExecutionState | None) -> None:
        """Index the state's timers (and its retention) in the heap; count active executions."""
        if state is None:
            self.active.discard(key)
        elif state.finished:
            self.active.discard(key)
            if state.finished_at is not None:
                self.heap.push(key, RETENTION, state.finished_at.timestamp() + self.retention_s)
        else:
            self.active.add(key)
            for timer in state.timers:
                self.heap.push(key, timer.timer_id, timer.due_at.timestamp())
        self.metrics.active.set(len(self.active))
        self.metrics.timers.set(len(self.heap))

    # --- sending ---------------------------------------------------------------------------

    async def send_events(self, events: Sequence[Event]) -> None:
        """Send events to their topics keyed by execution id; return once all are acknowledged."""
        for attempt in range(1, self.send_attempts + 1):
            try:
                pending = []
                for event in events:
                    msg = encode(event, source=self.source)
                    topic = self.topics.name(topic_for(event))
                    pending.append(await self._send(topic, msg.key, msg.value, msg.headers))
                await asyncio.gather(*pending)
                return
            except Exception:
                if attempt == self.send_attempts:
                    raise
                log.warning("send failed, retrying", exc_info=True)
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))

    async def _dead_letter(
        self,
        value: bytes | None,
        headers: Headers | None,
        key: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
    ) -> None:
        """Publish the record unchanged to the DLQ with the `dlq_*` headers of DeadLetters."""
        self.metrics.events.labels("dlq").inc()
        log.warning("record sent to dlq", extra={"topic": topic, "reason": reason})
        out = [(k, v) for k, v in (headers or ()) if not k.startswith("dlq_")]
        out += [
            ("dlq_reason", reason[:4000].encode()),
            ("dlq_topic", topic.encode()),
            ("dlq_partition", str(partition).encode()),
            ("dlq_offset", str(offset).encode()),
            ("dlq_consumer", self.consumer_name.encode()),
        ]
        for attempt in range(1, self.send_attempts + 1):
            try:
                await (await self._send(self.topics.dlq, key, value, out))
                return
            except Exception:
                if attempt == self.send_attempts:
                    log.exception("dlq send failed; record dropped", extra={"topic": topic})
                    return
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))

    # --- partitions and timers -------------------------------------------------------------

    def revoked(self) -> None:
        """Forget the in-memory indexes; they are rebuilt once the new assignment recovered."""
        self.heap.clear()
        self.cache.clear()
        self.resent.clear()
        self.active.clear()

    async def recovered(self, owned: set[int]) -> int:
        """Rebuild the timer heap for the owned partitions and resend leftover outboxes.

        Returns how many outboxes were resent.
        """
        self.owned = owned
        self.heap.clear()
        self.active.clear()
        resent = 0
        for key, raw in list(self.table.items()):
            if partition_of(key, self.partitions) not in owned:
                continue
            summary = codec.summary(raw)
            if summary.outbox:
                await self.send_events(summary.outbox)
                self.resent.add(key)
                resent += 1
            if summary.finished_at is not None:
                self.heap.push(key, RETENTION, summary.finished_at + self.retention_s)
            else:
                self.active.add(key)
                for due, timer_id in summary.timers:
                    self.heap.push(key, timer_id, due)
        self.metrics.active.set(len(self.active))
        self.metrics.timers.set(len(self.heap))
        return resent

    async def fire_due(self) -> int:
        """Send TimerFired to `executions.commands` for every due timer; return how many."""
        now = self.clock()
        fired: list[Event] = []
        for entry in self.heap.pop_due(now.timestamp()):
            if partition_of(entry.key, self.partitions) not in self.owned:
                continue
            raw = self.table.get(entry.key)
            if raw is None:
                continue
            state = self.cache.load(entry.key, raw).state
            if state is None:
                continue
            if entry.timer_id == RETENTION:
                fired.append(_retention_timer(state, now))
                continue
            timer = state.timer(entry.timer_id)
            if timer is not None and timer.due_at.timestamp() <= now.timestamp():
                fired.append(timer_fired(state, timer))
        if fired:
            await self.send_events(fired)
        self.metrics.timers.set(len(self.heap))
        return len(fired)


def _retention_timer(state: ExecutionState, now: datetime) -> TimerFired:
    """The shell's own timer that deletes a finished execution (decide() never sees it)."""
    return TimerFired(
        event_id=derived_id(state.execution_id, f"timer:{RETENTION}"),
        occurred_at=now,
        execution_id=state.execution_id,
        org_id=state.org_id,
        timer_id=RETENTION,
        kind=TimerKind.EXECUTION_TIMEOUT,
        due_at=now,
    )


__all__ = ["Durable", "Shell", "partition_of"]
