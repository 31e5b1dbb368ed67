"""Postgres access of the audit-sink (asyncpg, multi-row statements over `unnest` arrays).

JSON travels as text and is cast to JSONB in SQL, so the encoding is ours (orjson)
and SQL NULL stands for a missing value.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

import asyncpg
import orjson

from cadenza_audit_sink.domain.audit import AuditEntry, ChainedRow, ChainHead
from cadenza_audit_sink.domain.projection import Projection, RunRow, StepRow

Connection: TypeAlias = asyncpg.Connection
TopicPartitionKey = tuple[str, int]


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _load(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


class OffsetsMoved(RuntimeError):
    """Stored offsets differ from what this instance expected: another writer got there first."""

    def __init__(self, stored: dict[TopicPartitionKey, int | None]) -> None:
        super().__init__(f"stored offsets moved: {stored}")
        self.stored = stored


# --- offsets ------------------------------------------------------------------------------------


async def stored_offsets(
    conn: Connection, group_id: str, tps: Sequence[TopicPartitionKey]
) -> dict[TopicPartitionKey, int | None]:
    """The next offset to read per partition, None where nothing was stored yet."""
    rows = await conn.fetch(
        'SELECT topic, partition, "offset" FROM sink_offsets WHERE group_id = $1 '
        "AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[]))",
        group_id,
        [t for t, _ in tps],
        [p for _, p in tps],
    )
    found = {(r["topic"], r["partition"]): int(r["offset"]) for r in rows}
    return {tp: found.get(tp) for tp in tps}


async def fence_offsets(
    conn: Connection, group_id: str, expected: dict[TopicPartitionKey, int | None]
) -> None:
    """Lock the partitions' offset rows and check nobody moved them since we read them.

    Raises:
        OffsetsMoved: when a stored offset is not the expected one.
    """
    tps = sorted(expected)
    rows = await conn.fetch(
        'SELECT topic, partition, "offset" FROM sink_offsets WHERE group_id = $1 '
        "AND (topic, partition) IN (SELECT * FROM unnest($2::text[], $3::int[])) "
        "ORDER BY topic, partition FOR UPDATE",
        group_id,
        [t for t, _ in tps],
        [p for _, p in tps],
    )
    stored: dict[TopicPartitionKey, int | None] = dict.fromkeys(tps)
    stored.update({(r["topic"], r["partition"]): int(r["offset"]) for r in rows})
    if stored != expected:
        raise OffsetsMoved(stored)


async def store_offsets(
    conn: Connection,
    group_id: str,
    expected: dict[TopicPartitionKey, int | None],
    new: dict[TopicPartitionKey, int],
) -> None:
    """Write the next offsets; rows first stored now must not have appeared meanwhile."""
    existing = sorted(tp for tp in new if expected.get(tp) is not None)
    fresh = sorted(tp for tp in new if expected.get(tp) is None)
    if existing:
        await conn.execute(
            'UPDATE sink_offsets s SET "offset" = u.o, updated_at = now() '
            "FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, o) "
            "WHERE s.group_id = $1 AND s.topic = u.t AND s.partition = u.p",
            group_id,
            [t for t, _ in existing],
            [p for _, p in existing],
            [new[tp] for tp in existing],
        )
    if fresh:
        inserted = await conn.fetch(
            'INSERT INTO sink_offsets (group_id, topic, partition, "offset") '
            "SELECT $1, t, p, o FROM unnest($2::text[], $3::int[], $4::bigint[]) AS u(t, p, o) "
            "ON CONFLICT DO NOTHING RETURNING topic",
            group_id,
            [t for t, _ in fresh],
            [p for _, p in fresh],
            [new[tp] for tp in fresh],
        )
        if len(inserted) != len(fresh):
            raise OffsetsMoved(await stored_offsets(conn, group_id, fresh))


# --- the trace ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRow:
    """One `step_events` row."""

    event_id: uuid.UUID
    execution_id: uuid.UUID
    org_id: uuid.UUID
    seq: int | None
    ce_type: str
    node_id: str | None
    attempt: int | None
    data: dict[str, Any]
    occurred_at: datetime


async def insert_trace(conn: Connection, rows: Sequence[TraceRow]) -> set[uuid.UUID]:
    """Insert the events not stored yet (by event id or execution + seq); return their ids."""
    if not rows:
        return set()
    inserted = await conn.fetch(
        "INSERT INTO step_events (event_id, execution_id, org_id, seq, ce_type, node_id, "
        "attempt, data, occurred_at) "
        "SELECT e, x, o, s, t, n, a, d::jsonb, w FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], "
        "$4::bigint[], $5::text[], $6::text[], $7::int[], $8::text[], $9::timestamptz[]) "
        "AS u(e, x, o, s, t, n, a, d, w) ON CONFLICT DO NOTHING RETURNING event_id",
        [r.event_id for r in rows],
        [r.execution_id for r in rows],
        [r.org_id for r in rows],
        [r.seq for r in rows],
        [r.ce_type for r in rows],
        [r.node_id for r in rows],
        [r.attempt for r in rows],
        [_json(r.data) for r in rows],
        [r.occurred_at for r in rows],
    )
    return {r["event_id"] for r in inserted}


async def recorded_event_ids(conn: Connection, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these events already have an audit row."""
    if not event_ids:
        return set()
    rows = await conn.fetch(
        "SELECT event_id FROM audit_log WHERE event_id = ANY($1::uuid[])", list(event_ids)
    )
    return {r["event_id"] for r in rows}


# --- projections --------------------------------------------------------------------------------

RUN_COLUMNS = (
    "id, org_id, workflow_id, workflow_version, workflow_slug, external_id, parent_execution_id, "
    "status, input::text, output::text, error::text, started_at, finished_at, duration_ms, "
    "last_seq, compensation_order::text"
)
STEP_COLUMNS = (
    "execution_id, node_id, org_id, node_type, status, attempts, input::text, output::text, "
    "output_ref, error::text, status_reason, scheduled_at, started_at, finished_at"
)


async def load_projection(conn: Connection, execution_ids: Sequence[uuid.UUID]) -> Projection:
    """The current rows of these executions and all their steps."""
    projection = Projection()
    if not execution_ids:
        return projection
    ids = list(execution_ids)
    for r in await conn.fetch(f"SELECT {RUN_COLUMNS} FROM execution_runs WHERE id = ANY($1)", ids):  # noqa: S608
        projection.runs[r["id"]] = _run_from(r)
    sql = f"SELECT {STEP_COLUMNS} FROM step_runs WHERE execution_id = ANY($1)"  # noqa: S608
    for r in await conn.fetch(sql, ids):
        projection.add_step(_step_from(r))
    return projection


def _run_from(r: asyncpg.Record) -> RunRow:
    return RunRow(
        id=r["id"],
        org_id=r["org_id"],
        workflow_id=r["workflow_id"],
        workflow_version=r["workflow_version"],
        status=r["status"],
        started_at=r["started_at"],
        workflow_slug=r["workflow_slug"],
        external_id=r["external_id"],
        parent_execution_id=r["parent_execution_id"],
        input=_load(r["input"]),
        output=_load(r["output"]),
        error=_load(r["error"]),
        finished_at=r["finished_at"],
        duration_ms=r["duration_ms"],
        last_seq=r["last_seq"],
        compensation_order=_load(r["compensation_order"]),
    )


def _step_from(r: asyncpg.Record) -> StepRow:
    return StepRow(
        execution_id=r["execution_id"],
        node_id=r["node_id"],
        org_id=r["org_id"],
        status=r["status"],
        node_type=r["node_type"],
        attempts=r["attempts"],
        input=_load(r["input"]),
        output=_load(r["output"]),
        output_ref=r["output_ref"],
        error=_load(r["error"]),
        status_reason=r["status_reason"],
        scheduled_at=r["scheduled_at"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
    )


async def upsert_runs(conn: Connection, runs: Sequence[RunRow]) -> None:
    """Insert or overwrite these execution rows."""
    if not runs:
        return
    await conn.execute(
        "INSERT INTO execution_runs (id, org_id, workflow_id, workflow_version, workflow_slug, "
        "external_id, parent_execution_id, status, input, output, error, started_at, "
        "finished_at, duration_ms, last_seq, compensation_order) "
        "SELECT a, b, c, d, e, f, g, h, i::jsonb, j::jsonb, k::jsonb, l, m, n, o, q::jsonb "
        "FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::text[], "
        "$7::uuid[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], "
        "$13::timestamptz[], $14::float8[], $15::bigint[], $16::text[]) "
        "AS u(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, q) "
        "ON CONFLICT (id) DO UPDATE SET workflow_slug = excluded.workflow_slug, "
        "external_id = excluded.external_id, parent_execution_id = excluded.parent_execution_id, "
        "status = excluded.status, input = excluded.input, output = excluded.output, "
        "error = excluded.error, finished_at = excluded.finished_at, "
        "duration_ms = excluded.duration_ms, last_seq = excluded.last_seq, "
        "compensation_order = excluded.compensation_order",
        [r.id for r in runs],
        [r.org_id for r in runs],
        [r.workflow_id for r in runs],
        [r.workflow_version for r in runs],
        [r.workflow_slug for r in runs],
        [r.external_id for r in runs],
        [r.parent_execution_id for r in runs],
        [r.status for r in runs],
        [_json(r.input if r.input is not None else {}) for r in runs],
        [_json(r.output) for r in runs],
        [_json(r.error) for r in runs],
        [r.started_at for r in runs],
        [r.finished_at for r in runs],
        [r.duration_ms for r in runs],
        [r.last_seq for r in runs],
        [_json(r.compensation_order) for r in runs],
    )


async def upsert_steps(conn: Connection, steps: Sequence[StepRow]) -> None:
    """Insert or overwrite these step rows."""
    if not steps:
        return
    await conn.execute(
        "INSERT INTO step_runs (execution_id, node_id, org_id, node_type, status, attempts, "
        "input, output, output_ref, error, status_reason, scheduled_at, started_at, finished_at) "
        "SELECT a, b, c, d, e, f, g::jsonb, h::jsonb, i, j::jsonb, k, l, m, n "
        "FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::int[], "
        "$7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::timestamptz[], "
        "$13::timestamptz[], $14::timestamptz[]) AS u(a, b, c, d, e, f, g, h, i, j, k, l, m, n) "
        "ON CONFLICT (execution_id, node_id) DO UPDATE SET node_type = excluded.node_type, "
        "status = excluded.status, attempts = excluded.attempts, input = excluded.input, "
        "output = excluded.output, output_ref = excluded.output_ref, error = excluded.error, "
        "status_reason = excluded.status_reason, scheduled_at = excluded.scheduled_at, "
        "started_at = excluded.started_at, finished_at = excluded.finished_at",
        [s.execution_id for s in steps],
        [s.node_id for s in steps],
        [s.org_id for s in steps],
        [s.node_type for s in steps],
        [s.status for s in steps],
        [s.attempts for s in steps],
        [_json(s.input) for s in steps],
        [_json(s.output) for s in steps],
        [s.output_ref for s in steps],
        [_json(s.error) for s in steps],
        [s.status_reason for s in steps],
        [s.scheduled_at for s in steps],
        [s.started_at for s in steps],
        [s.finished_at for s in steps],
    )


# --- the audit chain ----------------------------------------------------------------------------


async def lock_chain_heads(
    conn: Connection, org_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, ChainHead]:
    """Take each org's chain lock (sorted, so instances never deadlock); return the heads.

    The transaction-scoped advisory lock serialises appends per org across sink
    instances; the unique (org_id, org_seq) constraint backs it up.
    """
    orgs = sorted(set(org_ids))
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('cadenza.audit_log:' || o::text, 0)) "
        "FROM (SELECT o FROM unnest($1::uuid[]) AS o ORDER BY o) AS s",
        orgs,
    )
    rows = await conn.fetch(
        "SELECT o AS org_id, h.org_seq, h.hash FROM unnest($1::uuid[]) AS o "
        "LEFT JOIN LATERAL (SELECT org_seq, hash FROM audit_log WHERE org_id = o "
        "ORDER BY org_seq DESC LIMIT 1) AS h ON true",
        orgs,
    )
    return {r["org_id"]: ChainHead(r["org_seq"], r["hash"]) for r in rows if r["org_seq"]}


AUDIT_COLUMNS = (
    "org_id",
    "org_seq",
    "event_id",
    "actor",
    "action",
    "resource_type",
    "resource_id",
    "execution_id",
    "before",
    "after",
    "occurred_at",
    "recorded_at",
    "prev_hash",
    "hash",
)


async def insert_audit(conn: Connection, rows: Sequence[ChainedRow]) -> None:
    """Append chained rows to `audit_log` (binary COPY: duplicates were filtered out before)."""
    if not rows:
        return
    records = [
        (
            r.entry.org_id,
            r.org_seq,
            r.entry.event_id,
            _json(r.entry.actor),
            r.entry.action,
            r.entry.resource_type,
            r.entry.resource_id,
            r.entry.execution_id,
            _json(r.entry.before),
            _json(r.entry.after),
            r.entry.occurred_at,
            r.recorded_at,
            r.prev_hash,
            r.hash,
        )
        for r in rows
    ]
    await conn.copy_records_to_table("audit_log", records=records, columns=AUDIT_COLUMNS)


async def chain_page(
    conn: Connection, org_id: uuid.UUID, after_seq: int, limit: int
) -> list[tuple[int, ChainedRow]]:
    """Up to `limit` of the org's audit rows after `after_seq`, in chain order, with their ids."""
    rows = await conn.fetch(
        "SELECT id, org_seq, event_id, actor::text, action, resource_type, resource_id, "
        "execution_id, before::text, after::text, occurred_at, recorded_at, prev_hash, hash "
        "FROM audit_log WHERE org_id = $1 AND org_seq > $2 ORDER BY org_seq LIMIT $3",
        org_id,
        after_seq,
        limit,
    )
    return [(r["id"], _chained_from(org_id, r)) for r in rows]


def _chained_from(org_id: uuid.UUID, r: asyncpg.Record) -> ChainedRow:
    entry = AuditEntry(
        org_id=org_id,
        event_id=r["event_id"],
        actor=_load(r["actor"]),
        action=r["action"],
        resource_type=r["resource_type"],
        resource_id=r["resource_id"],
        execution_id=r["execution_id"],
        before=_load(r["before"]),
        after=_load(r["after"]),
        occurred_at=r["occurred_at"],
    )
    return ChainedRow(entry, r["org_seq"], r["recorded_at"], r["prev_hash"], r["hash"])


# --- retention ----------------------------------------------------------------------------------


async def delete_finished_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to `limit` executions finished before `cutoff`, with their steps and trace."""
    ids = [
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM execution_runs WHERE finished_at < $1 LIMIT $2", cutoff, limit
        )
    ]
    if not ids:
        return 0
    await conn.execute("DELETE FROM step_runs WHERE execution_id = ANY($1)", ids)
    await conn.execute("DELETE FROM step_events WHERE execution_id = ANY($1)", ids)
    await conn.execute("DELETE FROM execution_runs WHERE id = ANY($1)", ids)
    return len(ids)
