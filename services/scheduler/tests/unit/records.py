"""Record batches as a broker holds them (uncompressed, no producer id), for the tests of
the fetch codec and the intake."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from aiokafka.record.default_records import DefaultRecordBatchBuilder

# a record: timestamp (ms, None for none), key, value, headers
Record = tuple[int | None, bytes, bytes, list[tuple[str, bytes]]]


def record_batch(records: Iterable[Record], base_offset: int = 0) -> bytes:
    """One record batch holding `records`, at `base_offset` onwards."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for delta, (timestamp, key, value, headers) in enumerate(records):
        builder.append(delta, timestamp=timestamp, key=key, value=value, headers=headers)
    raw = bytearray(builder.build())
    raw[:8] = struct.pack(">q", base_offset)  # the broker's offset (outside the CRC)
    return bytes(raw)
