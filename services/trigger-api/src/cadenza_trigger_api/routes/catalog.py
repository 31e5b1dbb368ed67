"""`GET /api/catalog/services` and `POST /api/catalog/refresh`: operations of connected services."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Row

from cadenza_common.db.tables import catalog_operations, service_connections
from cadenza_common.events import utcnow
from cadenza_trigger_api import audit
from cadenza_trigger_api.catalog import CatalogFetchError, fetch_document, operations
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.deps import Ctx, Editor, Reader
from cadenza_trigger_api.wire import CamelModel

router = APIRouter(prefix="/api/catalog", tags=["catalog"])


class OperationOut(CamelModel):
    operation_id: str
    method: str
    path: str
    summary: str
    request_schema: dict[str, Any] | None
    response_schema: dict[str, Any] | None


class ServiceOut(CamelModel):
    connection_id: uuid.UUID
    name: str
    openapi_url: str
    fetched_at: datetime | None
    error: str | None = None
    operations: list[OperationOut]


class Catalog(CamelModel):
    items: list[ServiceOut]


class RefreshRequest(CamelModel):
    connection_id: uuid.UUID | None = None


async def _connections(ctx: AppContext, org_id: uuid.UUID, only: uuid.UUID | None = None
                       ) -> list[Row[Any]]:
    c = service_connections
    query = sa.select(c).where(c.c.org_id == org_id, c.c.openapi_url.is_not(None))
    if only is not None:
        query = query.where(c.c.id == only)
    async with ctx.engine.connect() as conn:
        return list((await conn.execute(query.order_by(c.c.name))).all())


async def _cached(ctx: AppContext, org_id: uuid.UUID) -> dict[uuid.UUID, list[Row[Any]]]:
    ops = catalog_operations
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(
            sa.select(ops).where(ops.c.org_id == org_id).order_by(ops.c.path, ops.c.method)
        )).all()
    grouped: dict[uuid.UUID, list[Row[Any]]] = {}
    for row in rows:
        grouped.setdefault(row.connection_id, []).append(row)
    return grouped


async def _refresh(ctx: AppContext, connection: Row[Any]) -> str | None:
    """Fetch and store one connection's operations; return the error, if any."""
    try:
        doc = await fetch_document(
            connection.openapi_url,
            allow_private=connection.allow_private_network or ctx.settings.outbound_allow_private,
            allowed_hosts=connection.allowed_hosts, timeout_s=ctx.settings.outbound_timeout_s)
    except CatalogFetchError as exc:
        return str(exc)
    found = {(o.method, o.path): o for o in operations(doc)}
    now = utcnow()
    async with ctx.engine.begin() as conn:
        await conn.execute(catalog_operations.delete().where(
            catalog_operations.c.connection_id == connection.id))
        if found:
            await conn.execute(insert(catalog_operations), [
                {"connection_id": connection.id, "org_id": connection.org_id,
                 "operation_id": o.operation_id, "method": o.method, "path": o.path,
                 "summary": o.summary, "request_schema": o.request_schema,
                 "response_schema": o.response_schema, "fetched_at": now}
                for o in found.values()
            ])
    return None


def _service(connection: Row[Any], rows: list[Row[Any]], error: str | None) -> ServiceOut:
    return ServiceOut(
        connection_id=connection.id, name=connection.name, openapi_url=connection.openapi_url,
        fetched_at=max((r.fetched_at for r in rows), default=None), error=error,
        operations=[OperationOut(operation_id=r.operation_id, method=r.method, path=r.path,
                                 summary=r.summary, request_schema=r.request_schema,
                                 response_schema=r.response_schema) for r in rows],
    )


@router.get("/services", response_model=Catalog)
async def list_services(ctx: Ctx, who: Reader) -> Catalog:
    connections = await _connections(ctx, who.org_id)
    cached = await _cached(ctx, who.org_id)
    errors: dict[uuid.UUID, str | None] = {}
    for connection in connections:
        if connection.id not in cached:  # first read fetches; later reads use the cache
            errors[connection.id] = await _refresh(ctx, connection)
    if errors:
        cached = await _cached(ctx, who.org_id)
    return Catalog(items=[_service(c, cached.get(c.id, []), errors.get(c.id))
                          for c in connections])


@router.post("/refresh", response_model=Catalog)
async def refresh(ctx: Ctx, who: Editor, body: RefreshRequest | None = None) -> Catalog:
    only = body.connection_id if body is not None else None
    connections = await _connections(ctx, who.org_id, only)
    errors = {c.id: await _refresh(ctx, c) for c in connections}
    async with ctx.engine.begin() as conn:
        await audit.record(conn, ctx.topics, who, "catalog.refreshed",
                           ("catalog", str(only) if only else "all"),
                           after={"connections": [str(c.id) for c in connections]})
    cached = await _cached(ctx, who.org_id)
    return Catalog(items=[_service(c, cached.get(c.id, []), errors.get(c.id))
                          for c in connections])
