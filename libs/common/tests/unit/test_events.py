"""The wire contract: every event encodes and decodes; bad records are refused with a reason."""

from __future__ import annotations

import orjson
import pytest

from cadenza_common import events as ev
from cadenza_common.kafka import PoisonRecord, decode, encode, header
from cadenza_common.schemas import DEFAULT_DIR as SCHEMA_DIR
from cadenza_common.schemas import render
from cadenza_common.testing import sample_events


def test_every_registered_event_type_has_a_sample_and_a_topic() -> None:
    sampled = {type(e) for e in sample_events()}
    on_topics = {cls for classes in ev.TOPIC_EVENTS.values() for cls in classes}

    assert sampled == set(ev.EVENT_TYPES)
    assert on_topics == set(ev.EVENT_TYPES)
    assert len(ev.REGISTRY) == len(ev.EVENT_TYPES)


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e).__name__)
def test_event_round_trips_through_the_binary_mode_serde(event: ev.Event) -> None:
    msg = encode(event, source="/cadenza/tests", traceparent="00-abc-def-01")

    decoded = decode(msg.value, msg.headers)

    assert decoded == event
    assert header(msg.headers, "ce_type") == event.CE_TYPE
    assert header(msg.headers, "ce_id") == str(event.event_id)
    assert header(msg.headers, "ce_specversion") == "1.0"
    assert header(msg.headers, "traceparent") == "00-abc-def-01"
    assert msg.key == event.partition_key().encode()
    # the value is exactly pydantic's JSON of the model (`json_bytes` skips only its detours)
    assert msg.value == event.model_dump_json().encode()


def test_execution_events_carry_execution_and_org_extensions() -> None:
    event = next(e for e in sample_events() if isinstance(e, ev.StepReady))

    msg = encode(event, source="/x")

    assert header(msg.headers, "ce_executionid") == str(event.execution_id)
    assert header(msg.headers, "ce_orgid") == str(event.org_id)
    assert msg.key == str(event.execution_id).encode()


def test_event_ids_are_uuid7_and_time_ordered() -> None:
    ids = [ev.new_event_id() for _ in range(100)]

    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"{}", [], "missing ce_type"),
        (b"{}", [("ce_type", b"cadenza.nope")], "unknown event type"),
        (b"{not json", [("ce_type", b"cadenza.step.ready")], "malformed JSON"),
        (b'{"node_id": 3}', [("ce_type", b"cadenza.step.ready")], "invalid cadenza.step.ready"),
        (None, [("ce_type", b"cadenza.step.ready")], "empty value"),
    ],
)
def test_undecodable_records_are_refused_with_a_reason(
    value: bytes | None, headers: list[tuple[str, bytes]], reason: str
) -> None:
    with pytest.raises(PoisonRecord, match=reason):
        decode(value, headers)


def test_unknown_fields_are_refused() -> None:
    event = sample_events()[1]
    data = orjson.loads(encode(event, source="/x").value)
    data["surprise"] = 1

    with pytest.raises(PoisonRecord, match="extra"):
        decode(orjson.dumps(data), [("ce_type", event.CE_TYPE.encode())])


def test_checked_in_schemas_match_the_models() -> None:
    on_disk = {p.name: p.read_bytes() for p in SCHEMA_DIR.glob("*.json")}

    assert on_disk == render(), "schemas are stale: run `make schemas`"
