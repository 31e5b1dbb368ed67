"""Throwaway databases on a Postgres server: created and migrated for one run, then dropped.

Used by the test fixtures (`pytest_plugin.fresh_database`) and the benchmarks, which each
work on a database of their own on the shared local server.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from cadenza_common.db import upgrade


async def create_database(server_url: str, prefix: str) -> str:
    """Create `<prefix>_<random>` on the server of `server_url`, migrate it to head and
    return its URL (in `server_url`'s form)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _admin(server_url, f'CREATE DATABASE "{name}"')
    url = server_url.rsplit("/", 1)[0] + f"/{name}"
    await asyncio.to_thread(upgrade, url)
    return url


async def drop_database(url: str) -> None:
    """Drop the database of `url`, closing whatever is still connected to it."""
    await _admin(url, f'DROP DATABASE IF EXISTS "{database_name(url)}" WITH (FORCE)')


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def _admin(url: str, sql: str) -> None:
    """Run `sql` on the server's `postgres` database (`url` names any database on it)."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1).rsplit("/", 1)[0] + "/postgres"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
