"""The workflow spec (typed nodes, retry and error policies), loading, and its validation.

`validate_workflow(doc)` never raises on any JSON input: it returns every problem at
once, each with a JSON path (`nodes[3].cases[0].next[1]`) and a stable code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from cadenza_common.durations import parse_duration

MAX_NODES = 500
MAX_SPEC_BYTES = 1_000_000
MAX_CASES = 100
MAX_MAP_CONCURRENCY = 100

NodeId = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Duration = str | int | float
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class WorkflowLoadError(ValueError):
    """Text that is neither a YAML nor a JSON object."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryPolicy(_Model):
    """How a failed attempt is retried: exponential backoff with optional jitter."""

    max_attempts: int = Field(default=1, ge=1, le=100)
    initial_interval: Duration = "1s"
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=100.0)
    max_interval: Duration = "5m"
    jitter: float = Field(default=0.0, ge=0.0, le=1.0)
    retry_on: list[str | int] | None = None
    non_retryable: list[str | int] = Field(default_factory=list)


class Goto(_Model):
    """`on_error: {goto: <node>}`: on final failure, run the handler node instead."""

    goto: NodeId


OnError = Literal["fail", "skip", "continue", "compensate"] | Goto


class CallSpec(_Model):
    """An HTTP call: through a service connection, or an absolute `url` for custom targets."""

    connection: str | None = None
    url: str | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    path: str = ""
    query: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    timeout: Duration | None = None


class _NodeBase(_Model):
    id: NodeId
    name: str = ""
    description: str = ""
    depends_on: list[NodeId] = Field(default_factory=list)
    join: Literal["all", "any", "n_of_m"] = "all"
    join_n: int | None = Field(default=None, ge=1)
    timeout: Duration | None = None
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    on_error: OnError = "fail"


class ServiceCallNode(_NodeBase, CallSpec):
    """Call a service; `output` is an optional JSONata expression over the response."""

    type: Literal["service_call"]
    compensation: CallSpec | None = None
    output: str | None = None


class Case(_Model):
    """One branch of a decision: a CEL condition and the nodes it leads to."""

    when: str
    next: list[NodeId] = Field(min_length=1)


class DecisionNode(_NodeBase):
    """The first case whose condition holds picks the branch; the others are skipped."""

    type: Literal["decision"]
    cases: list[Case] = Field(min_length=1)
    default: list[NodeId] = Field(default_factory=list)


class TransformNode(_NodeBase):
    """Shape prior outputs with a JSONata expression; the result is the node's output."""

    type: Literal["transform"]
    expression: str


class WaitNode(_NodeBase):
    """Wait a duration, or until a timestamp (a template)."""

    type: Literal["wait"]
    duration: Duration | None = None
    until: str | None = None


class WebhookEmitNode(_NodeBase):
    """Send an outbound webhook to a URL or a named subscription."""

    type: Literal["webhook_emit"]
    url: str | None = None
    subscription: str | None = None
    event: str
    payload: Any = None


class HumanApprovalNode(_NodeBase):
    """Wait for people to approve; the output is `{decision, approvers, comments}`."""

    type: Literal["human_approval"]
    approvers: list[str] = Field(min_length=1)
    required: int = Field(default=1, ge=1)
    four_eyes: bool = False
    expires_in: Duration | None = None
    escalate_after: Duration | None = None
    escalate_to: list[str] = Field(default_factory=list)
    on_timeout: Literal["reject", "approve", "fail"] = "reject"
    on_reject: Literal["succeed", "fail"] = "succeed"
    instructions: str = ""
    context: Any = None


class MapItemNode(_Model):
    """The per-item step of a `map`: a call, webhook or transform (`${item}`, `${index}`)."""

    type: Literal["service_call", "webhook_emit", "transform"]
    connection: str | None = None
    url: str | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "GET"
    path: str = ""
    query: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = None
    subscription: str | None = None
    event: str | None = None
    payload: Any = None
    expression: str | None = None
    timeout: Duration | None = None


class MapNode(_NodeBase):
    """Run `node` for every item of `items` (a template to a list), `concurrency` at a time."""

    type: Literal["map"]
    items: Any
    node: MapItemNode
    concurrency: int = Field(default=10, ge=1, le=MAX_MAP_CONCURRENCY)
    max_items: int = Field(default=1000, ge=1, le=10_000)


class WorkflowRef(_Model):
    slug: Slug
    version: int | None = Field(default=None, ge=1)


class SubWorkflowNode(_NodeBase):
    """Start a child execution; the node's output is the child's output."""

    type: Literal["sub_workflow"]
    workflow: WorkflowRef
    input: Any = None


Node = Annotated[
    ServiceCallNode
    | DecisionNode
    | TransformNode
    | WaitNode
    | WebhookEmitNode
    | HumanApprovalNode
    | MapNode
    | SubWorkflowNode,
    Field(discriminator="type"),
]
NODE_TYPES = (
    "service_call",
    "decision",
    "transform",
    "wait",
    "webhook_emit",
    "human_approval",
    "map",
    "sub_workflow",
)


class _SpecHeader(_Model):
    slug: Slug
    name: str = ""
    description: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict)
    timeout: Duration | None = None
    on_failure: Literal["fail", "compensate"] = "fail"
    output: Any = None


class WorkflowSpec(_SpecHeader):
    """One workflow version: metadata, an input JSON Schema, and a DAG of typed nodes."""

    nodes: list[Node] = Field(min_length=1, max_length=MAX_NODES)

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError when absent)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)


class ValidationIssue(BaseModel):
    """One problem in a spec: where (JSON path), what (stable code), and why."""

    model_config = ConfigDict(frozen=True)

    path: str
    code: str
    message: str


class ValidationResult(BaseModel):
    """The outcome of `validate_workflow`: the spec when valid, else every problem."""

    spec: WorkflowSpec | None = None
    errors: list[ValidationIssue] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


_NODE_ADAPTER: TypeAdapter[Node] = TypeAdapter(Node)


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without anchors/aliases: an alias bomb would expand exponentially later."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not allowed in a workflow")
        return super().compose_node(parent, index)


def load_workflow_text(text: str) -> dict[str, Any]:
    """Parse a spec written in YAML or JSON into a dict.

    Raises:
        WorkflowLoadError: on malformed text or a document that is not an object.
    """
    if len(text) > MAX_SPEC_BYTES * 2:
        raise WorkflowLoadError(f"document longer than {MAX_SPEC_BYTES * 2} characters")
    try:
        doc = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise WorkflowLoadError(f"not valid YAML or JSON: {exc}") from None
    except RecursionError:
        raise WorkflowLoadError("document nested too deeply") from None
    if not isinstance(doc, dict):
        raise WorkflowLoadError(f"a workflow must be an object, got {type(doc).__name__}")
    return doc


def parse_workflow(doc: Mapping[str, Any]) -> WorkflowSpec:
    """Validate and return the spec.

    Raises:
        InvalidWorkflow: with every problem when it is not valid.
    """
    result = validate_workflow(doc)
    if result.spec is None:
        raise InvalidWorkflow(result.errors)
    return result.spec


class InvalidWorkflow(ValueError):
    """A spec with validation problems (`.errors`)."""

    def __init__(self, errors: list[ValidationIssue]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.path}: {e.code}: {e.message}" for e in errors[:10]))


def validate_workflow(doc: Mapping[str, Any]) -> ValidationResult:
    """Check a spec and return every problem at once (never raises on JSON input)."""
    try:
        return _validate(doc)
    except RecursionError:
        issue = ValidationIssue(path="", code="limit_exceeded", message="nested too deeply")
        return ValidationResult(errors=[issue])


def _validate(doc: Any) -> ValidationResult:
    from cadenza_common import workflow_checks

    if not isinstance(doc, Mapping):
        issue = ValidationIssue(path="", code="invalid_type", message="a workflow is an object")
        return ValidationResult(errors=[issue])
    errors = workflow_checks.check_size(doc)
    if errors:
        return ValidationResult(errors=errors)
    header, nodes, errors = _structure(doc)
    errors += workflow_checks.semantic_errors(header, nodes, doc.get("nodes"))
    if errors or header is None:
        return ValidationResult(errors=errors)
    spec = WorkflowSpec(**dict(header), nodes=[n for _, n in nodes])
    return ValidationResult(spec=spec)


def _structure(
    doc: Mapping[str, Any],
) -> tuple[_SpecHeader | None, list[tuple[int, Node]], list[ValidationIssue]]:
    errors: list[ValidationIssue] = []
    header = _validate_header(doc, errors)
    raw_nodes = doc.get("nodes")
    nodes: list[tuple[int, Node]] = []
    if not isinstance(raw_nodes, list):
        what = "missing" if raw_nodes is None else "list_type"
        errors.append(ValidationIssue(path="nodes", code=what, message="nodes must be a list"))
        return header, nodes, errors
    if not raw_nodes:
        errors.append(ValidationIssue(path="nodes", code="too_short", message="no nodes"))
    if len(raw_nodes) > MAX_NODES:
        msg = f"{len(raw_nodes)} nodes, at most {MAX_NODES} allowed"
        errors.append(ValidationIssue(path="nodes", code="limit_exceeded", message=msg))
        return header, nodes, errors
    for index, raw in enumerate(raw_nodes):
        try:
            nodes.append((index, _NODE_ADAPTER.validate_python(raw)))
        except ValidationError as exc:
            errors += pydantic_issues(exc, f"nodes[{index}]")
    return header, nodes, errors


def _validate_header(doc: Mapping[str, Any], errors: list[ValidationIssue]) -> _SpecHeader | None:
    fields = {k: v for k, v in doc.items() if k != "nodes"}
    try:
        return _SpecHeader.model_validate(fields)
    except ValidationError as exc:
        errors += pydantic_issues(exc, "")
        return None


def pydantic_issues(exc: ValidationError, prefix: str) -> list[ValidationIssue]:
    """Turn pydantic errors into issues with JSON paths under `prefix`."""
    issues = []
    for err in exc.errors(include_url=False):
        code = "unknown_node_type" if err["type"] == "union_tag_invalid" else err["type"]
        if err["type"] == "union_tag_not_found":
            code = "missing_node_type"
        path = _join_path(prefix, [p for p in err["loc"] if p not in NODE_TYPES])
        issues.append(ValidationIssue(path=path, code=code, message=err["msg"]))
    return issues


def _join_path(prefix: str, loc: list[int | str]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def duration_seconds(value: Duration | None) -> float | None:
    """A spec duration in seconds (None stays None); the spec was validated already."""
    return None if value is None else parse_duration(value).total_seconds()


def to_json(spec: WorkflowSpec) -> dict[str, Any]:
    """The spec as a JSON-ready dict (what ExecutionRequested carries)."""
    doc: dict[str, Any] = json.loads(spec.model_dump_json(exclude_defaults=True))
    return doc
