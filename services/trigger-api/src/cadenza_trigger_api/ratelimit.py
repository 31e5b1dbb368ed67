"""Per-org execution rate limit shared by every replica: a fixed one-minute window in Postgres.

One atomic upsert per request counts it in `rate_limit_windows`; replicas share
the row, so the limit holds across them. Windows older than a few minutes are
pruned by `prune`.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.db.tables import orgs, rate_limit_windows
from cadenza_trigger_api.errors import RateLimited

WINDOW = timedelta(minutes=1)


def window_start(now: datetime) -> datetime:
    """The start of the minute `now` falls in."""
    return now.replace(second=0, microsecond=0)


class RateLimiter:
    """Counts executions per org per minute and refuses those past the org's limit."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def hit(self, org_id: uuid.UUID, now: datetime) -> None:
        """Count one execution request.

        Raises:
            RateLimited: past the org's `executions_per_minute`, with `Retry-After`.
        """
        start = window_start(now)
        upsert = (
            insert(rate_limit_windows)
            .values(org_id=org_id, window_start=start, count=1)
            .on_conflict_do_update(
                index_elements=["org_id", "window_start"],
                set_={"count": rate_limit_windows.c.count + 1},
            )
            .returning(rate_limit_windows.c.count)
        )
        limit_q = sa.select(orgs.c.executions_per_minute).where(orgs.c.id == org_id)
        async with self._engine.begin() as conn:
            count = (await conn.execute(upsert)).scalar_one()
            limit = (await conn.execute(limit_q)).scalar_one()
        if count > limit:
            retry_after = max(1, math.ceil((start + WINDOW - now).total_seconds()))
            raise RateLimited(
                f"at most {limit} executions per minute for this org",
                headers={"Retry-After": str(retry_after)},
            )

    async def prune(self, now: datetime) -> None:
        """Delete windows that can no longer matter."""
        async with self._engine.begin() as conn:
            await conn.execute(
                sa.delete(rate_limit_windows).where(
                    rate_limit_windows.c.window_start < window_start(now) - 2 * WINDOW
                )
            )
