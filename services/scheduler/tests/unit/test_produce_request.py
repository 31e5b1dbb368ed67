"""The scheduler's ProduceRequest encoding matches aiokafka's generic encoder, byte for byte."""

from __future__ import annotations

import pytest
from aiokafka.protocol.produce import ProduceRequest

from cadenza_scheduler.produce import _Request

TOPICS = [
    ("cadenza.steps.ready", [(0, bytearray(b"\x00batch-0")), (7, bytearray(b"batch-7" * 40))]),
    ("cadenza.executions.events", [(11, bytearray(b""))]),
]


@pytest.mark.parametrize("version", range(3, 8))  # aiokafka offers up to v7
@pytest.mark.parametrize("transactional_id", [None, "tx-1", "tx-ü"])
def test_versions_3_to_7_encode_as_aiokafka_does(
    version: int, transactional_id: str | None
) -> None:
    versions = {ProduceRequest.API_KEY: (version, version)}
    generic = ProduceRequest(transactional_id, -1, 30_000, TOPICS).prepare(versions)
    direct = _Request(transactional_id, -1, 30_000, TOPICS).prepare(versions)

    assert type(direct) is not type(generic)  # the direct encoder is the one used
    assert direct.API_VERSION == generic.API_VERSION == version
    assert direct.encode() == generic.encode()


def test_other_versions_keep_aiokafkas_encoder() -> None:
    versions = {ProduceRequest.API_KEY: (2, 2)}
    request = _Request(None, 1, 1_000, TOPICS).prepare(versions)
    assert type(request) is type(ProduceRequest(None, 1, 1_000, TOPICS).prepare(versions))
