"""Creating an org with its bootstrap admin key (the CLI's `create-org`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.db.tables import api_keys, orgs
from cadenza_common.events import new_event_id
from cadenza_trigger_api.auth import KeyHasher, Role


@dataclass(frozen=True)
class NewOrg:
    """A created org and its first admin key (plaintext, shown once)."""

    org_id: uuid.UUID
    key_id: str
    key: str


async def create_org(
    engine: AsyncEngine,
    hasher: KeyHasher,
    name: str,
    *,
    executions_per_minute: int | None = None,
    role: Role = Role.ADMIN,
) -> NewOrg:
    """Insert an org and a bootstrap key of `role` (admin by default)."""
    org_id = new_event_id()
    new = hasher.mint()
    values: dict[str, object] = {"id": org_id, "name": name}
    if executions_per_minute is not None:
        values["executions_per_minute"] = executions_per_minute
    async with engine.begin() as conn:
        await conn.execute(orgs.insert().values(values))
        await conn.execute(
            api_keys.insert().values(
                id=new.key_id, org_id=org_id, name="bootstrap", role=role.value,
                secret_hash=new.secret_hash, created_by="cli",
            )
        )
    return NewOrg(org_id, new.key_id, new.plaintext)
