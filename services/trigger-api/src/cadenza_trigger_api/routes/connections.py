"""Service connections: base URL, auth (the secret is write-only, encrypted at rest), limits."""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Response
from pydantic import Field, HttpUrl
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cadenza_common.db.tables import service_connections
from cadenza_common.events import new_event_id, utcnow
from cadenza_common.ssrf import SsrfRefused, pinned_client
from cadenza_trigger_api import audit
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.deps import Ctx, Cursor, Editor, Limit, Reader
from cadenza_trigger_api.errors import Conflict, NotFound
from cadenza_trigger_api.pagination import (
    fetch_page,
)
from cadenza_trigger_api.wire import CamelModel, Page

router = APIRouter(prefix="/api/service-connections", tags=["service-connections"])

AuthType = Literal["none", "api_key", "bearer", "basic"]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")]
Url = Annotated[HttpUrl, Field(max_length=2000)]
Secret = Annotated[str, Field(min_length=1, max_length=4000)]
HostList = Annotated[list[Annotated[str, Field(min_length=1, max_length=255)]],
                     Field(max_length=100)]


class ConnectionCreate(CamelModel):
    name: Name
    base_url: Url
    auth_type: AuthType = "none"
    auth_header: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    api_key: Secret | None = Field(default=None, description="write-only; never returned")
    allowed_hosts: HostList = Field(default_factory=list)
    allow_private_network: bool = False
    default_timeout_s: float = Field(default=30.0, gt=0, le=300)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=100_000)
    concurrency_limit: int | None = Field(default=None, ge=1, le=10_000)
    openapi_url: Url | None = None


class ConnectionPatch(CamelModel):
    name: Name | None = None
    base_url: Url | None = None
    auth_type: AuthType | None = None
    auth_header: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    api_key: Secret | None = Field(default=None, description="write-only; replaces the secret")
    allowed_hosts: HostList | None = None
    allow_private_network: bool | None = None
    default_timeout_s: float | None = Field(default=None, gt=0, le=300)
    rate_limit_per_s: float | None = Field(default=None, gt=0, le=100_000)
    concurrency_limit: int | None = Field(default=None, ge=1, le=10_000)
    openapi_url: Url | None = None


class ConnectionOut(CamelModel):
    id: uuid.UUID
    name: str
    base_url: str
    auth_type: str
    auth_header: str | None
    has_secret: bool
    allowed_hosts: list[str]
    allow_private_network: bool
    default_timeout_s: float
    rate_limit_per_s: float | None
    concurrency_limit: int | None
    openapi_url: str | None
    created_at: datetime
    updated_at: datetime


class TestResult(CamelModel):
    reachable: bool
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None


def to_out(row: Row[Any]) -> ConnectionOut:
    return ConnectionOut(
        id=row.id, name=row.name, base_url=row.base_url, auth_type=row.auth_type,
        auth_header=row.auth_header, has_secret=row.secret_ciphertext is not None,
        allowed_hosts=row.allowed_hosts, allow_private_network=row.allow_private_network,
        default_timeout_s=row.default_timeout_s, rate_limit_per_s=row.rate_limit_per_s,
        concurrency_limit=row.concurrency_limit, openapi_url=row.openapi_url,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def _view(row: Row[Any]) -> dict[str, Any]:
    return to_out(row).model_dump(mode="json", by_alias=True)


def _columns(ctx: AppContext, org_id: uuid.UUID, body: dict[str, Any]) -> dict[str, Any]:
    """Wire fields to columns; the API key becomes a ciphertext bound to the org."""
    values = {k: (str(v) if k in ("base_url", "openapi_url") and v is not None else v)
              for k, v in body.items() if k != "api_key"}
    if body.get("api_key") is not None:
        values["secret_ciphertext"] = ctx.box.encrypt(body["api_key"],
                                                      context=ctx.org_context(org_id))
    return values


async def find(conn: AsyncConnection, org_id: uuid.UUID, connection_id: uuid.UUID,
               *, lock: bool = False) -> Row[Any]:
    """The org's connection.

    Raises:
        NotFound: when the org has no such connection.
    """
    query = sa.select(service_connections).where(
        service_connections.c.org_id == org_id, service_connections.c.id == connection_id)
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound(f"service connection {connection_id} not found")
    return row


@router.get("", response_model=Page[ConnectionOut])
async def list_connections(ctx: Ctx, who: Reader, limit: Limit = None, cursor: Cursor = None
                           ) -> Page[ConnectionOut]:
    size = ctx.page_size(limit)
    c = service_connections
    query = sa.select(c).where(c.c.org_id == who.org_id)
    async with ctx.engine.connect() as conn:
        rows, nxt = await fetch_page(conn, query, c.c.created_at, c.c.id, cursor, size)
    return Page[ConnectionOut](items=[to_out(r) for r in rows], next_cursor=nxt)


@router.post("", status_code=201, response_model=ConnectionOut)
async def create_connection(body: ConnectionCreate, ctx: Ctx, who: Editor) -> ConnectionOut:
    values = _columns(ctx, who.org_id, body.model_dump())
    try:
        async with ctx.engine.begin() as conn:
            row = (await conn.execute(
                service_connections.insert()
                .values(id=new_event_id(), org_id=who.org_id, **values)
                .returning(service_connections)
            )).one()
            await audit.record(conn, ctx.topics, who, "connection.created",
                               ("service_connection", str(row.id)), after=_view(row))
    except IntegrityError:
        raise Conflict(f"a connection named {body.name!r} already exists") from None
    return to_out(row)


@router.get("/{connection_id}", response_model=ConnectionOut)
async def get_connection(connection_id: uuid.UUID, ctx: Ctx, who: Reader) -> ConnectionOut:
    async with ctx.engine.connect() as conn:
        return to_out(await find(conn, who.org_id, connection_id))


@router.patch("/{connection_id}", response_model=ConnectionOut)
async def patch_connection(
    connection_id: uuid.UUID, body: ConnectionPatch, ctx: Ctx, who: Editor
) -> ConnectionOut:
    changes = _columns(ctx, who.org_id, body.model_dump(exclude_unset=True))
    try:
        async with ctx.engine.begin() as conn:
            before = await find(conn, who.org_id, connection_id, lock=True)
            after = (await conn.execute(
                service_connections.update().where(service_connections.c.id == before.id)
                .values(updated_at=utcnow(), **changes).returning(service_connections)
            )).one()
            await audit.record(conn, ctx.topics, who, "connection.updated",
                               ("service_connection", str(before.id)), before=_view(before),
                               after={**_view(after),
                                      "secretChanged": body.api_key is not None})
    except IntegrityError:
        raise Conflict("a connection with that name already exists") from None
    return to_out(after)


@router.delete("/{connection_id}", status_code=204, response_class=Response)
async def delete_connection(connection_id: uuid.UUID, ctx: Ctx, who: Editor) -> Response:
    async with ctx.engine.begin() as conn:
        before = await find(conn, who.org_id, connection_id, lock=True)
        await conn.execute(
            service_connections.delete().where(service_connections.c.id == before.id))
        await audit.record(conn, ctx.topics, who, "connection.deleted",
                           ("service_connection", str(before.id)), before=_view(before))
    return Response(status_code=204)


@router.post("/{connection_id}/test", response_model=TestResult)
async def test_connection(connection_id: uuid.UUID, ctx: Ctx, who: Editor) -> TestResult:
    async with ctx.engine.connect() as conn:
        row = await find(conn, who.org_id, connection_id)
    allow_private = row.allow_private_network or ctx.settings.outbound_allow_private
    started = time.perf_counter()
    try:
        async with pinned_client(allow_private=allow_private, allowed_hosts=row.allowed_hosts,
                                 timeout=min(row.default_timeout_s,
                                             ctx.settings.outbound_timeout_s)) as http:
            response = await http.get(row.base_url)
    except SsrfRefused as exc:
        return TestResult(reachable=False, error=f"refused by the SSRF guard: {exc.reason}")
    except httpx.HTTPError as exc:
        return TestResult(reachable=False, error=f"{type(exc).__name__}: {exc}"[:500])
    latency = (time.perf_counter() - started) * 1000
    return TestResult(reachable=True, status_code=response.status_code, latency_ms=latency)
