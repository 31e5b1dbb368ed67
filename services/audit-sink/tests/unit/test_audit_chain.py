"""Redaction, JSONB-stable normalisation and the per-org hash chain."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from datetime import UTC, datetime

from cadenza_audit_sink.domain.audit import (
    GENESIS,
    REDACTED,
    ChainVerifier,
    chain,
    entry_for_history,
    entry_for_record,
    normalize,
)
from cadenza_audit_sink.domain.projection import Projection, apply
from cadenza_audit_sink.samples import onboarding_history
from cadenza_common import events as ev

ORG = uuid.UUID("0190f0f0-0000-7000-8000-0000000000b2")
XID = uuid.UUID("0190f0f0-0000-7000-8000-0000000000c2")
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC)


def _entries() -> list:  # type: ignore[type-arg]
    projection = Projection()
    events = onboarding_history(XID, ORG, T0)
    return [entry_for_history(e, e.model_dump(mode="json"), apply(projection, e)) for e in events]


def test_secret_keys_are_redacted_at_any_depth() -> None:
    value = {
        "apiKey": "k",
        "nested": {"client_secret": "s", "Authorization": "Bearer x", "list": [{"password": 1}]},
        "X-Api-Key": "k2",
        "refresh_token": "t",
        "name": "kept",
    }

    redacted = normalize(value, redact=True)

    assert redacted == {
        "apiKey": REDACTED,
        "nested": {
            "client_secret": REDACTED,
            "Authorization": REDACTED,
            "list": [{"password": REDACTED}],
        },
        "X-Api-Key": REDACTED,
        "refresh_token": REDACTED,
        "name": "kept",
    }


def test_normalisation_matches_what_jsonb_gives_back() -> None:
    assert normalize({"a": 1e17, "b": -0.0, "c": "x\x00y", "d": 1.5, "e": 1e20}) == {
        "a": 100000000000000000,
        "b": 0.0,
        "c": "x\ufffdy",
        "d": 1.5,
        "e": 1e20,
    }


def test_history_entries_name_the_action_actor_and_redact_inputs() -> None:
    entries = _entries()

    started, first_step = entries[0], entries[1]
    assert (started.action, started.resource_type) == ("execution.started", "execution")
    assert started.actor == {"kind": "api_key", "id": "key-ops-1", "roles": ["operator"]}
    assert started.after["input"]["apiKey"] == REDACTED
    assert started.before is None
    assert (first_step.action, first_step.resource_type) == ("step.scheduled", "step")
    assert entries[-1].after["output"]["token"] == REDACTED


def test_chain_starts_at_genesis_and_links_every_row() -> None:
    rows = chain({}, _entries(), NOW)

    assert rows[0].prev_hash == GENESIS
    assert rows[0].org_seq == 1
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    verifier = ChainVerifier()
    assert all(verifier.feed(r) for r in rows)


def test_verifier_reports_the_first_tampered_row() -> None:
    rows = chain({}, _entries(), NOW)
    tampered_entry = dataclasses.replace(rows[4].entry, after={"status": "failed"})
    rows[4] = dataclasses.replace(rows[4], entry=tampered_entry)
    verifier = ChainVerifier()

    for row in rows:
        verifier.feed(row)

    assert verifier.broken is not None
    assert verifier.broken.org_seq == 5
    assert "hash" in verifier.broken.reason


def test_verifier_reports_a_missing_row() -> None:
    rows = chain({}, _entries(), NOW)
    del rows[2]
    verifier = ChainVerifier()

    for row in rows:
        verifier.feed(row)

    assert verifier.broken is not None
    assert verifier.broken.org_seq == 4


def test_control_plane_records_are_redacted_again() -> None:
    record = ev.AuditRecorded(
        org_id=ORG,
        actor=ev.Actor(kind="api_key", id="admin"),
        action="connection.update",
        resource_type="service_connection",
        resource_id="c1",
        before={"auth": {"token": "old"}},
        after={"auth": {"token": "new"}, "base_url": "https://x"},
    )

    entry = entry_for_record(record)

    assert entry.before == {"auth": {"token": REDACTED}}
    assert entry.after == {"auth": {"token": REDACTED}, "base_url": "https://x"}
