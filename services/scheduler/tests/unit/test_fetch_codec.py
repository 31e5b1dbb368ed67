"""The scheduler's FetchRequest v11 encoding and FetchResponse v11 decoding match aiokafka's
generic codec: the same bytes, the same response values."""

from __future__ import annotations

import io

import aiokafka.consumer.fetcher as aiokafka_fetcher
import pytest
from aiokafka.protocol.fetch import FetchRequest, FetchResponse_v11

from cadenza_scheduler import fetch
from cadenza_scheduler.fetch import DirectFetchRequest

from .records import record_batch

V11 = {FetchRequest.API_KEY: (11, 11)}
TOPICS = [
    ("cadenza.executions.commands", [(p, 1_000 + p, 1_048_576) for p in range(12)]),
    ("cadenza.exécutions", [(0, 0, 1), (3, 2**40, 65_536)]),
]


def _records() -> bytes:
    return record_batch([(None, b"k", b"v" * 300, [("ce_type", b"x")])] * 3)


@pytest.mark.parametrize("topics", [TOPICS, TOPICS[:1], []])
@pytest.mark.parametrize(("isolation", "rack"), [(0, ""), (1, "rack-é")])
def test_requests_encode_as_aiokafka_does(
    topics: list[tuple[str, list[tuple[int, int, int]]]], isolation: int, rack: str
) -> None:
    generic = FetchRequest(100, 1, 52_428_800, isolation, topics, rack).prepare(V11)
    direct = DirectFetchRequest(100, 1, 52_428_800, isolation, topics, rack).prepare(V11)

    assert type(direct) is not type(generic)  # the direct encoder is the one used
    assert direct.API_VERSION == generic.API_VERSION == 11
    assert direct.encode() == generic.encode()


def test_responses_decode_as_aiokafka_does() -> None:
    records = _records()
    partitions = [
        (0, 0, 1_200, 1_190, 0, None, -1, records),  # records, no aborted transactions
        (1, 0, 7, 7, 0, [(5, 6), (2**60, 0)], -1, records),
        (2, 0, 0, 0, 0, [], 3, b""),  # nothing new
        (3, 1, -1, -1, -1, None, -1, None),  # an error, no records at all
    ]
    body = FetchResponse_v11(
        12, 0, 77, [("cadenza.executions.commands", partitions), ("t-ü", [])]
    ).encode()
    generic, direct = io.BytesIO(b"head" + body), io.BytesIO(b"head" + body)
    generic.seek(4)  # past the response header, as aiokafka's connection hands it over
    direct.seek(4)

    expected = FetchResponse_v11.decode(generic)
    request = DirectFetchRequest(100, 1, 1_000, 0, TOPICS).prepare(V11)
    decoded = request.RESPONSE_TYPE.decode(direct)

    assert isinstance(decoded, FetchResponse_v11)
    assert decoded.API_VERSION == 11
    assert decoded.topics == expected.topics
    assert decoded.topics[0][1][0][-1] == records
    assert (decoded.throttle_time_ms, decoded.error_code, decoded.session_id) == (12, 0, 77)
    assert direct.tell() == generic.tell() == len(body) + 4


def test_a_truncated_response_is_refused() -> None:
    body = FetchResponse_v11(0, 0, 0, [("t", [(0, 0, 9, 9, 0, None, -1, _records())])]).encode()
    request = DirectFetchRequest(100, 1, 1_000, 0, TOPICS).prepare(V11)
    for cut in (3, 20, len(body) - 1):
        with pytest.raises(ValueError, match="Buffer underrun"):
            request.RESPONSE_TYPE.decode(io.BytesIO(body[:cut]))


def test_other_versions_keep_aiokafkas_codec() -> None:
    versions = {FetchRequest.API_KEY: (10, 10)}
    request = DirectFetchRequest(100, 1, 1_000, 0, TOPICS).prepare(versions)
    assert type(request) is type(FetchRequest(100, 1, 1_000, 0, TOPICS).prepare(versions))


def test_install_has_aiokafkas_fetcher_build_direct_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(aiokafka_fetcher, "FetchRequest", FetchRequest)
    fetch.install()
    assert aiokafka_fetcher.FetchRequest is DirectFetchRequest
