"""Keyset pagination helpers: (created_at, id) descending cursors."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

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
