"""Audit records for control-plane changes, published through the outbox, secrets redacted."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cadenza_common.db.tables import outbox
from cadenza_common.events import Actor, AuditRecorded, Topics
from cadenza_trigger_api.auth import Principal
from cadenza_trigger_api.outbox import outbox_row

REDACTED = "[redacted]"
SECRET_MARKERS = ("secret", "apikey", "api_key", "password", "token", "authorization", "ciphertext")


def redact(value: Any) -> Any:
    """A copy of `value` with every field whose name looks secret replaced by `[redacted]`."""
    if isinstance(value, dict):
        return {
            k: REDACTED if _is_secret(k) and v is not None else redact(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _is_secret(name: str) -> bool:
    lowered = name.lower().replace("-", "_")
    return any(marker in lowered for marker in SECRET_MARKERS)


async def record(
    conn: AsyncConnection,
    topics: Topics,
    principal: Principal | tuple[uuid.UUID, Actor],
    action: str,
    resource: tuple[str, str],
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    execution_id: uuid.UUID | None = None,
) -> None:
    """Write an AuditRecorded to the outbox inside the caller's transaction.

    `principal` is the calling key, or (org id, actor) for callers without one.
    """
    org_id, actor = (
        (principal.org_id, principal.actor()) if isinstance(principal, Principal) else principal
    )
    event = AuditRecorded(
        org_id=org_id,
        actor=actor,
        action=action,
        resource_type=resource[0],
        resource_id=resource[1],
        before=redact(before),
        after=redact(after),
        execution_id=execution_id,
    )
    await conn.execute(outbox.insert().values(outbox_row(topics.audit_records, event)))
