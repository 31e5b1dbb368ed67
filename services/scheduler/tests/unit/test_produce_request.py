"""The scheduler's ProduceRequest encoding matches aiokafka's generic encoder, byte for byte, and
its response decoding aiokafka's decoder."""

from __future__ import annotations

import io

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


@pytest.mark.parametrize("version", range(5, 8))
def test_versions_5_to_7_decode_responses_as_aiokafka_does(version: int) -> None:
    versions = {ProduceRequest.API_KEY: (version, version)}
    request = _Request(None, -1, 30_000, TOPICS).prepare(versions)
    generic_type = ProduceRequest(None, -1, 30_000, TOPICS).prepare(versions).RESPONSE_TYPE
    answer = [
        ("cadenza.steps.ready", [(0, 0, 41, -1, 0), (7, 6, -1, -1, -1)]),
        ("cadenza.exécutions", []),
    ]
    body = b"head" + generic_type(answer, 250).encode()
    generic, direct = io.BytesIO(body), io.BytesIO(body)
    generic.seek(4)  # past the response header, as aiokafka's connection hands it over
    direct.seek(4)

    expected = generic_type.decode(generic)
    decoded = request.RESPONSE_TYPE.decode(direct)

    assert type(decoded) is generic_type
    assert (decoded.topics, decoded.throttle_time_ms) == (expected.topics, 250)
    assert direct.tell() == generic.tell() == len(body)
    with pytest.raises(ValueError, match="Buffer underrun"):
        request.RESPONSE_TYPE.decode(io.BytesIO(body[4:-2]))


def test_versions_3_and_4_keep_aiokafkas_response_decoder() -> None:
    for version in (3, 4):
        versions = {ProduceRequest.API_KEY: (version, version)}
        request = _Request(None, -1, 30_000, TOPICS).prepare(versions)
        generic = ProduceRequest(None, -1, 30_000, TOPICS).prepare(versions)
        assert request.RESPONSE_TYPE is generic.RESPONSE_TYPE
