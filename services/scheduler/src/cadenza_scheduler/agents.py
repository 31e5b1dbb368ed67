"""The scheduler's shell: decode → decide() → save (with outbox) → send → clear the outbox.

`Shell` knows nothing about Faust: it works on a table-like mapping and a send function,
so `app.py` wires it to the Faust table and producer and the unit tests to a dict.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol

from aiokafka.partitioner import murmur2

from cadenza_common.events import (
    Event,
    ExecutionEvent,
    TimerFired,
    TimerKind,
    Topic,
    Topics,
    id_text,
)
from cadenza_common.kafka import (
    KafkaMessage,
    PoisonRecord,
    dead_letter_headers,
    decode,
    encode,
)
from cadenza_scheduler import codec
from cadenza_scheduler.codec import Stored
from cadenza_scheduler.domain import ExecutionState, decide, timer_fired, topic_for
from cadenza_scheduler.domain.tx import derived_id
from cadenza_scheduler.metrics import Metrics
from cadenza_scheduler.specs import SpecEntries, entry_key, entry_partition, is_entry
from cadenza_scheduler.timers import RETENTION, TimerHeap

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


class Outgoing(NamedTuple):
    """One record to produce (partition None: the producer's partitioner picks it).

    Tuples, as are `Record`s: several are built per transition, in half the time of a
    frozen dataclass."""

    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: Headers


# send(records) -> returns once the producer holds them all, in order, with one awaitable a
# record that resolves once the broker acknowledged it (records of one batch share one)
Send = Callable[[Sequence[Outgoing]], Awaitable[Sequence[Awaitable[Any]]]]
# persist(keys) -> returns once the table's latest values of `keys` are on the broker
Persist = Callable[[Iterable[str]], Awaitable[None]]


async def _nothing_to_persist(keys: Iterable[str]) -> None:
    return None


class Record(NamedTuple):
    """One input record as the agent took it from Kafka."""

    value: bytes | None
    headers: Headers | None
    key: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class Batch:
    """What a batch of records changed: emits to send, in order, and the keys to clear."""

    source: str = ""
    outgoing: list[Event] = field(default_factory=list)
    outboxes: dict[str, list[Event]] = field(default_factory=dict)
    states: dict[str, tuple[ExecutionState | None, bytes]] = field(default_factory=dict)
    # spec entries the batch wrote (`SpecEntries.name`): persisted ahead of its states
    specs: list[str] = field(default_factory=list)
    # each emit as a record, encoded once for both the outbox and the send (by event object)
    records: dict[int, tuple[Event, KafkaMessage]] = field(default_factory=dict)
    # input records handled and events emitted, by type: counted into the metrics once
    handled: Counter[str] = field(default_factory=Counter)
    emitted: Counter[str] = field(default_factory=Counter)

    def queue(self, key: str, events: Sequence[Event]) -> None:
        self.outboxes.setdefault(key, []).extend(events)
        self.outgoing.extend(events)

    def record(self, event: Event) -> KafkaMessage:
        """The event as the record to send (`encode`d the first time it is asked for)."""
        hit = self.records.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        message = encode(event, source=self.source)
        self.records[id(event)] = (event, message)
        return message

    def record_json(self, event: Event) -> bytes:
        return self.record(event).value


async def _done_at(work: Awaitable[Any]) -> float:
    """Await `work`; return when it finished (`time.perf_counter()`)."""
    await work
    return time.perf_counter()


class Table(Protocol):
    """The part of a Faust table the shell uses."""

    def get(self, key: str) -> bytes | None: ...
    def __setitem__(self, key: str, value: bytes) -> None: ...
    def __delitem__(self, key: str) -> None: ...
    def items(self) -> Iterable[tuple[str, bytes]]: ...


def utcnow() -> datetime:
    return datetime.now(UTC)


@functools.lru_cache(maxsize=1 << 16)
def partition_of(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives `key` (how producers key executions).

    Cached: aiokafka's murmur2 is pure Python (~10 us a key), and every record the scheduler
    sends for an execution goes to this partition of its topic (all topics have `partitions`).
    """
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
        persist: Persist = _nothing_to_persist,
    ) -> None:
        self.table = table
        self._send = send
        self._persist = persist
        self.topics = topics
        self._topic_names = {topic: topics.name(topic) for topic in Topic}
        self.source = source
        self.consumer_name = consumer_name
        self.retention_s = retention_s
        self.partitions = partitions
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.send_attempts = send_attempts
        self.heap = TimerHeap()
        self.specs = SpecEntries(table)
        self.cache = codec.StateCache(stored=self._stored_apart)
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
        """Handle one record (a batch of one); never raises."""
        await self.on_records([Record(value, headers, key, topic, partition, offset)])

    async def on_records(self, records: Sequence[Record]) -> None:
        """Handle a batch of records in order; never raises.

        A record that cannot be decoded or handled goes to the DLQ with the reason and the
        batch goes on. The changes of the whole batch are made durable, and what they
        emitted is sent, together: one round trip per batch instead of two per record.
        """
        batch = Batch(self.source)
        started = time.perf_counter()
        for record in records:
            try:
                event = decode(record.value, record.headers)
                if not isinstance(event, ExecutionEvent):
                    raise PoisonRecord(f"{event.CE_TYPE} is not an execution event")
            except PoisonRecord as exc:
                await self._dead_letter(record, str(exc))
                continue
            try:
                self._apply_one(batch, event)
                batch.handled[event.CE_TYPE] += 1
            except Exception as exc:
                log.exception("record not handled", extra={"topic": record.topic})
                reason = f"unhandleable {event.CE_TYPE}: {type(exc).__name__}: {exc}"
                await self._dead_letter(record, reason)
        self.metrics.apply_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_records.observe(len(records))
        self._count(batch)
        await self._flush(batch)

    async def apply(self, event: ExecutionEvent) -> None:
        """Apply one event as a batch of one (raises what decide() raises)."""
        batch = Batch(self.source)
        self._apply_one(batch, event)
        batch.handled[event.CE_TYPE] += 1
        self._count(batch)
        await self._flush(batch)

    def _count(self, batch: Batch) -> None:
        for ce_type, n in batch.handled.items():
            self.metrics.event(ce_type).inc(n)
        for ce_type, n in batch.emitted.items():
            self.metrics.transition(ce_type).inc(n)

    def _apply_one(self, batch: Batch, event: ExecutionEvent) -> None:
        """Load the execution, queue a leftover outbox, decide, save with the outbox."""
        key = id_text(event.execution_id)
        stored = self.cache.load(key, self.table.get(key))
        if key not in batch.outboxes:
            if stored.outbox and key not in self.resent:
                batch.queue(key, stored.outbox)  # left by a crash before its sends
            elif stored.outbox:
                batch.outboxes[key] = []  # resent at recovery; cleared below
        if isinstance(event, TimerFired) and event.timer_id == RETENTION:
            self._expire(key, stored.state)
            batch.outboxes.pop(key, None)
            return
        now = self.clock()
        started = time.perf_counter()
        decision = decide(stored.state, event, now)
        self.metrics.decide_seconds.observe(time.perf_counter() - started)
        if decision.state is stored.state and not decision.emits:
            return
        batch.queue(key, decision.emits)
        state_bytes = codec.state_json(decision.state)
        batch.states[key] = (decision.state, state_bytes)
        stored_now = Stored(decision.state, list(batch.outboxes[key]))
        batch.specs.extend(self._save(key, stored_now, state_bytes, batch.record_json))
        for emitted in decision.emits:
            batch.emitted[emitted.CE_TYPE] += 1

    async def _flush(self, batch: Batch) -> None:
        """Make the batch's table writes durable and send its emits, together; clear outboxes.

        The writes and the emits go to the broker at once (one round trip, not two) and the
        batch's records are acked only once both are there. A crash in between leaves one
        of two things: the new states without their emits (the outboxes in them are resent
        at recovery), or emits without the states. In the second case the input records
        were not committed, and everything the emits cause (a runner's answer, a child's
        end, a timer) arrives on the same `executions.commands` partition after them: the
        restarted scheduler applies them again, to the same old state, and decide() emits
        the same events (same ids) before any answer to them is read.
        """
        if not batch.outboxes:
            return
        failures = 0
        started = time.perf_counter()
        while True:
            try:
                async with asyncio.TaskGroup() as flush:
                    keys = [*batch.specs, *batch.outboxes]
                    persisted = flush.create_task(_done_at(self._persist(keys)))
                    sent = flush.create_task(
                        _done_at(self.send_events(batch.outgoing, batch.record))
                    )
                break
            except Exception:
                # Nothing of the batch may be acked (so committed) before its states and emits
                # are on the broker: keep trying while Kafka is unreachable.
                failures += 1
                log.error("batch not flushed (attempt %d), retrying", failures, exc_info=True)
                await asyncio.sleep(min(0.5 * failures, 5.0))
        self.metrics.persist_seconds.observe(persisted.result() - started)
        self.metrics.send_seconds.observe(sent.result() - started)
        self.metrics.flush_seconds.observe(time.perf_counter() - started)
        for key in batch.outboxes:
            self.resent.discard(key)
            if key in batch.states:
                state, state_bytes = batch.states[key]
            else:
                state = self.cache.load(key, self.table.get(key)).state
                state_bytes = codec.state_json(state)
            self._save(key, Stored(state), state_bytes)
            self._track(key, state)
        self._gauge()

    def _save(
        self,
        key: str,
        stored: Stored,
        state_bytes: bytes,
        record_json: Callable[[Event], bytes] | None = None,
    ) -> list[str]:
        """Write `stored` under `key` (delete it when empty); return the spec entries written
        for its state, those the table did not hold yet (to persist ahead of the state)."""
        state = stored.state
        spec_entries = []
        if state is None:
            self.specs.release(key)
        else:
            spec_entries = self.specs.name(key, partition_of(key, self.partitions), state)
        if state is None and not stored.outbox:
            if self.table.get(key) is not None:
                del self.table[key]
            self.cache.forget(key)
            return []
        raw = codec.dump(stored, state_bytes, record_json)
        self.table[key] = raw
        self.cache.put(key, raw, stored)
        return spec_entries

    def _stored_apart(self, key: str) -> Callable[[str], bytes | None]:
        return self.specs.json_for(key, partition_of(key, self.partitions))

    def _expire(self, key: str, state: ExecutionState | None) -> None:
        """Delete a finished execution whose retention is over (a tombstone in the changelog)."""
        if state is None or not state.finished or state.finished_at is None:
            return
        if state.finished_at.timestamp() + self.retention_s > self.clock().timestamp():
            return
        self._save(key, Stored(None), b"null")
        self.active.discard(key)
        self._gauge()

    def _track(self, key: str, state: ExecutionState | None) -> None:
        """Index the state's timers (and its retention) in the heap; count active executions
        (the gauges are set once a batch, by `_gauge`)."""
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

    def _gauge(self) -> None:
        """Set the active-execution, pending-timer and stored-spec gauges (after a batch, an
        expiry, a recovery and each timer tick)."""
        self.metrics.active.set(len(self.active))
        self.metrics.timers.set(len(self.heap))
        self.metrics.specs.set(len(self.specs.users))

    # --- sending ---------------------------------------------------------------------------

    async def send_events(
        self, events: Sequence[Event], record: Callable[[Event], KafkaMessage] | None = None
    ) -> None:
        """Send events to their topics keyed by execution id; return once all are acknowledged.

        `record` gives an event's record when it was encoded already (`Batch.record`).
        """
        if record is None:
            record = functools.partial(encode, source=self.source)

        async def send_all() -> None:
            outgoing = []
            for event in events:
                msg = record(event)
                topic = self._topic_names[topic_for(event)]
                partition = (
                    None if msg.key is None else partition_of(msg.key.decode(), self.partitions)
                )
                outgoing.append(Outgoing(topic, partition, msg.key, msg.value, msg.headers))
            await asyncio.gather(*set(await self._send(outgoing)))

        await self._retrying(send_all)

    async def _retrying(self, send: Callable[[], Awaitable[None]]) -> None:
        """Run `send` until it succeeds, backing off; raise after `send_attempts` failures."""
        for attempt in range(1, self.send_attempts + 1):
            try:
                await send()
                return
            except Exception:
                if attempt == self.send_attempts:
                    raise
                log.warning("send failed, retrying", exc_info=True)
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))

    async def _dead_letter(self, record: Record, reason: str) -> None:
        """Publish the record unchanged to the DLQ with the headers `DeadLetters` sends."""
        self.metrics.event("dlq").inc()
        log.warning("record sent to dlq", extra={"topic": record.topic, "reason": reason})
        out = dead_letter_headers(
            record.headers,
            reason,
            record.topic,
            record.partition,
            record.offset,
            self.consumer_name,
        )

        async def send() -> None:
            dead = Outgoing(self.topics.dlq, None, record.key, record.value, out)
            await asyncio.gather(*(await self._send([dead])))

        try:
            await self._retrying(send)
        except Exception:
            log.exception("dlq send failed; record dropped", extra={"topic": record.topic})

    # --- partitions and timers -------------------------------------------------------------

    def revoked(self) -> None:
        """Forget the in-memory indexes; they are rebuilt once the new assignment recovered."""
        self.heap.clear()
        self.cache.clear()
        self.specs.clear()
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
        named: dict[str, tuple[str, ...]] = {}  # execution -> the spec entries it names
        entries: list[str] = []
        for index, (key, raw) in enumerate(list(self.table.items())):
            if index % 1000 == 999:
                await asyncio.sleep(0)  # the consumer's heartbeats share this loop
            if is_entry(key):
                if entry_partition(key) in owned:
                    entries.append(key)
                continue
            partition = partition_of(key, self.partitions)
            if partition not in owned:
                continue
            summary = codec.summary(raw)
            if summary.apart:
                named[key] = tuple(entry_key(partition, k) for k in summary.apart)
            if summary.outbox:
                await self.send_events(summary.outbox)
                self.resent.add(key)
                resent += 1
            self._recovered_timers(key, summary)
        orphans = self.specs.rebuilt(named, entries)
        if orphans:
            log.info("spec entries no execution names deleted", extra={"count": orphans})
        self._gauge()
        return resent

    def _recovered_timers(self, key: str, summary: codec.Summary) -> None:
        if summary.finished_at is not None:
            self.heap.push(key, RETENTION, summary.finished_at + self.retention_s)
        else:
            self.active.add(key)
            for due, timer_id in summary.timers:
                self.heap.push(key, timer_id, due)

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
        self._gauge()
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


__all__ = ["Batch", "Outgoing", "Persist", "Record", "Send", "Shell", "partition_of"]
