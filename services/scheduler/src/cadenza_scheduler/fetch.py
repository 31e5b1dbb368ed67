"""Fetch requests (v11) encoded, and their responses decoded, without aiokafka's generic codec.

aiokafka encodes and decodes every request field by field through its generic `Schema`
types: a FetchRequest v11 for the scheduler's 12 input partitions took ~60 us to encode
and its response (two partitions with records) ~80 us to decode. The scheduler fetches
once or twice a batch, so at 1,000 transitions/s that was ~5 % of its main thread.

`install()` has aiokafka's fetcher build `FetchRequest`s that, when the broker speaks v11
(Kafka 2.3 and later), encode themselves and decode their response directly: the same
bytes and the same response objects (tuples and lists, as aiokafka's decoder returns
them; tests compare both with aiokafka's). Other versions go through aiokafka's code as
before. The fetcher's logic (positions, errors, buffering) is aiokafka's, untouched.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import aiokafka.consumer.fetcher as aiokafka_fetcher
from aiokafka.protocol.fetch import FetchRequest, FetchResponse_v11

DIRECT_VERSION = 11

_REQUEST_HEAD = struct.Struct(">iiiibii")  # replica, wait, min, max, isolation, session, epoch
_REQUEST_PARTITION = struct.Struct(">iiqqi")  # partition, leader epoch, offset, log start, max
_RESPONSE_HEAD = struct.Struct(">ihii")  # throttle time, error code, session id, topics
# partition, error, high water, last stable offset, log start, aborted transactions
_PARTITION_HEAD = struct.Struct(">ihqqqi")
_PARTITION_TAIL = struct.Struct(">ii")  # preferred read replica, the records' size
_ABORTED = struct.Struct(">qq")  # producer id, first offset
_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")


def _string(value: str | None) -> bytes:
    if value is None:
        return _INT16.pack(-1)
    data = value.encode()
    return _INT16.pack(len(data)) + data


def _encode_fetch_v11(self: Any) -> bytes:
    """FetchRequest v11's body, as aiokafka's `Schema.encode` writes it."""
    parts = [
        _REQUEST_HEAD.pack(
            self.replica_id,
            self.max_wait_time,
            self.min_bytes,
            self.max_bytes,
            self.isolation_level,
            self.session_id,
            self.session_epoch,
        ),
        _INT32.pack(len(self.topics)),
    ]
    for topic, partitions in self.topics:
        parts.append(_string(topic))
        parts.append(_INT32.pack(len(partitions)))
        parts.extend(_REQUEST_PARTITION.pack(*partition) for partition in partitions)
    parts.append(_INT32.pack(len(self.forgotten_topics_data)))
    for topic, forgotten in self.forgotten_topics_data:
        parts.append(_string(topic))
        parts.append(struct.pack(f">i{len(forgotten)}i", len(forgotten), *forgotten))
    parts.append(_string(self.rack_id))
    return b"".join(parts)


def _partition_v11(buf: bytes, at: int) -> tuple[tuple[Any, ...], int]:
    """One partition of a FetchResponse v11 at `at`, and where the next one starts."""
    partition, error, high_water, lso, log_start, count = _PARTITION_HEAD.unpack_from(buf, at)
    at += _PARTITION_HEAD.size
    aborted = None
    if count >= 0:
        aborted = [_ABORTED.unpack_from(buf, at + _ABORTED.size * i) for i in range(count)]
        at += _ABORTED.size * count
    preferred, size = _PARTITION_TAIL.unpack_from(buf, at)
    at += _PARTITION_TAIL.size
    records = None
    if size >= 0:
        if at + size > len(buf):
            raise ValueError("Buffer underrun decoding a fetch response's records")
        records = buf[at : at + size]
        at += size
    return (partition, error, high_water, lso, log_start, aborted, preferred, records), at


def _topic_v11(buf: bytes, at: int) -> tuple[tuple[Any, ...], int]:
    """One topic of a FetchResponse v11 at `at` (its partitions), and where the next starts."""
    (length,) = _INT16.unpack_from(buf, at)
    at += 2
    topic = None
    if length >= 0:
        topic = buf[at : at + length].decode()
        at += length
    (count,) = _INT32.unpack_from(buf, at)
    at += 4
    partitions = []
    for _ in range(count):
        partition, at = _partition_v11(buf, at)
        partitions.append(partition)
    return (topic, partitions), at


def _decode_fetch_v11(data: io.BytesIO) -> FetchResponse_v11:
    """FetchResponse v11 from `data` (read from its position), as aiokafka decodes it."""
    buf, at = data.getvalue(), data.tell()
    try:
        throttle, error, session, count = _RESPONSE_HEAD.unpack_from(buf, at)
        at += _RESPONSE_HEAD.size
        topics = []
        for _ in range(count):
            topic, at = _topic_v11(buf, at)
            topics.append(topic)
    except struct.error as exc:
        raise ValueError(f"Buffer underrun decoding a fetch response: {exc}") from exc
    data.seek(at)
    return FetchResponse_v11(throttle, error, session, topics)


class _DirectResponse:
    """The response type of a directly encoded request: decodes as `_decode_fetch_v11`."""

    decode = staticmethod(_decode_fetch_v11)


_DIRECT_STRUCTS: dict[Any, type] = {}


class DirectFetchRequest(FetchRequest):  # type: ignore[misc]
    """aiokafka's FetchRequest (it picks the version the broker speaks), encoded and its
    response decoded directly at v11."""

    def build(self, request_struct_class: Any) -> Any:
        built = super().build(request_struct_class)
        if request_struct_class.API_VERSION != DIRECT_VERSION:
            return built
        direct = _DIRECT_STRUCTS.get(request_struct_class)
        if direct is None:
            name = f"Direct{request_struct_class.__name__}"
            members = {"encode": _encode_fetch_v11, "RESPONSE_TYPE": _DirectResponse}
            direct = type(name, (request_struct_class,), members)
            _DIRECT_STRUCTS[request_struct_class] = direct
        built.__class__ = direct
        return built


def install() -> None:
    """Have aiokafka's fetcher (every consumer of this process) build `DirectFetchRequest`s."""
    aiokafka_fetcher.FetchRequest = DirectFetchRequest  # type: ignore[misc]
