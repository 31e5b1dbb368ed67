"""The sink end to end (in process): onboarding history, duplicates, the DLQ."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from cadenza_audit_sink.samples import onboarding_history
from cadenza_audit_sink.settings import Settings
from cadenza_audit_sink.testing import (
    all_consumed,
    assert_rows_match_fold,
    audited,
    count,
    produce,
    running_sink,
    wait_for,
)
from cadenza_audit_sink.verify import verify_org
from cadenza_common import events as ev
from cadenza_common.kafka import consumer, header, producer

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def test_onboarding_history_produces_the_expected_rows(
    sink_settings: Settings, db: asyncpg.Pool
) -> None:
    org, xid = uuid.uuid4(), uuid.uuid4()
    events = onboarding_history(xid, org, T0)
    record = ev.AuditRecorded(
        org_id=org,
        actor=ev.Actor(kind="api_key", id="admin-1", roles=["admin"]),
        action="connection.update",
        resource_type="service_connection",
        resource_id="kyc",
        before={"auth": {"password": "old"}},
        after={
            "auth": {"password": "new"},
            "base_url": "https://kyc.example",
            "limits": {"ratio": 0.1, "big": 1e20, "zero": -0.0, "tiny": 1.5e-7, "n": 2**60},
        },
    )
    topics = ev.Topics(sink_settings.kafka.topic_prefix)

    async with running_sink(sink_settings):
        await produce(sink_settings.kafka, topics.executions_events, events)
        await produce(sink_settings.kafka, topics.audit_records, [record])
        await wait_for(lambda: audited(db, org, len(events) + 1), what="all audit rows")

    run = await db.fetchrow("SELECT * FROM execution_runs WHERE id = $1", xid)
    assert run["status"] == "succeeded"
    assert (run["workflow_slug"], run["workflow_version"], run["external_id"]) == (
        "customer-onboarding",
        3,
        "cust-1",
    )
    assert run["duration_ms"] == 21_000.0
    assert run["finished_at"] == events[-1].occurred_at
    steps = await db.fetch(
        "SELECT node_id, status, attempts, node_type FROM step_runs WHERE execution_id = $1", xid
    )
    assert {s["node_id"]: (s["status"], s["attempts"]) for s in steps} == {
        "capture_identity": ("succeeded", 1),
        "verdict": ("succeeded", 1),
        "manual_review": ("skipped", 0),
        "screening": ("succeeded", 2),
        "mlro_approval": ("succeeded", 1),
        "notify": ("succeeded", 1),
    }
    trace = await db.fetch(
        "SELECT seq, ce_type FROM step_events WHERE execution_id = $1 ORDER BY seq", xid
    )
    assert [t["seq"] for t in trace] == list(range(len(events)))
    audit = await db.fetch(
        "SELECT action, resource_type, actor, after::text AS after FROM audit_log "
        "WHERE org_id = $1 ORDER BY org_seq",
        org,
    )
    actions = [a["action"] for a in audit]
    assert actions.count("step.succeeded") == 5
    assert actions[actions.index("execution.started")] == "execution.started"
    assert "sk-live-1" not in "".join(a["after"] for a in audit)
    assert "new" not in next(a["after"] for a in audit if a["action"] == "connection.update")
    await assert_rows_match_fold(db, events, [xid])
    async with db.acquire() as conn:
        assert (await verify_org(conn, org)).ok


async def test_events_delivered_twice_change_nothing(
    sink_settings: Settings, db: asyncpg.Pool
) -> None:
    org = uuid.uuid4()
    xids = [uuid.uuid4() for _ in range(3)]
    events = [e for x in xids for e in onboarding_history(x, org, T0)]
    reissued = [e.model_copy(update={"event_id": ev.new_event_id()}) for e in events[:10]]
    topic = ev.Topics(sink_settings.kafka.topic_prefix).executions_events

    async with running_sink(sink_settings):
        await produce(sink_settings.kafka, topic, events)
        await wait_for(lambda: audited(db, org, len(events)), what="first delivery")
        await produce(sink_settings.kafka, topic, [*events, *reissued])
        await wait_for(lambda: all_consumed(db, sink_settings, 2 * len(events) + 10), what="replay")

    assert await count(db, "SELECT count(*) FROM audit_log WHERE org_id = $1", org) == len(events)
    assert await count(db, "SELECT count(*) FROM step_events WHERE org_id = $1", org) == len(events)
    await assert_rows_match_fold(db, events, xids)
    async with db.acquire() as conn:
        assert (await verify_org(conn, org)).ok


async def test_malformed_records_go_to_the_dlq_and_the_partition_keeps_flowing(
    sink_settings: Settings, db: asyncpg.Pool
) -> None:
    org, xid = uuid.uuid4(), uuid.uuid4()
    events = onboarding_history(xid, org, T0)
    topics = ev.Topics(sink_settings.kafka.topic_prefix)
    key = str(xid).encode()
    bad: list[tuple[bytes, list[tuple[str, bytes]]]] = [
        (b"{not json", [("ce_type", b"cadenza.step.succeeded")]),
        (b"{}", [("ce_type", b"cadenza.no.such.type")]),
    ]

    async with running_sink(sink_settings):
        async with producer(sink_settings.kafka) as prod:
            for value, headers in bad:
                await prod.send_and_wait(topics.executions_events, value, key=key, headers=headers)
        await produce(sink_settings.kafka, topics.executions_events, events)
        await wait_for(lambda: audited(db, org, len(events)), what="the good history")
        dead = await _read(sink_settings, topics.dlq, 2)

    assert sorted(r.value for r in dead) == sorted(v for v, _ in bad)
    reasons = [header(r.headers, "dlq_reason") or "" for r in dead]
    assert any("malformed JSON" in r for r in reasons)
    assert any("unknown event type" in r for r in reasons)
    assert await db.fetchval("SELECT status FROM execution_runs WHERE id = $1", xid) == "succeeded"


async def _read(settings: Settings, topic: str, n: int) -> list[Any]:
    records: list[Any] = []
    async with consumer(settings.kafka, [topic], group_id=f"dlq-{uuid.uuid4().hex[:6]}") as cons:
        async with asyncio.timeout(30):
            while len(records) < n:
                for batch in (await cons.getmany(timeout_ms=500)).values():
                    records.extend(batch)
    return records


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


async def test_metrics_count_applied_events_by_type_and_show_lag(
    sink_settings: Settings, db: asyncpg.Pool
) -> None:
    org, xid = uuid.uuid4(), uuid.uuid4()
    events = onboarding_history(xid, org, T0)
    port = _free_port()
    settings = sink_settings.model_copy(update={"metrics_port": port})
    topic = ev.Topics(settings.kafka.topic_prefix).executions_events

    async with running_sink(settings):
        await produce(settings.kafka, topic, events)
        await wait_for(lambda: audited(db, org, len(events)), what="the history")
        text = await asyncio.to_thread(_scrape, port)

    assert 'cadenza_audit_sink_events_applied_total{type="cadenza.step.succeeded"} 5.0' in text
    assert "cadenza_audit_sink_batch_size_count" in text
    assert "cadenza_audit_sink_commit_seconds_bucket" in text
    assert "cadenza_audit_sink_lag{" in text


async def test_two_sinks_in_one_group_share_partitions_without_forking_a_chain(
    sink_settings: Settings, db: asyncpg.Pool
) -> None:
    orgs = [uuid.uuid4() for _ in range(2)]
    xids = [uuid.uuid4() for _ in range(40)]
    events = [e for n, x in enumerate(xids) for e in onboarding_history(x, orgs[n % 2], T0)]
    topic = ev.Topics(sink_settings.kafka.topic_prefix).executions_events

    async with running_sink(sink_settings), running_sink(sink_settings):
        await produce(sink_settings.kafka, topic, events)
        await wait_for(
            lambda: all_consumed(db, sink_settings, len(events)), timeout=90, what="both sinks"
        )

    for org in orgs:
        assert await count(db, "SELECT count(*) FROM audit_log WHERE org_id = $1", org) == len(
            events
        ) // len(orgs)
        async with db.acquire() as conn:
            report = await verify_org(conn, org)
        assert report.ok, report.describe()
    await assert_rows_match_fold(db, events, xids)


async def test_a_record_postgres_refuses_is_dead_lettered_and_its_batch_still_applies(
    sink_settings: Settings, db: asyncpg.Pool
) -> None:
    org, good, bad = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    refused = onboarding_history(bad, org, T0)[0].model_copy(update={"workflow_version": 2**40})
    events = onboarding_history(good, org, T0)
    topics = ev.Topics(sink_settings.kafka.topic_prefix)

    await produce(sink_settings.kafka, topics.executions_events, [refused, *events])
    async with running_sink(sink_settings):
        await wait_for(lambda: audited(db, org, len(events)), what="the good history")
        dead = await _read(sink_settings, topics.dlq, 1)

    assert "refused by Postgres" in (header(dead[0].headers, "dlq_reason") or "")
    assert await db.fetchval("SELECT status FROM execution_runs WHERE id = $1", good) == "succeeded"
    assert await count(db, "SELECT count(*) FROM execution_runs WHERE id = $1", bad) == 0
    async with db.acquire() as conn:
        assert (await verify_org(conn, org)).ok
