"""Drops old execution read-model rows (runs, steps, trace); the audit log is never touched."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from cadenza_audit_sink import repository as repo

log = logging.getLogger(__name__)


async def purge(pool: asyncpg.Pool, days: int, now: datetime, chunk: int = 1000) -> int:
    """Delete executions finished more than `days` before `now`, in chunks; return how many."""
    cutoff = now - timedelta(days=days)
    total = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            deleted = await repo.delete_finished_before(conn, cutoff, chunk)
        total += deleted
        if deleted < chunk:
            return total


async def retention_loop(
    pool: asyncpg.Pool, days: int, interval_s: float, stop: asyncio.Event
) -> None:
    """Purge every `interval_s` until stopped; a failed run is logged and tried again later."""
    while not stop.is_set():
        try:
            deleted = await purge(pool, days, datetime.now(UTC))
            log.info("retention purge done", extra={"deleted_executions": deleted})
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("retention purge failed", extra={"error": repr(exc)})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
