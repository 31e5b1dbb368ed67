"""The audit log in Postgres: append-only, tamper found by `verify`, untouched by retention."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from cadenza_audit_sink.batch import Item, write
from cadenza_audit_sink.retention import purge
from cadenza_audit_sink.samples import onboarding_history
from cadenza_audit_sink.testing import count
from cadenza_common import events as ev

pytestmark = pytest.mark.integration


async def _write_history(db: asyncpg.Pool, t0: datetime) -> tuple[uuid.UUID, uuid.UUID]:
    """Write one onboarding history with the sink's writer (no Kafka needed here)."""
    org, xid = uuid.uuid4(), uuid.uuid4()
    items = [Item(None, e, e.model_dump(mode="json")) for e in onboarding_history(xid, org, t0)]
    async with db.acquire() as conn, conn.transaction():
        await write(conn, items, datetime.now(UTC))
    return org, xid


async def _verify_cli(database_url: str, org: uuid.UUID) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cadenza_audit_sink",
        "verify",
        "--org",
        str(org),
        env={**os.environ, "CADENZA_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode()


async def test_update_and_delete_on_audit_log_fail(db: asyncpg.Pool) -> None:
    org, _ = await _write_history(db, datetime(2026, 3, 1, tzinfo=UTC))

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE audit_log SET action = 'x' WHERE org_id = $1", org)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM audit_log WHERE org_id = $1", org)

    assert await count(db, "SELECT count(*) FROM audit_log WHERE org_id = $1", org) == 22


async def test_verify_finds_a_tampered_row_at_its_place(
    db: asyncpg.Pool, database_url: str
) -> None:
    org, _ = await _write_history(db, datetime(2026, 3, 1, tzinfo=UTC))
    intact = await _verify_cli(database_url, org)

    async with db.acquire() as conn, conn.transaction():  # a superuser bypassing the triggers
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        await conn.execute(
            "UPDATE audit_log SET after = jsonb_set(after, '{status}', '\"failed\"') "
            "WHERE org_id = $1 AND org_seq = 7",
            org,
        )
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")
    code, out = await _verify_cli(database_url, org)

    assert intact == (0, f"org {org}: 22 audit rows, chain intact\n")
    assert code == 1
    assert "BROKEN at org_seq 7" in out
    assert "hash does not match" in out


async def test_retention_drops_old_executions_but_never_the_audit_log(db: asyncpg.Pool) -> None:
    now = datetime.now(UTC)
    old_org, old_xid = await _write_history(db, now - timedelta(days=100))
    _, new_xid = await _write_history(db, now - timedelta(days=1))

    await purge(db, 90, now)

    assert await count(db, "SELECT count(*) FROM execution_runs WHERE id = $1", old_xid) == 0
    assert await count(db, "SELECT count(*) FROM step_runs WHERE execution_id = $1", old_xid) == 0
    assert await count(db, "SELECT count(*) FROM step_events WHERE execution_id = $1", old_xid) == 0
    assert await count(db, "SELECT count(*) FROM execution_runs WHERE id = $1", new_xid) == 1
    assert await count(db, "SELECT count(*) FROM audit_log WHERE org_id = $1", old_org) == 22
    assert (
        await db.fetchval("SELECT status FROM execution_runs WHERE id = $1", new_xid)
        == ev.ExecutionStatus.SUCCEEDED
    )
