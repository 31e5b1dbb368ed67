"""The execute hot path over a plain asyncpg pool: few round trips, no transaction ceremony.

Each step is ONE autocommit statement: (1) count the request in the org's rate-limit
window and fetch the workflow, (2) insert the request row and its outbox rows together
(a data-modifying CTE, so they commit atomically), (3) only on an `externalId` repeat,
read the first execution. The pool skips asyncpg's per-release reset because these
statements leave no session state behind.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from cadenza_common.events import WorkflowSnapshot
from cadenza_trigger_api.ratelimit import check_limit, window_start

ADMIT = """
WITH rl AS (
    INSERT INTO rate_limit_windows (org_id, window_start, count) VALUES ($1, $2, 1)
    ON CONFLICT (org_id, window_start) DO UPDATE SET count = rate_limit_windows.count + 1
    RETURNING count
)
SELECT rl.count, o.executions_per_minute AS lim, w.id, w.slug, w.status, w.latest_version
FROM rl CROSS JOIN orgs o
LEFT JOIN LATERAL (
    SELECT id, slug, status, latest_version FROM workflows
    WHERE org_id = $1 AND (id = $3 OR slug = $4)
    ORDER BY (id = $3) DESC NULLS LAST LIMIT 1
) w ON true
WHERE o.id = $1
"""

VERSION = "SELECT spec FROM workflow_versions WHERE workflow_id = $1 AND version = $2"

INSERT = """
WITH req AS (
    INSERT INTO execution_requests
        (id, org_id, workflow_id, workflow_version, external_id, input, requested_by, created_at)
    VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)
    ON CONFLICT (org_id, workflow_id, external_id) DO NOTHING
    RETURNING id
)
INSERT INTO outbox (topic, key, value, headers, created_at)
SELECT v.topic, v.key, v.value, v.headers::jsonb, $8
FROM req, (VALUES (1, $9::text, $10::text, $11::bytea, $12::text),
                  (2, $13::text, $14::text, $15::bytea, $16::text))
    AS v(n, topic, key, value, headers)
ORDER BY v.n
RETURNING id
"""

PUBLISHED = """
SELECT w.id, v.version, v.spec FROM workflows w
JOIN workflow_versions v ON v.workflow_id = w.id AND v.version = COALESCE($3, w.latest_version)
WHERE w.org_id = $1 AND w.slug = $2 AND w.status <> 'archived'
"""

EXISTING = """
SELECT id, workflow_version, created_at FROM execution_requests
WHERE org_id = $1 AND workflow_id = $2 AND external_id = $3
"""


@dataclass(frozen=True)
class AdmittedWorkflow:
    """The workflow an admitted request targets."""

    id: uuid.UUID
    slug: str
    status: str
    latest_version: int | None


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Nothing to reset: intake statements leave no session state."""


async def create_pool(url: str, max_size: int) -> asyncpg.Pool:
    """An asyncpg pool for the intake path (`postgresql+asyncpg://` URLs accepted)."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, reset=_no_reset)
    return pool


class Intake:
    """Rate limit, workflow lookup and the atomic request+outbox insert."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def admit(self, org_id: uuid.UUID, ref: str, now: datetime) -> AdmittedWorkflow | None:
        """Count the request against the org's limit and find the workflow (None if absent).

        Raises:
            RateLimited: past the org's executions per minute.
        """
        try:
            ref_id: uuid.UUID | None = uuid.UUID(ref)
        except ValueError:
            ref_id = None
        start = window_start(now)
        row = await self._pool.fetchrow(ADMIT, org_id, start, ref_id, ref)
        check_limit(row["count"], row["lim"], start, now)
        if row["id"] is None:
            return None
        return AdmittedWorkflow(row["id"], row["slug"], row["status"], row["latest_version"])

    async def version_spec(self, workflow_id: uuid.UUID, version: int) -> dict[str, Any] | None:
        """The immutable spec of one published version."""
        raw = await self._pool.fetchval(VERSION, workflow_id, version)
        if raw is None:
            return None
        spec: dict[str, Any] = orjson.loads(raw)
        return spec

    async def published(
        self, org_id: uuid.UUID, slug: str, version: int | None
    ) -> WorkflowSnapshot | None:
        """The org's workflow `slug` at `version` (None: latest), if published and not archived."""
        row = await self._pool.fetchrow(PUBLISHED, org_id, slug, version)
        if row is None:
            return None
        return WorkflowSnapshot(workflow_id=row["id"], workflow_version=row["version"],
                                workflow=orjson.loads(row["spec"]))

    async def insert(self, request: list[Any], rows: list[dict[str, Any]]) -> bool:
        """Insert the request row and its outbox rows atomically; False on an externalId repeat."""
        args = list(request)
        for row in rows:
            args += [row["topic"], row["key"], row["value"], orjson.dumps(row["headers"]).decode()]
        return bool(await self._pool.fetch(INSERT, *args))

    async def existing(
        self, org_id: uuid.UUID, workflow_id: uuid.UUID, external_id: str
    ) -> asyncpg.Record | None:
        """The first execution requested with this externalId."""
        record: asyncpg.Record | None = await self._pool.fetchrow(
            EXISTING, org_id, workflow_id, external_id)
        return record
