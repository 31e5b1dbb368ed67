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

from cadenza_scheduler import wire

DIRECT_VERSION = 11

_REQUEST_HEAD = struct.Struct(">iiiibii")  # replica, wait, min, max, isolation, session, epoch
_REQUEST_PARTITION = struct.Struct(">iiqqi")  # partition, leader epoch, offset, log start, max
_RESPONSE_HEAD = struct.Struct(">ihi")  # throttle time, error code, session id
# partition, error, high water, last stable offset, log start, aborted transactions
_PARTITION_HEAD = struct.Struct(">ihqqqi")
_PARTITION_TAIL = struct.Struct(">ii")  # preferred read replica, the records' size
_ABORTED = struct.Struct(">qq")  # producer id, first offset


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
        wire.INT32.pack(len(self.topics)),
    ]
    for topic, partitions in self.topics:
        parts.append(wire.encode_string(topic))
        parts.append(wire.INT32.pack(len(partitions)))
        parts.extend(_REQUEST_PARTITION.pack(*partition) for partition in partitions)
    parts.append(wire.INT32.pack(len(self.forgotten_topics_data)))
    for topic, forgotten in self.forgotten_topics_data:
        parts.append(wire.encode_string(topic))
        parts.append(struct.pack(f">i{len(forgotten)}i", len(forgotten), *forgotten))
    parts.append(wire.encode_string(self.rack_id))
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
        records = wire.take(buf, at, size)
        at += size
    return (partition, error, high_water, lso, log_start, aborted, preferred, records), at


def _topic_v11(buf: bytes, at: int) -> tuple[tuple[Any, ...], int]:
    """One topic of a FetchResponse v11 at `at` (its partitions), and where the next starts."""
    topic, at = wire.read_string(buf, at)
    partitions, at = wire.read_array(buf, at, _partition_v11)
    return (topic, partitions), at


def _response_v11(buf: bytes, at: int) -> tuple[FetchResponse_v11, int]:
    throttle, error, session = _RESPONSE_HEAD.unpack_from(buf, at)
    topics, at = wire.read_array(buf, at + _RESPONSE_HEAD.size, _topic_v11)
    return FetchResponse_v11(throttle, error, session, topics), at


class _DirectResponse:
    """The response type of a directly encoded request: decodes FetchResponse v11 as
    aiokafka does."""

    @staticmethod
    def decode(data: io.BytesIO) -> FetchResponse_v11:
        return wire.decode(data, _response_v11, "a fetch response")


def _direct_members(request_struct_class: type) -> dict[str, Any]:
    return {"encode": _encode_fetch_v11, "RESPONSE_TYPE": _DirectResponse}


class DirectFetchRequest(FetchRequest):  # type: ignore[misc]
    """aiokafka's FetchRequest (it picks the version the broker speaks), encoded and its
    response decoded directly at v11."""

    def build(self, request_struct_class: Any) -> Any:
        built = super().build(request_struct_class)
        if request_struct_class.API_VERSION == DIRECT_VERSION:
            built.__class__ = wire.direct_class(request_struct_class, _direct_members)
        return built


def install() -> None:
    """Have aiokafka's fetcher (every consumer of this process) build `DirectFetchRequest`s."""
    aiokafka_fetcher.FetchRequest = DirectFetchRequest  # type: ignore[misc]
