"""Workflows: create, edit, the lifecycle (draft → active ⇄ paused → archived), versions."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Path
from pydantic import Field
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cadenza_common.db.tables import workflow_versions, workflows
from cadenza_common.events import new_event_id, utcnow
from cadenza_trigger_api import audit, subworkflows
from cadenza_trigger_api.auth import Principal
from cadenza_trigger_api.context import AppContext
from cadenza_trigger_api.deps import Ctx, Cursor, Editor, Limit, Reader
from cadenza_trigger_api.errors import BadRequest, Conflict, InvalidState, NotFound
from cadenza_trigger_api.pagination import (
    fetch_page,
)
from cadenza_trigger_api.spec import check_publishable
from cadenza_trigger_api.wire import CamelModel, Page, decode_cursor, encode_cursor

router = APIRouter(prefix="/api/workflows", tags=["workflows"])

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class Status(StrEnum):
    """A workflow's lifecycle state."""

    DRAFT = "draft"
    ACTIVE = "active"
    PAUSED = "paused"
    ARCHIVED = "archived"


class WorkflowCreate(CamelModel):
    slug: str = Field(pattern=SLUG_PATTERN)
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)
    spec: dict[str, Any] = Field(default_factory=dict)


class WorkflowPatch(CamelModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    spec: dict[str, Any] | None = None


class WorkflowOut(CamelModel):
    id: uuid.UUID
    slug: str
    name: str
    description: str
    status: Status
    latest_version: int | None
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class VersionOut(CamelModel):
    workflow_id: uuid.UUID
    version: int
    spec: dict[str, Any]
    spec_hash: str
    published_by: str | None
    published_at: datetime


def to_out(row: Row[Any]) -> WorkflowOut:
    return WorkflowOut(
        id=row.id, slug=row.slug, name=row.name, description=row.description,
        status=Status(row.status), latest_version=row.latest_version, spec=row.draft_spec,
        created_at=row.created_at, updated_at=row.updated_at,
    )


def _view(row: Row[Any]) -> dict[str, Any]:
    return to_out(row).model_dump(mode="json", by_alias=True)


def ref_filter(org_id: uuid.UUID, ref: str) -> sa.ColumnElement[bool]:
    """Match a workflow of the org by id or slug."""
    try:
        by = sa.or_(workflows.c.id == uuid.UUID(ref), workflows.c.slug == ref)
    except ValueError:
        by = workflows.c.slug == ref
    return sa.and_(workflows.c.org_id == org_id, by)


async def find(
    conn: AsyncConnection, org_id: uuid.UUID, ref: str, *, lock: bool = False
) -> Row[Any]:
    """The org's workflow by id or slug.

    Raises:
        NotFound: when the org has no such workflow.
    """
    query = sa.select(workflows).where(ref_filter(org_id, ref))
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    if row is None:
        raise NotFound(f"workflow {ref!r} not found")
    return row


@router.get("", response_model=Page[WorkflowOut])
async def list_workflows(
    ctx: Ctx,
    who: Reader,
    limit: Limit = None,
    cursor: Cursor = None,
    status: Status | None = None,
) -> Page[WorkflowOut]:
    size = ctx.page_size(limit)
    query = sa.select(workflows).where(workflows.c.org_id == who.org_id)
    if status is not None:
        query = query.where(workflows.c.status == status.value)
    async with ctx.engine.connect() as conn:
        rows, nxt = await fetch_page(
            conn, query, workflows.c.created_at, workflows.c.id, cursor, size
        )
    return Page[WorkflowOut](items=[to_out(r) for r in rows], next_cursor=nxt)


@router.post("", status_code=201, response_model=WorkflowOut)
async def create_workflow(body: WorkflowCreate, ctx: Ctx, who: Editor) -> WorkflowOut:
    values = {
        "id": new_event_id(), "org_id": who.org_id, "slug": body.slug, "name": body.name,
        "description": body.description, "status": Status.DRAFT.value, "draft_spec": body.spec,
    }
    try:
        async with ctx.engine.begin() as conn:
            row = (await conn.execute(workflows.insert().values(values).returning(workflows))).one()
            await audit.record(conn, ctx.topics, who, "workflow.created",
                               ("workflow", str(row.id)), after=_view(row))
    except IntegrityError:
        raise Conflict(f"a workflow with slug {body.slug!r} already exists") from None
    return to_out(row)


@router.get("/{ref}", response_model=WorkflowOut)
async def get_workflow(ref: str, ctx: Ctx, who: Reader) -> WorkflowOut:
    async with ctx.engine.connect() as conn:
        return to_out(await find(conn, who.org_id, ref))


@router.patch("/{ref}", response_model=WorkflowOut)
async def patch_workflow(ref: str, body: WorkflowPatch, ctx: Ctx, who: Editor) -> WorkflowOut:
    changes: dict[str, Any] = {
        k: v
        for k, v in {"name": body.name, "description": body.description,
                     "draft_spec": body.spec}.items()
        if v is not None
    }
    async with ctx.engine.begin() as conn:
        before = await find(conn, who.org_id, ref, lock=True)
        if before.status == Status.ARCHIVED:
            raise InvalidState("an archived workflow cannot be edited")
        after = await _set(conn, before.id, **changes)
        await audit.record(conn, ctx.topics, who, "workflow.updated", ("workflow", str(before.id)),
                           before=_view(before), after=_view(after))
    return to_out(after)


def snapshot_of(row: Row[Any]) -> dict[str, Any]:
    """The spec a version freezes: the draft with the workflow's slug, name and description."""
    spec = dict(row.draft_spec)
    spec["slug"] = row.slug
    spec.setdefault("name", row.name)
    if row.description:
        spec.setdefault("description", row.description)
    return spec


def spec_hash(spec: dict[str, Any]) -> str:
    """A stable hash of a spec (sorted keys)."""
    return hashlib.sha256(orjson.dumps(spec, option=orjson.OPT_SORT_KEYS)).hexdigest()


@router.post("/{ref}/publish", response_model=VersionOut, status_code=201)
async def publish_workflow(ref: str, ctx: Ctx, who: Editor) -> VersionOut:
    async with ctx.engine.begin() as conn:
        before = await find(conn, who.org_id, ref, lock=True)
        if before.status == Status.ARCHIVED:
            raise InvalidState("an archived workflow cannot be published")
        spec = snapshot_of(before)
        check_publishable(spec)
        await subworkflows.check_resolvable(ctx.intake, who.org_id, spec)
        number = (before.latest_version or 0) + 1
        version = (
            await conn.execute(
                workflow_versions.insert()
                .values(workflow_id=before.id, version=number, org_id=who.org_id, spec=spec,
                        spec_hash=spec_hash(spec), published_by=who.key_id)
                .returning(workflow_versions)
            )
        ).one()
        status = Status.PAUSED if before.status == Status.PAUSED else Status.ACTIVE
        after = await _set(conn, before.id, latest_version=number, status=status.value)
        await audit.record(conn, ctx.topics, who, "workflow.published",
                           ("workflow", str(before.id)), before=_view(before),
                           after={**_view(after), "publishedVersion": number})
    return version_out(version)


async def _set(conn: AsyncConnection, workflow_id: uuid.UUID, **values: Any) -> Row[Any]:
    row: Row[Any] = (
        await conn.execute(
            workflows.update()
            .where(workflows.c.id == workflow_id)
            .values(updated_at=utcnow(), **values)
            .returning(workflows)
        )
    ).one()
    return row


async def _transition(
    ctx: AppContext, who: Principal, ref: str, allowed: set[Status], target: Status
) -> WorkflowOut:
    async with ctx.engine.begin() as conn:
        before = await find(conn, who.org_id, ref, lock=True)
        if Status(before.status) not in allowed:
            raise InvalidState(f"a {before.status} workflow cannot become {target.value}")
        after = await _set(conn, before.id, status=target.value)
        await audit.record(conn, ctx.topics, who, f"workflow.{_VERBS[target]}",
                           ("workflow", str(before.id)), before=_view(before), after=_view(after))
    return to_out(after)


_VERBS = {Status.PAUSED: "paused", Status.ACTIVE: "resumed", Status.ARCHIVED: "archived"}


@router.post("/{ref}/pause", response_model=WorkflowOut)
async def pause_workflow(ref: str, ctx: Ctx, who: Editor) -> WorkflowOut:
    return await _transition(ctx, who, ref, {Status.ACTIVE}, Status.PAUSED)


@router.post("/{ref}/resume", response_model=WorkflowOut)
async def resume_workflow(ref: str, ctx: Ctx, who: Editor) -> WorkflowOut:
    return await _transition(ctx, who, ref, {Status.PAUSED}, Status.ACTIVE)


@router.post("/{ref}/archive", response_model=WorkflowOut)
async def archive_workflow(ref: str, ctx: Ctx, who: Editor) -> WorkflowOut:
    return await _transition(
        ctx, who, ref, {Status.DRAFT, Status.ACTIVE, Status.PAUSED}, Status.ARCHIVED
    )


def version_out(row: Row[Any]) -> VersionOut:
    return VersionOut(
        workflow_id=row.workflow_id, version=row.version, spec=row.spec, spec_hash=row.spec_hash,
        published_by=row.published_by, published_at=row.published_at,
    )


@router.get("/{ref}/versions", response_model=Page[VersionOut])
async def list_versions(
    ref: str, ctx: Ctx, who: Reader, limit: Limit = None, cursor: Cursor = None
) -> Page[VersionOut]:
    size = ctx.page_size(limit)
    async with ctx.engine.connect() as conn:
        wf = await find(conn, who.org_id, ref)
        query = sa.select(workflow_versions).where(workflow_versions.c.workflow_id == wf.id)
        if cursor:
            (below,) = decode_cursor(cursor, 1)
            if not isinstance(below, int):
                raise BadRequest("invalid cursor")
            query = query.where(workflow_versions.c.version < below)
        query = query.order_by(workflow_versions.c.version.desc()).limit(size + 1)
        rows = (await conn.execute(query)).all()
    nxt = None
    if len(rows) > size:
        rows = rows[:size]
        nxt = encode_cursor([rows[-1].version])
    return Page[VersionOut](items=[version_out(r) for r in rows], next_cursor=nxt)


@router.get("/{ref}/versions/{number}", response_model=VersionOut)
async def get_version(
    ref: str, number: Annotated[int, Path(ge=1, le=2**31 - 1)], ctx: Ctx, who: Reader
) -> VersionOut:
    async with ctx.engine.connect() as conn:
        wf = await find(conn, who.org_id, ref)
        row = (
            await conn.execute(
                sa.select(workflow_versions).where(
                    workflow_versions.c.workflow_id == wf.id, workflow_versions.c.version == number
                )
            )
        ).first()
    if row is None:
        raise NotFound(f"workflow {ref!r} has no version {number}")
    return version_out(row)
