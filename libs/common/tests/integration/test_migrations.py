"""Migrations against the real Postgres: up from empty, down to empty, audit_log append-only."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cadenza_common.db import downgrade, upgrade
from cadenza_common.db.tables import metadata
from cadenza_devstack.stack import StackInfo

pytestmark = pytest.mark.integration


@pytest.fixture
async def empty_database(devstack: StackInfo) -> AsyncIterator[str]:
    name = f"cadenza_mig_{uuid.uuid4().hex[:10]}"
    admin = devstack.database_url.replace("postgresql+asyncpg", "postgresql").rsplit("/", 1)[0]
    conn = await asyncpg.connect(admin + "/postgres")
    await conn.execute(f'CREATE DATABASE "{name}"')
    yield devstack.database_url.rsplit("/", 1)[0] + f"/{name}"
    await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await conn.close()


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        )
        return {r[0] for r in rows} - {"alembic_version"}


async def test_upgrade_from_empty_creates_every_table_and_matches_the_models(
    empty_database: str,
) -> None:
    engine = create_async_engine(empty_database)

    upgrade(empty_database)

    assert await _tables(engine) == set(metadata.tables)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    await engine.dispose()
    assert diff == [], f"tables.py and the migrations disagree: {diff}"


async def test_downgrade_to_empty_and_upgrade_again(empty_database: str) -> None:
    engine = create_async_engine(empty_database)
    upgrade(empty_database)

    downgrade(empty_database)
    after_down = await _tables(engine)
    upgrade(empty_database)
    after_up = await _tables(engine)

    await engine.dispose()
    assert after_down == set()
    assert after_up == set(metadata.tables)


INSERT_AUDIT = text(
    "INSERT INTO audit_log (org_id, org_seq, event_id, actor, action, resource_type, "
    "resource_id, occurred_at, prev_hash, hash) VALUES (:org, 1, :eid, '{}', 'workflow.create', "
    "'workflow', 'w1', now(), :zero, :h)"
)


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("UPDATE audit_log SET action = 'forged'", "UPDATE"),
        ("DELETE FROM audit_log", "DELETE"),
        ("TRUNCATE audit_log", "TRUNCATE"),
    ],
)
async def test_audit_log_rejects_changes(database_url: str, statement: str, operation: str) -> None:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.execute(
            INSERT_AUDIT,
            {"org": uuid.uuid4(), "eid": uuid.uuid4(), "zero": "0" * 64, "h": "1" * 64},
        )

    with pytest.raises(Exception, match=f"audit_log is append-only: {operation} is not allowed"):
        async with engine.begin() as conn:
            await conn.execute(text(statement))
    await engine.dispose()
