"""Turns consumed records into what one transaction writes: trace rows, projections, audit rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias

import orjson
from aiokafka import ConsumerRecord

from cadenza_audit_sink import repository as repo
from cadenza_audit_sink.domain.audit import (
    AuditEntry,
    ChainedRow,
    chain,
    entry_for_history,
    entry_for_record,
    normalize,
)
from cadenza_audit_sink.domain.projection import HISTORY_EVENTS, apply
from cadenza_common import events as ev
from cadenza_common.kafka import PoisonRecord, UnhandleableRecord, decode

Record: TypeAlias = ConsumerRecord[Any, Any]

# Column sizes of the sink's tables: longer values are refused up front (DLQ), not by Postgres.
_LIMITS = {
    "node_id": 100,
    "node_type": 32,
    "workflow_slug": 100,
    "external_id": 200,
    "action": 100,
    "resource_type": 50,
    "resource_id": 200,
}


@dataclass(frozen=True)
class Item:
    """One decoded record: the event and its JSON data as it travelled."""

    record: Record
    event: ev.Event
    data: dict[str, Any]


@dataclass
class Sorted:
    """A batch's records split into events to apply and records for the DLQ (with reasons)."""

    items: list[Item] = field(default_factory=list)
    dead: list[tuple[Record, str]] = field(default_factory=list)
    duplicates: int = 0


def read_record(record: Record, history_topic: str) -> Item:
    """Decode one record and check it belongs on its topic and fits the tables.

    Raises:
        PoisonRecord: the record cannot be decoded.
        UnhandleableRecord: it decodes but the sink cannot store it.
    """
    value = record.value
    if value is not None and b"\\u0000" in value:
        value = orjson.dumps(normalize(orjson.loads(value)))  # JSONB holds no NUL characters
    event = decode(value, record.headers)
    expected = HISTORY_EVENTS if record.topic == history_topic else {ev.AuditRecorded}
    if type(event) not in expected:
        raise UnhandleableRecord(f"{event.CE_TYPE} does not belong on {record.topic}")
    fields = vars(event)
    for name, limit in _LIMITS.items():
        text = fields.get(name)
        if isinstance(text, str) and len(text) > limit:
            raise UnhandleableRecord(f"{name} longer than {limit} characters")
    return Item(record, event, orjson.loads(value) if value is not None else {})


def sort_records(records: Sequence[Record], history_topic: str) -> Sorted:
    """Decode every record; drop repeats of an event within the batch (by id and by seq)."""
    out = Sorted()
    seen: set[Any] = set()
    for record in records:
        try:
            item = read_record(record, history_topic)
        except (PoisonRecord, UnhandleableRecord) as exc:
            out.dead.append((record, str(exc)))
            continue
        keys = _identity(item.event)
        if keys & seen:  # idempotency guard: the same event twice in one batch
            out.duplicates += 1
            continue
        seen |= keys
        out.items.append(item)
    return out


def _identity(event: ev.Event) -> set[Any]:
    keys: set[Any] = {event.event_id}
    if isinstance(event, ev.ExecutionEvent) and event.seq is not None:
        keys.add((event.execution_id, event.seq))
    return keys


def trace_row(item: Item) -> repo.TraceRow:
    """The `step_events` row of a history event."""
    event = item.event
    assert isinstance(event, ev.ExecutionEvent)
    return repo.TraceRow(
        event_id=event.event_id,
        execution_id=event.execution_id,
        org_id=event.org_id,
        seq=event.seq,
        ce_type=event.CE_TYPE,
        node_id=getattr(event, "node_id", None),
        attempt=getattr(event, "attempt", None),
        data=item.data,
        occurred_at=event.occurred_at,
    )


@dataclass
class Applied:
    """What a committed batch changed (for metrics and tests)."""

    applied: list[ev.Event] = field(default_factory=list)
    duplicates: int = 0
    audit_rows: list[ChainedRow] = field(default_factory=list)


async def write(conn: repo.Connection, items: Sequence[Item], recorded_at: datetime) -> Applied:
    """Write a batch's events inside the caller's transaction; events already stored are skipped."""
    history = [i for i in items if isinstance(i.event, ev.ExecutionEvent)]
    # idempotency guard: events already in the trace or the audit log were applied before
    new_history = await repo.insert_trace(conn, [trace_row(i) for i in history])
    audited = await repo.recorded_event_ids(conn, [i.event.event_id for i in items])
    fresh = [
        i
        for i in items
        if i.event.event_id not in audited
        and (i.event.event_id in new_history or isinstance(i.event, ev.AuditRecorded))
    ]
    executions = sorted(
        {i.event.execution_id for i in fresh if isinstance(i.event, ev.ExecutionEvent)}
    )
    projection = await repo.load_projection(conn, executions)
    entries: list[AuditEntry] = []
    for item in fresh:
        if isinstance(item.event, ev.ExecutionEvent):
            entries.append(entry_for_history(item.event, item.data, apply(projection, item.event)))
        elif isinstance(item.event, ev.AuditRecorded):
            entries.append(entry_for_record(item.event))
    await repo.upsert_runs(conn, projection.changed_runs())
    await repo.upsert_steps(conn, projection.changed_steps())
    heads = await repo.lock_chain_heads(conn, [e.org_id for e in entries]) if entries else {}
    rows = chain(heads, entries, recorded_at)
    await repo.insert_audit(conn, rows)
    return Applied([i.event for i in fresh], len(items) - len(fresh), rows)
