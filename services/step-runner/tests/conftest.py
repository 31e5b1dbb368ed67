"""Fixtures of the step-runner tests: the stub HTTP server, the database, an org."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).parent))

from step_runner_stub import StubServer

from cadenza_common.db import tables
from cadenza_common.db.engine import create_engine
from cadenza_common.settings import DatabaseSettings


@pytest.fixture(scope="session")
def stub() -> Iterator[StubServer]:
    server = StubServer().start()
    yield server
    server.stop()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(DatabaseSettings(url=database_url, pool_size=5))
    yield eng
    await eng.dispose()


@pytest.fixture
async def org_id(engine: AsyncEngine) -> uuid.UUID:
    ident = uuid.uuid4()
    async with engine.begin() as db:
        await db.execute(tables.orgs.insert().values(id=ident, name=f"org-{ident.hex[:8]}"))
    return ident
