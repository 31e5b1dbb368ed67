"""Kafka's wire format for the requests the scheduler codes itself (`produce`, `fetch`).

aiokafka picks the version of a request the broker speaks and builds its struct; the
scheduler swaps that struct's class for a subclass that encodes itself (and decodes its
response) with `struct` instead of aiokafka's generic `Schema` code, field for field the
same. These are the pieces both codecs use.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any, TypeVar

INT16 = struct.Struct(">h")
INT32 = struct.Struct(">i")

T = TypeVar("T")
Parse = Callable[[bytes, int], tuple[T, int]]  # (buffer, at) -> (value, where the next starts)


def encode_string(value: str | None) -> bytes:
    """A nullable string as Kafka writes it: its length (-1 for null), then UTF-8."""
    if value is None:
        return INT16.pack(-1)
    data = value.encode()
    return INT16.pack(len(data)) + data


def take(buf: bytes, at: int, length: int) -> bytes:
    """`length` bytes of `buf` from `at`; refuses to read past its end."""
    end = at + length
    if end > len(buf):
        raise ValueError("Buffer underrun decoding a response")
    return buf[at:end]


def read_string(buf: bytes, at: int) -> tuple[str | None, int]:
    (length,) = INT16.unpack_from(buf, at)
    at += INT16.size
    if length < 0:
        return None, at
    return take(buf, at, length).decode(), at + length


def read_array(buf: bytes, at: int, read_item: Parse[T]) -> tuple[list[T], int]:
    """An array (its int32 count, then the items) read by `read_item`."""
    (count,) = INT32.unpack_from(buf, at)
    at += INT32.size
    items = []
    for _ in range(count):
        item, at = read_item(buf, at)
        items.append(item)
    return items, at


def decode(data: io.BytesIO, parse: Parse[T], what: str) -> T:
    """Parse `data` from its position (aiokafka's connection hands a response over past its
    header) and move the position past what was read, as aiokafka's decoders do."""
    buf, at = data.getvalue(), data.tell()
    try:
        value, at = parse(buf, at)
    except struct.error as exc:
        raise ValueError(f"Buffer underrun decoding {what}: {exc}") from exc
    data.seek(at)
    return value


_DIRECT: dict[type, type] = {}


def direct_class(request_struct_class: type, members: Callable[[type], dict[str, Any]]) -> type:
    """`request_struct_class` with `members(request_struct_class)` (its `encode`, and its
    `RESPONSE_TYPE` where the response is decoded directly), made once a class."""
    direct = _DIRECT.get(request_struct_class)
    if direct is None:
        name = f"Direct{request_struct_class.__name__}"
        direct = type(name, (request_struct_class,), members(request_struct_class))
        _DIRECT[request_struct_class] = direct
    return direct
