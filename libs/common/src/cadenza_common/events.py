"""The wire contract: one pydantic model per event, the topics they travel on, the type registry.

Every event is a CloudEvents 1.0 event in Kafka binary mode (see `kafka.py`): the
model's `CE_TYPE` becomes the `ce_type` header and the model's JSON is the value.
Rules (STYLE.md §4): events are named in the past tense, commands in the
imperative or as requests; add fields with defaults, never repurpose one.

Ids and times have defaults for producers at the edges (API, runners); the
scheduler's pure `decide()` always passes them explicitly so replay is exact.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

import uuid_utils
from pydantic import BaseModel, ConfigDict, Field


def new_event_id() -> uuid.UUID:
    """Return a fresh UUIDv7 (time-ordered) event id."""
    return uuid.UUID(bytes=uuid_utils.uuid7().bytes)


def utcnow() -> datetime:
    """Return the current time, timezone-aware, in UTC (for edges, never for `domain/`)."""
    return datetime.now(UTC)


# --- topics ---------------------------------------------------------------------------------


class Topic(StrEnum):
    """Logical topic names; the physical name is `<prefix><name>` (see `Topics`)."""

    EXECUTIONS_COMMANDS = "executions.commands"
    APPROVALS_DECISIONS = "approvals.decisions"
    STEPS_READY = "steps.ready"
    EXECUTIONS_EVENTS = "executions.events"
    AUDIT_RECORDS = "audit.records"
    DLQ = "dlq"


@dataclass(frozen=True)
class Topics:
    """Physical topic names under one prefix (default `cadenza.`)."""

    prefix: str = "cadenza."

    def name(self, topic: Topic) -> str:
        """Return the physical name of a logical topic."""
        return f"{self.prefix}{topic.value}"

    @property
    def executions_commands(self) -> str:
        return self.name(Topic.EXECUTIONS_COMMANDS)

    @property
    def approvals_decisions(self) -> str:
        return self.name(Topic.APPROVALS_DECISIONS)

    @property
    def steps_ready(self) -> str:
        return self.name(Topic.STEPS_READY)

    @property
    def executions_events(self) -> str:
        return self.name(Topic.EXECUTIONS_EVENTS)

    @property
    def audit_records(self) -> str:
        return self.name(Topic.AUDIT_RECORDS)

    @property
    def dlq(self) -> str:
        return self.name(Topic.DLQ)

    def all(self) -> list[str]:
        """Every physical topic Cadenza needs, in a stable order."""
        return [self.name(t) for t in Topic]


# --- shared value types -----------------------------------------------------------------------


class Actor(BaseModel):
    """Who did something: an API key, a signed link, or the system itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["api_key", "signed_link", "system", "trigger"] = "system"
    id: str = "cadenza"
    roles: list[str] = Field(default_factory=list)


class ErrorClass(StrEnum):
    """Why a step failed; the scheduler's retry policy matches on these."""

    CONNECT_ERROR = "connect_error"
    TIMEOUT = "timeout"
    HTTP_5XX = "http_5xx"
    HTTP_4XX = "http_4xx"
    RATE_LIMITED = "rate_limited"
    RESPONSE_TOO_LARGE = "response_too_large"
    SSRF_REFUSED = "ssrf_refused"
    CIRCUIT_OPEN = "circuit_open"
    INVALID_REQUEST = "invalid_request"
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_EXPIRED = "approval_expired"
    CANCELLED = "cancelled"
    EXPRESSION_ERROR = "expression_error"
    CHILD_FAILED = "child_failed"
    INTERNAL = "internal"


class StepError(BaseModel):
    """A step failure as the runner (or the engine) saw it."""

    model_config = ConfigDict(extra="forbid")

    error_class: ErrorClass
    message: str
    retryable: bool
    status_code: int | None = None
    retry_after_s: float | None = Field(default=None, ge=0)
    details: dict[str, Any] = Field(default_factory=dict)


class ExecutionStatus(StrEnum):
    """An execution's status as the read model shows it."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class TimerKind(StrEnum):
    """What a scheduler timer is for."""

    WAIT = "wait"
    RETRY = "retry"
    STEP_TIMEOUT = "step_timeout"
    EXECUTION_TIMEOUT = "execution_timeout"
    APPROVAL_EXPIRY = "approval_expiry"
    APPROVAL_ESCALATION = "approval_escalation"


# --- base classes -----------------------------------------------------------------------------


class Event(BaseModel):
    """Base of every event: an id (UUIDv7) and when it happened."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    CE_TYPE: ClassVar[str] = ""

    event_id: uuid.UUID = Field(default_factory=new_event_id)
    occurred_at: datetime = Field(default_factory=utcnow)

    def partition_key(self) -> str:
        """The Kafka key: the execution id for execution traffic."""
        raise NotImplementedError


class ExecutionEvent(Event):
    """An event about one execution, keyed by its id.

    `seq` is the per-execution sequence number the scheduler gives every history
    event it emits on `executions.events`; records from runners and the API leave it
    unset.
    """

    execution_id: uuid.UUID
    org_id: uuid.UUID
    seq: int | None = Field(default=None, ge=0)

    def partition_key(self) -> str:
        return id_text(self.execution_id)


class StepEvent(ExecutionEvent):
    """An event about one attempt of one node."""

    node_id: str
    attempt: int = Field(default=1, ge=1)


# --- commands: executions.commands -------------------------------------------------------------


class ParentRef(BaseModel):
    """The parent execution and node of a child started by `sub_workflow`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    execution_id: uuid.UUID
    node_id: str


class ExecutionRequested(ExecutionEvent):
    """Start an execution of an immutable workflow version snapshot."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.requested"

    workflow_id: uuid.UUID
    workflow_version: int = Field(ge=1)
    workflow: dict[str, Any]
    input: dict[str, Any] = Field(default_factory=dict)
    external_id: str | None = None
    initiated_by: Actor = Field(default_factory=Actor)
    parent: ParentRef | None = None
    jitter_seed: int = 0
    workflow_ref: str | None = Field(
        default=None,
        description=(
            "A sub_workflow child's target as `slug` or `slug@version`; set by the scheduler "
            "(informational: the child's snapshot comes from `sub_workflows`)."
        ),
    )
    sub_workflows: dict[str, WorkflowSnapshot] = Field(
        default_factory=dict,
        description=(
            "The snapshots of every workflow a `sub_workflow` node may start, directly or "
            "through its children, keyed by the reference as written (`slug` or "
            "`slug@version`); resolved by the trigger-api at execute time and passed on to "
            "each child, so the scheduler never reads the database."
        ),
    )


class CancelRequested(ExecutionEvent):
    """Cancel a running execution."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.cancel_requested"

    reason: str = ""
    requested_by: Actor = Field(default_factory=Actor)


class TimerFired(ExecutionEvent):
    """A scheduler timer came due (wait, retry backoff, timeouts, approval expiry/escalation)."""

    CE_TYPE: ClassVar[str] = "cadenza.timer.fired"

    timer_id: str
    kind: TimerKind
    due_at: datetime
    node_id: str | None = None
    attempt: int | None = None


class SignalReceived(ExecutionEvent):
    """An external signal delivered to a running execution."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.signal_received"

    name: str
    payload: dict[str, Any] = Field(default_factory=dict)


class ChildExecutionFinished(ExecutionEvent):
    """A `sub_workflow` child ended; routed to the parent's key (`execution_id` = parent)."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.child_finished"

    child_execution_id: uuid.UUID
    node_id: str
    status: ExecutionStatus
    output: Any = None
    error: StepError | None = None


# --- approvals.decisions -----------------------------------------------------------------------


class ApprovalDecisionSubmitted(StepEvent):
    """A person's decision as submitted through the API; unvalidated until approvals checks it."""

    CE_TYPE: ClassVar[str] = "cadenza.approval.decision_submitted"

    decision: Literal["approve", "reject"]
    comment: str = ""
    decided_by: Actor
    token_id: str | None = None
    task_id: uuid.UUID | None = Field(
        default=None,
        description="the approval task decided on, when the submitter knows it (inbox, signed"
        " link); the approvals service then checks it names this execution and node and takes"
        " the attempt from the task",
    )


# --- steps.ready -------------------------------------------------------------------------------


class StepReady(StepEvent):
    """A node attempt a runner must execute (`service_call` or `webhook_emit`).

    `request` is the node's call spec with `${trigger.*}`/`${step.*}` references
    already resolved; `${env.*}`/`${secrets.*}` are left for the runner.
    """

    CE_TYPE: ClassVar[str] = "cadenza.step.ready"

    node_type: Literal["service_call", "webhook_emit", "compensation"]
    request: dict[str, Any]
    idempotency_key: str
    timeout_s: float | None = Field(default=None, gt=0)
    deadline: datetime | None = None


# --- step outcomes and executions.events ---------------------------------------------------------


class StepSucceeded(StepEvent):
    """A node attempt succeeded (from a runner, approvals, or the engine's history)."""

    CE_TYPE: ClassVar[str] = "cadenza.step.succeeded"

    output: Any = None
    status_code: int | None = None
    duration_ms: float | None = None
    output_ref: str | None = None
    response_headers: dict[str, str] = Field(default_factory=dict)


class StepFailed(StepEvent):
    """A node attempt failed."""

    CE_TYPE: ClassVar[str] = "cadenza.step.failed"

    error: StepError
    duration_ms: float | None = None


# --- executions.events (history) -----------------------------------------------------------------


class ExecutionStarted(ExecutionEvent):
    """The scheduler accepted an execution."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.started"

    workflow_id: uuid.UUID
    workflow_version: int
    workflow_slug: str = ""
    input: dict[str, Any] = Field(default_factory=dict)
    external_id: str | None = None
    initiated_by: Actor = Field(default_factory=Actor)
    parent: ParentRef | None = None


class StepScheduled(StepEvent):
    """A node attempt was scheduled (sent to a runner, a timer, or an approval)."""

    CE_TYPE: ClassVar[str] = "cadenza.step.scheduled"

    node_type: str
    input: Any = None


class StepStarted(StepEvent):
    """A node attempt started executing."""

    CE_TYPE: ClassVar[str] = "cadenza.step.started"

    node_type: str = ""


class StepRetrying(StepEvent):
    """A failed attempt will be retried at `retry_at`."""

    CE_TYPE: ClassVar[str] = "cadenza.step.retrying"

    error: StepError
    next_attempt: int
    retry_at: datetime


class StepSkipped(StepEvent):
    """A node will not run (branch not taken, on_error: skip, or cancellation)."""

    CE_TYPE: ClassVar[str] = "cadenza.step.skipped"

    reason: str = ""


class ApprovalRequested(StepEvent):
    """A `human_approval` node is waiting for people to decide."""

    CE_TYPE: ClassVar[str] = "cadenza.approval.requested"

    approvers: list[str]
    required: int = Field(default=1, ge=1)
    four_eyes: bool = False
    expires_at: datetime | None = None
    escalate_at: datetime | None = None
    escalate_to: list[str] = Field(default_factory=list)
    on_timeout: Literal["reject", "approve", "fail"] = "reject"
    on_reject: Literal["succeed", "fail"] = "succeed"
    instructions: str = ""
    initiated_by: Actor = Field(default_factory=Actor)
    context: dict[str, Any] = Field(default_factory=dict)


class ApprovalDecided(StepEvent):
    """The approval node reached its outcome."""

    CE_TYPE: ClassVar[str] = "cadenza.approval.decided"

    decision: Literal["approved", "rejected"]
    approvers: list[str] = Field(default_factory=list)
    comments: list[str] = Field(default_factory=list)


class ApprovalEscalated(StepEvent):
    """An approval was escalated after `escalate_after`."""

    CE_TYPE: ClassVar[str] = "cadenza.approval.escalated"

    escalate_to: list[str] = Field(default_factory=list)


class ApprovalExpired(StepEvent):
    """An approval expired; `on_timeout` says what the engine did about it."""

    CE_TYPE: ClassVar[str] = "cadenza.approval.expired"

    on_timeout: Literal["reject", "approve", "fail"] = "reject"


class CompensationStarted(ExecutionEvent):
    """The execution failed and its completed nodes are compensated in `order`."""

    CE_TYPE: ClassVar[str] = "cadenza.compensation.started"

    order: list[str]
    reason: str = ""


class ExecutionSucceeded(ExecutionEvent):
    """The execution finished successfully."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.succeeded"

    output: Any = None


class ExecutionFailed(ExecutionEvent):
    """The execution failed."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.failed"

    error: StepError
    failed_node: str | None = None
    compensated: bool = False


class ExecutionCancelled(ExecutionEvent):
    """The execution was cancelled."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.cancelled"

    reason: str = ""
    cancelled_by: Actor = Field(default_factory=Actor)


class ExecutionTimedOut(ExecutionEvent):
    """The execution exceeded its workflow timeout."""

    CE_TYPE: ClassVar[str] = "cadenza.execution.timed_out"

    timeout_s: float | None = None


# --- audit.records -----------------------------------------------------------------------------


class AuditRecorded(Event):
    """A control-plane change (actor, action, before/after with secrets redacted), keyed by org."""

    CE_TYPE: ClassVar[str] = "cadenza.audit.recorded"

    org_id: uuid.UUID
    actor: Actor
    action: str
    resource_type: str
    resource_id: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    execution_id: uuid.UUID | None = None

    def partition_key(self) -> str:
        return id_text(self.org_id)


@functools.lru_cache(maxsize=1 << 14)
def id_text(value: uuid.UUID) -> str:
    """`str(value)`, cached: an execution's id is written on every record of its transitions
    (keys, headers, derived ids), and `UUID.__str__` is Python code."""
    return str(value)


def json_bytes(model: BaseModel) -> bytes:
    """`model.model_dump_json().encode()`, the same bytes in half the time: pydantic-core's
    serializer already returns bytes, which `model_dump_json` decodes to text (and its
    keyword handling costs as much again). `kafka.encode` writes every event this way."""
    return model.__pydantic_serializer__.to_json(model)


# --- registry ----------------------------------------------------------------------------------

EVENT_TYPES: tuple[type[Event], ...] = (
    ExecutionRequested,
    CancelRequested,
    TimerFired,
    SignalReceived,
    ChildExecutionFinished,
    ApprovalDecisionSubmitted,
    StepReady,
    StepSucceeded,
    StepFailed,
    ExecutionStarted,
    StepScheduled,
    StepStarted,
    StepRetrying,
    StepSkipped,
    ApprovalRequested,
    ApprovalDecided,
    ApprovalEscalated,
    ApprovalExpired,
    CompensationStarted,
    ExecutionSucceeded,
    ExecutionFailed,
    ExecutionCancelled,
    ExecutionTimedOut,
    AuditRecorded,
)

REGISTRY: dict[str, type[Event]] = {cls.CE_TYPE: cls for cls in EVENT_TYPES}

TOPIC_EVENTS: dict[Topic, tuple[type[Event], ...]] = {
    Topic.EXECUTIONS_COMMANDS: (
        ExecutionRequested,
        CancelRequested,
        TimerFired,
        SignalReceived,
        ChildExecutionFinished,
        StepSucceeded,
        StepFailed,
    ),
    Topic.APPROVALS_DECISIONS: (ApprovalDecisionSubmitted,),
    Topic.STEPS_READY: (StepReady,),
    Topic.EXECUTIONS_EVENTS: (
        ExecutionStarted,
        StepScheduled,
        StepStarted,
        StepSucceeded,
        StepFailed,
        StepRetrying,
        StepSkipped,
        ApprovalRequested,
        ApprovalDecided,
        ApprovalEscalated,
        ApprovalExpired,
        CompensationStarted,
        ExecutionSucceeded,
        ExecutionFailed,
        ExecutionCancelled,
        ExecutionTimedOut,
    ),
    Topic.AUDIT_RECORDS: (AuditRecorded,),
}

TERMINAL_EXECUTION_EVENTS: tuple[type[ExecutionEvent], ...] = (
    ExecutionSucceeded,
    ExecutionFailed,
    ExecutionCancelled,
    ExecutionTimedOut,
)


class UnknownEventType(LookupError):
    """A `ce_type` that no model is registered for."""


def event_class(ce_type: str) -> type[Event]:
    """Return the model registered for a CloudEvents `type`.

    Raises:
        UnknownEventType: when no model is registered for it.
    """
    try:
        return REGISTRY[ce_type]
    except KeyError:
        raise UnknownEventType(f"unknown event type {ce_type!r}") from None


class WorkflowSnapshot(BaseModel):
    """One immutable workflow version, as bundled for `sub_workflow` children."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow_id: uuid.UUID
    workflow_version: int = Field(ge=1)
    workflow: dict[str, Any]


ExecutionRequested.model_rebuild()
