"""The execute hot path over a plain asyncpg pool: few round trips, no transaction ceremony.

Each step is ONE autocommit statement: (1) count the request in the org's rate-limit
window and fetch the workflow, (2) insert the request row and its outbox rows together
(a data-modifying CTE, so they commit atomically), (3) only on an `externalId` repeat,
read the first execution. The pool skips asyncpg's per-release reset because these
statements leave no session state behind.

When the route already knows the workflow and its snapshot (from an earlier request),
(1) and (2) are ONE statement (`ADMIT_AND_INSERT`): it counts the request, checks that
the workflow is still active at the expected version, and inserts only then. A workflow
paused, archived or republished since makes it insert nothing and report it, and the
route takes the two-statement way (without counting the request twice).
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
    INSERT INTO rate_limit_windows (org_id, window_start, count) VALUES ($1, $2, $5)
    ON CONFLICT (org_id, window_start) DO UPDATE SET count = rate_limit_windows.count + $5
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

# $1-$16 as in INSERT; $17 the rate-limit window, $18 whether the version was pinned
ADMIT_AND_INSERT = """
WITH rl AS (
    INSERT INTO rate_limit_windows (org_id, window_start, count) VALUES ($2, $17, 1)
    ON CONFLICT (org_id, window_start) DO UPDATE SET count = rate_limit_windows.count + 1
    RETURNING count
), head AS (
    SELECT rl.count, o.executions_per_minute AS lim,
           coalesce(w.status = 'active' AND ($18::boolean OR w.latest_version = $4::int), false)
               AS current
    FROM rl CROSS JOIN orgs o
    LEFT JOIN workflows w ON w.id = $3::uuid AND w.org_id = $2::uuid
    WHERE o.id = $2::uuid
), req AS (
    INSERT INTO execution_requests
        (id, org_id, workflow_id, workflow_version, external_id, input, requested_by, created_at)
    SELECT $1::uuid, $2::uuid, $3::uuid, $4::int, $5::text, $6::jsonb, $7::text,
           $8::timestamptz
    FROM head WHERE head.current AND head.count <= head.lim
    ON CONFLICT (org_id, workflow_id, external_id) DO NOTHING
    RETURNING id
), out AS (
    INSERT INTO outbox (topic, key, value, headers, created_at)
    SELECT v.topic, v.key, v.value, v.headers::jsonb, $8::timestamptz
    FROM req, (VALUES (1, $9::text, $10::text, $11::bytea, $12::text),
                      (2, $13::text, $14::text, $15::bytea, $16::text))
        AS v(n, topic, key, value, headers)
    ORDER BY v.n
    RETURNING id
)
SELECT head.count, head.lim, head.current, EXISTS (SELECT 1 FROM req) AS created FROM head
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
class Admission:
    """What `ADMIT_AND_INSERT` did: whether the workflow was current, and was inserted."""

    current: bool
    created: bool


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

    async def admit(
        self, org_id: uuid.UUID, ref: str, now: datetime, *, counted: bool = False
    ) -> AdmittedWorkflow | None:
        """Count the request against the org's limit and find the workflow (None if absent).

        Args:
            counted: the request was counted already (by `admit_and_insert`).

        Raises:
            RateLimited: past the org's executions per minute.
        """
        try:
            ref_id: uuid.UUID | None = uuid.UUID(ref)
        except ValueError:
            ref_id = None
        start = window_start(now)
        row = await self._pool.fetchrow(ADMIT, org_id, start, ref_id, ref, 0 if counted else 1)
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
        return bool(await self._pool.fetch(INSERT, *_insert_args(request, rows)))

    async def admit_and_insert(
        self, request: list[Any], rows: list[dict[str, Any]], now: datetime, pinned: bool
    ) -> Admission | None:
        """Count the request and, if the workflow is still active at the request's version
        and the org is within its limit, insert it with its outbox rows (one statement).

        Returns None when the org is gone. Raises:
            RateLimited: past the org's executions per minute (nothing inserted).
        """
        start = window_start(now)
        row = await self._pool.fetchrow(
            ADMIT_AND_INSERT, *_insert_args(request, rows), start, pinned
        )
        if row is None:
            return None
        check_limit(row["count"], row["lim"], start, now)
        return Admission(row["current"], row["created"])

    async def existing(
        self, org_id: uuid.UUID, workflow_id: uuid.UUID, external_id: str
    ) -> asyncpg.Record | None:
        """The first execution requested with this externalId."""
        record: asyncpg.Record | None = await self._pool.fetchrow(
            EXISTING, org_id, workflow_id, external_id)
        return record


def _insert_args(request: list[Any], rows: list[dict[str, Any]]) -> list[Any]:
    """$1-$16 of `INSERT` and `ADMIT_AND_INSERT`: the request row, then each outbox row."""
    args = list(request)
    for row in rows:
        args += [row["topic"], row["key"], row["value"], orjson.dumps(row["headers"]).decode()]
    return args
