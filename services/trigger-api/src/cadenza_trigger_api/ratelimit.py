"""Per-org execution rate limit shared by every replica: a fixed one-minute window in Postgres.

One atomic upsert per request counts it in `rate_limit_windows` (see `intake.ADMIT`);
replicas share the row, so the limit holds across them. `prune` deletes old windows.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.db.tables import rate_limit_windows
from cadenza_trigger_api.errors import RateLimited

WINDOW = timedelta(minutes=1)


def window_start(now: datetime) -> datetime:
    """The start of the minute `now` falls in."""
    return now.replace(second=0, microsecond=0)


def check_limit(count: int, limit: int, start: datetime, now: datetime) -> None:
    """Refuse the `count`-th request of a window when it exceeds `limit`.

    Raises:
        RateLimited: with `Retry-After` set to the seconds left in the window.
    """
    if count > limit:
        retry_after = max(1, math.ceil((start + WINDOW - now).total_seconds()))
        raise RateLimited(
            f"at most {limit} executions per minute for this org",
            headers={"Retry-After": str(retry_after)},
        )


async def prune(engine: AsyncEngine, now: datetime) -> None:
    """Delete windows that can no longer matter."""
    async with engine.begin() as conn:
        await conn.execute(
            sa.delete(rate_limit_windows).where(
                rate_limit_windows.c.window_start < window_start(now) - 2 * WINDOW
            )
        )
