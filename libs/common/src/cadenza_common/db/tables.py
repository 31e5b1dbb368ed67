"""SQLAlchemy Core table definitions for every Postgres table (DESIGN §1 says who writes each).

Alembic migrations under `migrations/versions` create these; a test checks that the
migrated schema and this module agree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


def _created_at() -> Column[Any]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


def _org(nullable: bool = False) -> Column[Any]:
    return Column("org_id", UUID(as_uuid=True), ForeignKey("orgs.id"), nullable=nullable)


# --- trigger-api ---------------------------------------------------------------------------------

orgs = Table(
    "orgs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("executions_per_minute", Integer, nullable=False, server_default=text("600")),
    _created_at(),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(64), primary_key=True),
    _org(),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("created_by", String(64)),
    _created_at(),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)

workflows = Table(
    "workflows",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _org(),
    Column("slug", String(100), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("status", String(16), nullable=False, server_default="draft"),
    Column("draft_spec", JSONB, nullable=False),
    Column("latest_version", Integer),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("org_id", "slug"),
)

workflow_versions = Table(
    "workflow_versions",
    metadata,
    Column("workflow_id", UUID(as_uuid=True), ForeignKey("workflows.id"), nullable=False),
    Column("version", Integer, nullable=False),
    _org(),
    Column("spec", JSONB, nullable=False),
    Column("spec_hash", String(64), nullable=False),
    Column("published_by", String(64)),
    Column("published_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("workflow_id", "version"),
)

service_connections = Table(
    "service_connections",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _org(),
    Column("name", String(100), nullable=False),
    Column("base_url", Text, nullable=False),
    Column("auth_type", String(16), nullable=False, server_default="none"),
    Column("auth_header", String(100)),
    Column("secret_ciphertext", Text),
    Column("allowed_hosts", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("allow_private_network", Boolean, nullable=False, server_default=text("false")),
    Column("default_timeout_s", Float, nullable=False, server_default=text("30")),
    Column("rate_limit_per_s", Float),
    Column("concurrency_limit", Integer),
    Column("openapi_url", Text),
    _created_at(),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("org_id", "name"),
)

catalog_operations = Table(
    "catalog_operations",
    metadata,
    Column(
        "connection_id",
        UUID(as_uuid=True),
        ForeignKey("service_connections.id", ondelete="CASCADE"),
        nullable=False,
    ),
    _org(),
    Column("operation_id", String(200), nullable=False),
    Column("method", String(10), nullable=False),
    Column("path", Text, nullable=False),
    Column("summary", Text, nullable=False, server_default=""),
    Column("request_schema", JSONB),
    Column("response_schema", JSONB),
    Column("fetched_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("connection_id", "method", "path"),
)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _org(),
    Column("url", Text, nullable=False),
    Column("event_types", JSONB, nullable=False),
    Column("secret_ciphertext", Text, nullable=False),
    Column("allow_private_network", Boolean, nullable=False, server_default=text("false")),
    Column("deleted_at", DateTime(timezone=True)),
    _created_at(),
    # the name a workflow's `webhook_emit: {subscription: <name>}` targets (optional)
    Column("name", String(100)),
    Index(
        "uq_webhook_subscriptions_org_name",
        "org_id",
        "name",
        unique=True,
        postgresql_where=text("name IS NOT NULL AND deleted_at IS NULL"),
    ),
)

triggers = Table(
    "triggers",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _org(),
    Column("workflow_id", UUID(as_uuid=True), ForeignKey("workflows.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("config", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("secret_ciphertext", Text),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("next_fire_at", DateTime(timezone=True)),
    _created_at(),
)

execution_requests = Table(
    "execution_requests",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _org(),
    Column("workflow_id", UUID(as_uuid=True), ForeignKey("workflows.id"), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("external_id", String(200)),
    Column("input", JSONB, nullable=False),
    Column("requested_by", String(64)),
    _created_at(),
    UniqueConstraint("org_id", "workflow_id", "external_id"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", String(255), nullable=False),
    Column("key", Text, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False),
    _created_at(),
    Column("sent_at", DateTime(timezone=True)),
    Index("ix_outbox_unsent", "id", postgresql_where=text("sent_at IS NULL")),
)

rate_limit_windows = Table(
    "rate_limit_windows",
    metadata,
    _org(),
    Column("window_start", DateTime(timezone=True), nullable=False),
    Column("count", Integer, nullable=False),
    PrimaryKeyConstraint("org_id", "window_start"),
)

# --- step-runner ----------------------------------------------------------------------------------

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _org(),
    Column("subscription_id", UUID(as_uuid=True), nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False),
    Column("event_type", String(100), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("status", String(16), nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    _created_at(),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True)),
    UniqueConstraint("subscription_id", "event_id"),
)

webhook_subscription_states = Table(
    "webhook_subscription_states",
    metadata,
    Column("subscription_id", UUID(as_uuid=True), primary_key=True),
    _org(),
    Column("consecutive_failures", Integer, nullable=False, server_default=text("0")),
    Column("disabled_at", DateTime(timezone=True)),
    Column("disabled_reason", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

blobs = Table(
    "blobs",
    metadata,
    Column("id", String(80), primary_key=True),
    _org(),
    Column("execution_id", UUID(as_uuid=True), nullable=False),
    Column("node_id", String(100), nullable=False),
    Column("content_type", String(100), nullable=False, server_default="application/json"),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    _created_at(),
)

# --- approvals ------------------------------------------------------------------------------------

approval_tasks = Table(
    "approval_tasks",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    _org(),
    Column("execution_id", UUID(as_uuid=True), nullable=False),
    Column("node_id", String(100), nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("approvers", JSONB, nullable=False),
    Column("required", Integer, nullable=False, server_default=text("1")),
    Column("four_eyes", Boolean, nullable=False, server_default=text("false")),
    Column("initiated_by", JSONB, nullable=False),
    Column("instructions", Text, nullable=False, server_default=""),
    Column("context", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("on_reject", String(16), nullable=False, server_default="succeed"),
    Column("status", String(16), nullable=False, server_default="open"),
    Column("close_reason", Text),
    Column("expires_at", DateTime(timezone=True)),
    Column("escalated_at", DateTime(timezone=True)),
    Column("escalate_to", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    _created_at(),
    Column("closed_at", DateTime(timezone=True)),
    # the StepSucceeded/StepFailed a decision produced, written in the deciding transaction
    # and sent after commit; `outcome_emitted_at` stays NULL until the broker acknowledged it
    Column("outcome", JSONB),
    Column("outcome_emitted_at", DateTime(timezone=True)),
    UniqueConstraint("execution_id", "node_id", "attempt"),
    Index("ix_approval_tasks_open", "org_id", "status"),
    Index(
        "ix_approval_tasks_unemitted",
        "id",
        postgresql_where=text("outcome IS NOT NULL AND outcome_emitted_at IS NULL"),
    ),
)

approval_decisions = Table(
    "approval_decisions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("task_id", UUID(as_uuid=True), ForeignKey("approval_tasks.id")),
    _org(),
    Column("execution_id", UUID(as_uuid=True), nullable=False),
    Column("node_id", String(100), nullable=False),
    Column("attempt", Integer, nullable=False, server_default=text("1")),
    Column("decided_by", JSONB, nullable=False),
    Column("decision", String(16), nullable=False),
    Column("comment", Text, nullable=False, server_default=""),
    Column("accepted", Boolean, nullable=False),
    Column("refusal_reason", Text),
    Column("token_id", String(64)),
    Column("decided_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index(
        "uq_approval_decisions_token_id",
        "token_id",
        unique=True,
        postgresql_where=text("token_id IS NOT NULL AND accepted"),
    ),
)

# --- audit-sink -----------------------------------------------------------------------------------

execution_runs = Table(
    "execution_runs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("org_id", UUID(as_uuid=True), nullable=False),
    Column("workflow_id", UUID(as_uuid=True), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("workflow_slug", String(100), nullable=False, server_default=""),
    Column("external_id", String(200)),
    Column("parent_execution_id", UUID(as_uuid=True)),
    Column("status", String(16), nullable=False),
    Column("input", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("output", JSONB),
    Column("error", JSONB),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("duration_ms", Float),
    Column("last_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("compensation_order", JSONB),
    Index("ix_execution_runs_org_started", "org_id", "started_at"),
    Index("ix_execution_runs_org_workflow", "org_id", "workflow_id", "status"),
)

step_runs = Table(
    "step_runs",
    metadata,
    Column("execution_id", UUID(as_uuid=True), nullable=False),
    Column("node_id", String(100), nullable=False),
    Column("org_id", UUID(as_uuid=True), nullable=False),
    Column("node_type", String(32), nullable=False, server_default=""),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("input", JSONB),
    Column("output", JSONB),
    Column("output_ref", String(80)),
    Column("error", JSONB),
    Column("status_reason", Text),
    Column("scheduled_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    PrimaryKeyConstraint("execution_id", "node_id"),
)

step_events = Table(
    "step_events",
    metadata,
    Column("event_id", UUID(as_uuid=True), primary_key=True),
    Column("execution_id", UUID(as_uuid=True), nullable=False),
    Column("org_id", UUID(as_uuid=True), nullable=False),
    Column("seq", BigInteger),
    Column("ce_type", String(100), nullable=False),
    Column("node_id", String(100)),
    Column("attempt", Integer),
    Column("data", JSONB, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Index("ix_step_events_execution_seq", "execution_id", "seq", unique=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("org_id", UUID(as_uuid=True), nullable=False),
    Column("org_seq", BigInteger, nullable=False),
    Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    Column("actor", JSONB, nullable=False),
    Column("action", String(100), nullable=False),
    Column("resource_type", String(50), nullable=False),
    Column("resource_id", String(200), nullable=False),
    Column("execution_id", UUID(as_uuid=True)),
    Column("before", JSONB),
    Column("after", JSONB),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("org_id", "org_seq"),
    Index("ix_audit_log_org_occurred", "org_id", "occurred_at"),
)

sink_offsets = Table(
    "sink_offsets",
    metadata,
    Column("group_id", String(200), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("group_id", "topic", "partition"),
)

OWNERS: dict[str, str] = {
    **dict.fromkeys(
        [
            "orgs",
            "api_keys",
            "workflows",
            "workflow_versions",
            "service_connections",
            "catalog_operations",
            "webhook_subscriptions",
            "triggers",
            "execution_requests",
            "outbox",
            "rate_limit_windows",
        ],
        "trigger-api",
    ),
    **dict.fromkeys(["webhook_deliveries", "webhook_subscription_states", "blobs"], "step-runner"),
    **dict.fromkeys(["approval_tasks", "approval_decisions"], "approvals"),
    **dict.fromkeys(
        ["execution_runs", "step_runs", "step_events", "audit_log", "sink_offsets"], "audit-sink"
    ),
}
"""The one writing service of each table (DESIGN §1); a test keeps it complete."""
