"""Wire conventions: camelCase JSON, unknown fields rejected, cursor pages."""

from __future__ import annotations

import base64
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from cadenza_trigger_api.errors import BadRequest

T = TypeVar("T")


class CamelModel(BaseModel):
    """Base of every request and response body: camelCase aliases, no unknown fields."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Page(CamelModel, Generic[T]):
    """One page of a list; pass `nextCursor` back as `cursor` for the next one."""

    items: list[T]
    next_cursor: str | None = Field(default=None)


def encode_cursor(values: list[Any]) -> str:
    """An opaque cursor for the position after a row (its sort key values)."""
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The sort key values inside a cursor.

    Raises:
        BadRequest: when the cursor is not one this API produced.
    """
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest("invalid cursor") from None
    if not isinstance(values, list) or len(values) != arity:
        raise BadRequest("invalid cursor")
    return values
