"""Service connections (read-only; the trigger-api writes them), cached, secrets decrypted."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.crypto import SecretBox
from cadenza_common.db import tables


class UnknownConnection(LookupError):
    """No service connection of that name in the org."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Connection:
    """A service connection with its secret opened (keep it out of events and logs)."""

    org_id: uuid.UUID
    name: str
    base_url: str
    auth_type: str = "none"
    auth_header: str | None = None
    secret: str | None = field(default=None, repr=False)
    allowed_hosts: tuple[str, ...] = ()
    allow_private_network: bool = False
    default_timeout_s: float = 30.0
    rate_limit_per_s: float | None = None
    concurrency_limit: int | None = None

    def auth_headers(self) -> dict[str, str]:
        """The headers that authenticate a call (`bearer`, `header`/`api_key`, `basic`)."""
        if not self.secret or self.auth_type == "none":
            return {}
        if self.auth_type == "bearer":
            return {"Authorization": f"Bearer {self.secret}"}
        if self.auth_type == "basic":
            return {"Authorization": "Basic " + base64.b64encode(self.secret.encode()).decode()}
        return {self.auth_header or "X-API-Key": self.secret}


class ConnectionRepository:
    """Loads connections by (org, name) from Postgres, caching them for `ttl_s` seconds."""

    def __init__(self, engine: AsyncEngine, box: SecretBox, ttl_s: float = 10.0) -> None:
        self._engine = engine
        self._box = box
        self._ttl = ttl_s
        self._cache: dict[tuple[uuid.UUID, str], tuple[float, Connection]] = {}

    async def get(self, org_id: uuid.UUID, name: str) -> Connection:
        """The org's connection called `name`.

        Raises:
            UnknownConnection: there is none.
        """
        key = (org_id, name)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        conn = await self._load(org_id, name)
        self._cache[key] = (now + self._ttl, conn)
        return conn

    async def _load(self, org_id: uuid.UUID, name: str) -> Connection:
        t = tables.service_connections
        query = sa.select(t).where(t.c.org_id == org_id, t.c.name == name)
        async with self._engine.connect() as db:
            row = (await db.execute(query)).mappings().first()
        if row is None:
            raise UnknownConnection(f"no service connection named {name!r}")
        return self._connection(row)

    def _connection(self, row: Any) -> Connection:
        secret = None
        if row["secret_ciphertext"]:
            secret = self._box.decrypt(row["secret_ciphertext"], context=f"org:{row['org_id']}")
        return Connection(
            org_id=row["org_id"],
            name=row["name"],
            base_url=row["base_url"],
            auth_type=row["auth_type"],
            auth_header=row["auth_header"],
            secret=secret,
            allowed_hosts=tuple(row["allowed_hosts"] or ()),
            allow_private_network=row["allow_private_network"],
            default_timeout_s=row["default_timeout_s"],
            rate_limit_per_s=row["rate_limit_per_s"],
            concurrency_limit=row["concurrency_limit"],
        )
