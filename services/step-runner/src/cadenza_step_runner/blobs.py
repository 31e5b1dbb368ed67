"""Claim check: outputs over the threshold are stored in `blobs`; events carry the id."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from cadenza_common.db import tables


def blob_id(execution_id: uuid.UUID, node_id: str, attempt: int) -> str:
    """A deterministic id per attempt, so a re-run of the same record overwrites, not adds."""
    digest = hashlib.sha256(f"{execution_id}:{node_id}:{attempt}".encode()).hexdigest()
    return f"blob_{digest[:64]}"


class BlobStore:
    """Writes step outputs to the `blobs` table (the step-runner is its only writer)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def put(
        self,
        *,
        org_id: uuid.UUID,
        execution_id: uuid.UUID,
        node_id: str,
        attempt: int,
        data: bytes,
        content_type: str = "application/json",
    ) -> str:
        """Store `data` and return its id (the event's `output_ref`)."""
        ident = blob_id(execution_id, node_id, attempt)
        stmt = insert(tables.blobs).values(
            id=ident,
            org_id=org_id,
            execution_id=execution_id,
            node_id=node_id,
            content_type=content_type,
            size=len(data),
            data=data,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[tables.blobs.c.id],
            set_={"data": stmt.excluded.data, "size": stmt.excluded.size},
        )
        async with self._engine.begin() as db:
            await db.execute(stmt)
        return ident
