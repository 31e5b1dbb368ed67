"""Sorting consumed records: what goes to the DLQ and why, and repeats within a batch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from cadenza_audit_sink.batch import sort_records
from cadenza_audit_sink.samples import onboarding_history
from cadenza_common import events as ev
from cadenza_common.kafka import encode

HISTORY = "p.executions.events"
AUDIT = "p.audit.records"


def _record(event: ev.Event, topic: str = HISTORY, offset: int = 0) -> Any:
    msg = encode(event, source="/tests")
    return SimpleNamespace(
        topic=topic, partition=0, offset=offset, key=msg.key, value=msg.value, headers=msg.headers
    )


def _history() -> list[ev.ExecutionEvent]:
    return onboarding_history(uuid.uuid4(), uuid.uuid4(), datetime(2026, 1, 1, tzinfo=UTC))


def test_an_event_on_the_wrong_topic_is_dead_lettered_with_the_reason() -> None:
    command = ev.CancelRequested(execution_id=uuid.uuid4(), org_id=uuid.uuid4())

    batch = sort_records([_record(command)], HISTORY)

    assert batch.items == []
    assert "does not belong on" in batch.dead[0][1]


def test_a_node_id_too_long_for_its_column_is_dead_lettered() -> None:
    event = _history()[1].model_copy(update={"node_id": "n" * 101})

    batch = sort_records([_record(event)], HISTORY)

    assert batch.dead[0][1] == "node_id longer than 100 characters"


def test_repeats_within_a_batch_are_dropped_by_event_id_and_by_seq() -> None:
    first = _history()[0]
    reissued = first.model_copy(update={"event_id": ev.new_event_id()})

    batch = sort_records(
        [_record(first), _record(first, offset=1), _record(reissued, offset=2)], HISTORY
    )

    assert [i.event for i in batch.items] == [first]
    assert batch.duplicates == 2


def test_nul_characters_are_replaced_so_postgres_can_store_the_event() -> None:
    event = _history()[1].model_copy(update={"input": {"name": "a\x00b"}})

    batch = sort_records([_record(event)], HISTORY)

    assert batch.items[0].data["input"] == {"name": "a\ufffdb"}
    assert batch.items[0].event.input == {"name": "a\ufffdb"}


def test_audit_records_are_accepted_only_on_their_topic() -> None:
    record = ev.AuditRecorded(
        org_id=uuid.uuid4(),
        actor=ev.Actor(),
        action="org.create",
        resource_type="org",
        resource_id="o1",
    )

    good = sort_records([_record(record, AUDIT)], HISTORY)
    bad = sort_records([_record(record, HISTORY)], HISTORY)

    assert len(good.items) == 1
    assert len(bad.dead) == 1
