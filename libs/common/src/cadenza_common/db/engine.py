"""The SQLAlchemy 2 async engine (asyncpg) every service uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cadenza_common.settings import DatabaseSettings


def _json_dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """Build an async engine with orjson for JSONB and pre-ping on checkout."""
    return create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        pool_pre_ping=True,
        echo=settings.echo,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


@asynccontextmanager
async def session_scope(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction: committed when the block ends, rolled back on an exception."""
    async with engine.begin() as conn:
        yield conn
