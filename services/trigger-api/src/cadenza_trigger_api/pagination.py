"""Keyset pagination helpers: (created_at, id) descending cursors."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cadenza_trigger_api.errors import BadRequest
from cadenza_trigger_api.wire import decode_cursor, encode_cursor


def time_id_cursor(at: datetime, row_id: Any) -> str:
    """The cursor after a row sorted by (time desc, id desc)."""
    return encode_cursor([at.isoformat(), str(row_id)])


def parse_time_id_cursor(cursor: str) -> tuple[datetime, str]:
    """The (time, id) inside a cursor made by `time_id_cursor`.

    Raises:
        BadRequest: when the cursor is not one of ours.
    """
    at, row_id = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(str(at)), str(row_id)
    except ValueError:
        raise BadRequest("invalid cursor") from None


def parse_uuid(value: str) -> uuid.UUID:
    """A UUID from a cursor.

    Raises:
        BadRequest: when it is not one.
    """
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest("invalid cursor") from None


async def fetch_page(
    conn: AsyncConnection,
    query: sa.Select[Any],
    at_column: sa.ColumnElement[Any],
    id_column: sa.ColumnElement[Any],
    cursor: str | None,
    size: int,
    parse_id: Callable[[str], Any] = parse_uuid,
) -> tuple[list[Row[Any]], str | None]:
    """Run `query` as one page sorted by (time desc, id desc); return its rows and next cursor.

    The rows must expose `created_at` and `id` (label the columns so when they differ).
    """
    if cursor:
        at, row_id = parse_time_id_cursor(cursor)
        query = query.where(sa.tuple_(at_column, id_column) < sa.tuple_(at, parse_id(row_id)))
    query = query.order_by(at_column.desc(), id_column.desc()).limit(size + 1)
    rows = list((await conn.execute(query)).all())
    if len(rows) <= size:
        return rows, None
    rows = rows[:size]
    return rows, time_id_cursor(rows[-1].created_at, rows[-1].id)
