"""Audit entries, secret redaction and the per-org hash chain (no I/O, no clock).

Each org's rows form a chain: `hash = sha256(prev_hash || canonical JSON of the row)`,
the first row's `prev_hash` is 64 zeros. The canonical JSON is the row's fields
(`org_id`, `org_seq`, `event_id`, `actor`, `action`, `resource_type`,
`resource_id`, `execution_id`, `before`, `after`, `occurred_at`, `recorded_at`)
serialised by orjson with sorted keys; uuids as text, times as UTC ISO 8601.
Values are normalised before they are stored so that what Postgres' JSONB gives
back hashes the same (see `normalize`).
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cadenza_audit_sink.domain.projection import Transition
from cadenza_common import events as ev

GENESIS = "0" * 64
REDACTED = "[redacted]"
_SECRET_FRAGMENTS = (
    "secret",
    "password",
    "passwd",
    "token",
    "apikey",
    "authorization",
    "credential",
    "privatekey",
    "cookie",
)
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1  # what orjson reads back as int, not float
_NOT_ALNUM = re.compile(r"[^a-z0-9]")
_ENVELOPE = frozenset({"event_id", "occurred_at", "execution_id", "org_id"})


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a JSON key names a secret (`apiKey`, `X-Api-Key`, `client_secret`, `password`...)."""
    flat = _NOT_ALNUM.sub("", key.lower())
    return any(fragment in flat for fragment in _SECRET_FRAGMENTS)


def normalize(value: Any, *, redact: bool = False) -> Any:
    """A JSON value as Postgres JSONB returns it, optionally with secret keys redacted.

    JSONB keeps no NUL characters, no negative zero, and prints integral floats
    written with an exponent (>= 1e16) as digits, which orjson reads back as an
    int within 64 bits and as a float beyond; normalising first makes the hash of
    a stored row equal to the hash of the row read back.
    """
    if value is None or value is True or value is False or type(value) is int:
        return value
    if isinstance(value, dict):
        return {
            _text(k): REDACTED if redact and is_secret_key(k) else normalize(v, redact=redact)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [normalize(v, redact=redact) for v in value]
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        if value == 0:
            return 0.0
        if value.is_integer() and abs(value) >= 1e16 and _INT_MIN <= value <= _UINT_MAX:
            return int(value)  # JSONB prints it as digits, which read back as an int
    return value


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


@dataclass(frozen=True)
class AuditEntry:
    """One audit row before it is chained."""

    org_id: uuid.UUID
    event_id: uuid.UUID
    actor: dict[str, Any]
    action: str
    resource_type: str
    resource_id: str
    execution_id: uuid.UUID | None
    before: Any
    after: Any
    occurred_at: datetime


@dataclass(frozen=True)
class ChainedRow:
    """One audit row with its place in the org's chain."""

    entry: AuditEntry
    org_seq: int
    recorded_at: datetime
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ChainHead:
    """The last row of an org's chain (`org_seq` 0 and GENESIS when empty)."""

    org_seq: int = 0
    hash: str = GENESIS


def entry_for_history(
    event: ev.ExecutionEvent, data: dict[str, Any], transition: Transition
) -> AuditEntry:
    """The audit entry of one history event: who, what, which resource, status before/after."""
    details = {k: v for k, v in data.items() if k not in _ENVELOPE}
    after = normalize({"status": transition.after, **details}, redact=True)
    before = {"status": transition.before} if transition.before is not None else None
    return AuditEntry(
        org_id=event.org_id,
        event_id=event.event_id,
        actor=_actor_of(event).model_dump(mode="json"),
        action=event.CE_TYPE.removeprefix("cadenza."),
        resource_type=transition.resource_type,
        resource_id=transition.resource_id,
        execution_id=event.execution_id,
        before=before,
        after=after,
        occurred_at=event.occurred_at,
    )


def _actor_of(event: ev.ExecutionEvent) -> ev.Actor:
    if isinstance(event, ev.ExecutionStarted):
        return event.initiated_by
    if isinstance(event, ev.ExecutionCancelled):
        return event.cancelled_by
    return ev.Actor()


def entry_for_record(event: ev.AuditRecorded) -> AuditEntry:
    """The audit entry of a control-plane record, its before/after redacted again."""
    return AuditEntry(
        org_id=event.org_id,
        event_id=event.event_id,
        actor=normalize(event.actor.model_dump(mode="json")),
        action=event.action,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        execution_id=event.execution_id,
        before=normalize(event.before, redact=True),
        after=normalize(event.after, redact=True),
        occurred_at=event.occurred_at,
    )


def canonical_json(entry: AuditEntry, org_seq: int, recorded_at: datetime) -> bytes:
    """The bytes the hash covers: the row's fields as sorted-key JSON."""
    doc = {
        "org_id": str(entry.org_id),
        "org_seq": org_seq,
        "event_id": str(entry.event_id),
        "actor": entry.actor,
        "action": entry.action,
        "resource_type": entry.resource_type,
        "resource_id": entry.resource_id,
        "execution_id": str(entry.execution_id) if entry.execution_id else None,
        "before": entry.before,
        "after": entry.after,
        "occurred_at": _time(entry.occurred_at),
        "recorded_at": _time(recorded_at),
    }
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def row_hash(prev_hash: str, entry: AuditEntry, org_seq: int, recorded_at: datetime) -> str:
    """`sha256(prev_hash || canonical JSON)` as hex."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical_json(entry, org_seq, recorded_at))
    return digest.hexdigest()


def chain(
    heads: dict[uuid.UUID, ChainHead], entries: Iterable[AuditEntry], recorded_at: datetime
) -> list[ChainedRow]:
    """Append entries to their orgs' chains in order; `heads` is advanced in place."""
    rows: list[ChainedRow] = []
    for entry in entries:
        head = heads.get(entry.org_id, ChainHead())
        seq = head.org_seq + 1
        digest = row_hash(head.hash, entry, seq, recorded_at)
        rows.append(ChainedRow(entry, seq, recorded_at, head.hash, digest))
        heads[entry.org_id] = ChainHead(seq, digest)
    return rows


@dataclass(frozen=True)
class BrokenLink:
    """The first row where an org's chain does not hold, and why."""

    org_seq: int
    row_id: int | None
    reason: str


class ChainVerifier:
    """Checks an org's rows fed in `org_seq` order; remembers the first broken link."""

    def __init__(self) -> None:
        self.head = ChainHead()
        self.checked = 0
        self.broken: BrokenLink | None = None

    def feed(self, row: ChainedRow, row_id: int | None = None) -> bool:
        """Check one row; return False once the chain is broken."""
        if self.broken is not None:
            return False
        expected_seq = self.head.org_seq + 1
        reason = None
        if row.org_seq != expected_seq:
            reason = f"org_seq {row.org_seq} found where {expected_seq} was expected"
        elif row.prev_hash != self.head.hash:
            reason = "prev_hash does not match the previous row's hash"
        elif row.hash != row_hash(row.prev_hash, row.entry, row.org_seq, row.recorded_at):
            reason = "hash does not match the row's content"
        self.checked += 1
        if reason is not None:
            self.broken = BrokenLink(row.org_seq, row_id, reason)
            return False
        self.head = ChainHead(row.org_seq, row.hash)
        return True
