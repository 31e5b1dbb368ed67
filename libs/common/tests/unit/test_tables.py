"""Every table has exactly one writing service, as DESIGN §1 says."""

from cadenza_common.db.tables import OWNERS, metadata


def test_every_table_has_one_owner() -> None:
    assert set(OWNERS) == set(metadata.tables)


def test_owners_are_known_services() -> None:
    assert set(OWNERS.values()) == {"trigger-api", "step-runner", "approvals", "audit-sink"}
