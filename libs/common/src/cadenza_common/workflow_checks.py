"""The semantic checks behind `validate_workflow`: graph, references, templates, expressions."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from cadenza_common import expressions, templating
from cadenza_common.durations import InvalidDuration, parse_duration
from cadenza_common.workflow import (
    MAX_SPEC_BYTES,
    DecisionNode,
    Goto,
    HumanApprovalNode,
    MapNode,
    Node,
    ServiceCallNode,
    SubWorkflowNode,
    TransformNode,
    ValidationIssue,
    WaitNode,
    WebhookEmitNode,
    _SpecHeader,
)

Issue = ValidationIssue


def check_size(doc: Mapping[str, Any]) -> list[Issue]:
    """A spec larger than `MAX_SPEC_BYTES` as JSON is refused before anything else."""
    try:
        size = len(json.dumps(doc, default=str))
    except (ValueError, RecursionError):
        return [Issue(path="", code="invalid_type", message="not a JSON document")]
    if size > MAX_SPEC_BYTES:
        msg = f"spec is {size} bytes, at most {MAX_SPEC_BYTES}"
        return [Issue(path="", code="limit_exceeded", message=msg)]
    return []


@dataclass
class Graph:
    """Nodes by id and the edges between them (depends_on, decision branches, goto)."""

    index: dict[str, int] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    preds: dict[str, set[str]] = field(default_factory=dict)
    succs: dict[str, set[str]] = field(default_factory=dict)

    def add_edge(self, pred: str, succ: str) -> None:
        if pred in self.nodes and succ in self.nodes:
            self.preds[succ].add(pred)
            self.succs[pred].add(succ)


def semantic_errors(
    header: _SpecHeader | None, nodes: list[tuple[int, Node]], raw_nodes: Any
) -> list[Issue]:
    """Every problem that pydantic cannot see; runs on the nodes that did parse."""
    errors = list(_header_durations(header))
    graph, known = _build_graph(nodes, raw_nodes, errors)
    for index, node in nodes:
        errors += _node_checks(index, node, known)
    cyclic = _cycle_errors(graph, errors)
    errors += _unreachable(graph)
    ancestors = {} if cyclic else _ancestors(graph)
    for index, node in nodes:
        errors += _reference_checks(index, node, known, ancestors)
    if header is not None:
        errors += _template_errors("output", header.output, known, None)
    return errors


def _header_durations(header: _SpecHeader | None) -> Iterator[Issue]:
    if header is not None:
        yield from _duration("timeout", header.timeout)


def _duration(path: str, value: Any) -> Iterator[Issue]:
    if value is None:
        return
    try:
        parse_duration(value)
    except InvalidDuration as exc:
        yield Issue(path=path, code="invalid_duration", message=str(exc))


def _build_graph(
    nodes: list[tuple[int, Node]], raw_nodes: Any, errors: list[Issue]
) -> tuple[Graph, set[str]]:
    graph = Graph()
    for index, node in nodes:
        if node.id in graph.nodes:
            msg = f"id {node.id!r} is already used by nodes[{graph.index[node.id]}]"
            errors.append(Issue(path=f"nodes[{index}].id", code="duplicate_id", message=msg))
            continue
        graph.index[node.id] = index
        graph.nodes[node.id] = node
        graph.preds[node.id] = set()
        graph.succs[node.id] = set()
    for _, node in nodes:
        for pred, _path in _edges_in(node):
            graph.add_edge(pred, node.id)
        for succ, _path in _successors_named(node):
            graph.add_edge(node.id, succ)
    return graph, set(graph.nodes) | _raw_ids(raw_nodes)


def _raw_ids(raw_nodes: Any) -> set[str]:
    if not isinstance(raw_nodes, list):
        return set()
    return {n["id"] for n in raw_nodes if isinstance(n, dict) and isinstance(n.get("id"), str)}


def _edges_in(node: Node) -> Iterator[tuple[str, str]]:
    for j, dep in enumerate(node.depends_on):
        yield dep, f"depends_on[{j}]"


def _successors_named(node: Node) -> Iterator[tuple[str, str]]:
    """Nodes this node names as what comes next: decision branches and goto handlers."""
    if isinstance(node, DecisionNode):
        for k, case in enumerate(node.cases):
            for j, target in enumerate(case.next):
                yield target, f"cases[{k}].next[{j}]"
        for j, target in enumerate(node.default):
            yield target, f"default[{j}]"
    if isinstance(node.on_error, Goto):
        yield node.on_error.goto, "on_error.goto"


def _node_checks(index: int, node: Node, known: set[str]) -> Iterator[Issue]:
    base = f"nodes[{index}]"
    for target, path in [*_edges_in(node), *_successors_named(node)]:
        if target not in known:
            msg = f"no node with id {target!r}"
            yield Issue(path=f"{base}.{path}", code="unknown_reference", message=msg)
        elif target == node.id:
            yield Issue(path=f"{base}.{path}", code="cycle", message=f"{target} -> {target}")
    for path, value in _durations_of(node):
        yield from _duration(f"{base}.{path}", value)
    yield from _shape_checks(base, node)


def _durations_of(node: Node) -> Iterator[tuple[str, Any]]:
    yield "timeout", node.timeout
    yield "retry.initial_interval", node.retry.initial_interval
    yield "retry.max_interval", node.retry.max_interval
    if isinstance(node, WaitNode):
        yield "duration", node.duration
    if isinstance(node, HumanApprovalNode):
        yield "expires_in", node.expires_in
        yield "escalate_after", node.escalate_after
    if isinstance(node, ServiceCallNode) and node.compensation is not None:
        yield "compensation.timeout", node.compensation.timeout
    if isinstance(node, MapNode):
        yield "node.timeout", node.node.timeout


def _shape_checks(base: str, node: Node) -> Iterator[Issue]:
    problem = _shape_problem(node)
    if problem is not None:
        path, code, msg = problem
        yield Issue(path=f"{base}{path}", code=code, message=msg)
    if node.join == "n_of_m" and (node.join_n is None or node.join_n > len(node.depends_on)):
        msg = "join: n_of_m needs join_n between 1 and the number of depends_on"
        yield Issue(path=f"{base}.join_n", code="invalid_join", message=msg)


def _shape_problem(node: Node) -> tuple[str, str, str] | None:
    if isinstance(node, ServiceCallNode) and (node.connection is None) == (node.url is None):
        return "", "missing_target", "give exactly one of connection or url"
    if isinstance(node, ServiceCallNode) and node.compensation is not None:
        comp = node.compensation
        if (comp.connection is None) == (comp.url is None):
            return ".compensation", "missing_target", "give exactly one of connection or url"
    if isinstance(node, WebhookEmitNode) and (node.url is None) == (node.subscription is None):
        return "", "missing_target", "give exactly one of url or subscription"
    if isinstance(node, WaitNode) and (node.duration is None) == (node.until is None):
        return "", "missing_field", "give exactly one of duration or until"
    if isinstance(node, MapNode):
        return _map_item_problem(node)
    return None


def _map_item_problem(node: MapNode) -> tuple[str, str, str] | None:
    item = node.node
    if item.type == "transform" and item.expression is None:
        return ".node.expression", "missing_field", "a transform needs an expression"
    if item.type == "webhook_emit" and (
        item.event is None or (item.url or item.subscription) is None
    ):
        return ".node", "missing_field", "a webhook_emit needs event and url or subscription"
    if item.type == "service_call" and (item.connection is None) == (item.url is None):
        return ".node", "missing_target", "give exactly one of connection or url"
    return None


def _cycle_errors(graph: Graph, errors: list[Issue]) -> bool:
    remaining = {n: len(p - {n}) for n, p in graph.preds.items()}
    queue = [n for n, count in remaining.items() if count == 0]
    while queue:
        current = queue.pop()
        for succ in graph.succs[current] - {current}:
            remaining[succ] -= 1
            if remaining[succ] == 0:
                queue.append(succ)
    stuck = {n for n, count in remaining.items() if count > 0}
    if stuck:
        cycle = _one_cycle(graph, stuck)
        first = graph.index[cycle[0]]
        msg = "cycle: " + " -> ".join([*cycle, cycle[0]])
        errors.append(Issue(path=f"nodes[{first}]", code="cycle", message=msg))
    return bool(stuck) or any(e.code == "cycle" for e in errors)


def _one_cycle(graph: Graph, stuck: set[str]) -> list[str]:
    """Walk predecessors inside the stuck set until a node repeats: that loop is a cycle."""
    current = min(stuck, key=lambda n: graph.index[n])
    seen: list[str] = []
    while current not in seen:
        seen.append(current)
        current = min((p for p in graph.preds[current] if p in stuck), key=lambda p: graph.index[p])
    forward = list(reversed(seen[seen.index(current) :]))
    start = forward.index(min(forward, key=lambda n: graph.index[n]))
    return forward[start:] + forward[:start]


def _unreachable(graph: Graph) -> Iterator[Issue]:
    """A node that depends on a decision which never routes to it can never run."""
    for node_id, node in graph.nodes.items():
        for dep in node.depends_on:
            decision = graph.nodes.get(dep)
            if isinstance(decision, DecisionNode) and node_id not in _targets(decision):
                msg = f"{node_id} depends on decision {dep} but no case or default leads to it"
                yield Issue(
                    path=f"nodes[{graph.index[node_id]}]", code="unreachable_node", message=msg
                )


def _targets(decision: DecisionNode) -> set[str]:
    return {t for case in decision.cases for t in case.next} | set(decision.default)


def _ancestors(graph: Graph) -> dict[str, set[str]]:
    memo: dict[str, set[str]] = {}
    for node_id in _topological(graph):
        found: set[str] = set()
        for pred in graph.preds[node_id]:
            found |= memo[pred] | {pred}
        memo[node_id] = found
    return memo


def _topological(graph: Graph) -> list[str]:
    remaining = {n: len(p) for n, p in graph.preds.items()}
    queue = sorted(n for n, count in remaining.items() if count == 0)
    order: list[str] = []
    while queue:
        current = queue.pop(0)
        order.append(current)
        for succ in sorted(graph.succs[current]):
            remaining[succ] -= 1
            if remaining[succ] == 0:
                queue.append(succ)
    return order


def _reference_checks(
    index: int, node: Node, known: set[str], ancestors: dict[str, set[str]]
) -> Iterator[Issue]:
    base = f"nodes[{index}]"
    upstream = ancestors.get(node.id)
    for path, value in _templated_fields(node):
        yield from _template_errors(
            f"{base}.{path}", value, known, upstream, allow_item=path.startswith("node.")
        )
    for path, source, kind in _expressions_of(node):
        yield from _expression_errors(f"{base}.{path}", source, kind, known, upstream)


def _templated_fields(node: Node) -> Iterator[tuple[str, Any]]:
    if isinstance(node, ServiceCallNode | MapNode):
        call = node.node if isinstance(node, MapNode) else node
        prefix = "node." if isinstance(node, MapNode) else ""
        for name in ("url", "path", "query", "headers", "body"):
            yield prefix + name, getattr(call, name)
    if isinstance(node, ServiceCallNode) and node.compensation is not None:
        for name in ("url", "path", "query", "headers", "body"):
            yield f"compensation.{name}", getattr(node.compensation, name)
    if isinstance(node, WebhookEmitNode):
        yield from (("url", node.url), ("event", node.event), ("payload", node.payload))
    if isinstance(node, MapNode):
        yield from (("items", node.items), ("node.payload", node.node.payload))
    if isinstance(node, WaitNode):
        yield "until", node.until
    if isinstance(node, HumanApprovalNode):
        yield from (("instructions", node.instructions), ("context", node.context))
    if isinstance(node, SubWorkflowNode):
        yield "input", node.input


def _expressions_of(node: Node) -> Iterator[tuple[str, str, str]]:
    if isinstance(node, DecisionNode):
        for k, case in enumerate(node.cases):
            yield f"cases[{k}].when", case.when, "cel"
    if isinstance(node, TransformNode):
        yield "expression", node.expression, "jsonata"
    if isinstance(node, ServiceCallNode) and node.output is not None:
        yield "output", node.output, "jsonata"
    if isinstance(node, MapNode) and node.node.expression is not None:
        yield "node.expression", node.node.expression, "jsonata"


def _template_errors(
    path: str, value: Any, known: set[str], upstream: set[str] | None, allow_item: bool = False
) -> Iterator[Issue]:
    for sub, text in templating.walk_strings(value, path):
        try:
            refs = templating.parse_template(text).references()
        except templating.TemplateSyntaxError as exc:
            yield Issue(path=sub, code="template_syntax", message=str(exc))
            continue
        for ref in refs:
            if ref.root in {"item", "index"} and not allow_item:
                msg = f"'${{{ref.source}}}' is only available inside a map's node"
                yield Issue(path=sub, code="template_syntax", message=msg)
            yield from _step_ref_errors(sub, ref.step_id, known, upstream)


def _expression_errors(
    path: str, source: str, kind: str, known: set[str], upstream: set[str] | None
) -> Iterator[Issue]:
    try:
        if kind == "cel":
            expressions.compile_condition(source)
        else:
            expressions.compile_transform(source)
    except expressions.ExpressionError as exc:
        code = "limit_exceeded" if "longer than" in str(exc) else "expression_syntax"
        yield Issue(path=path, code=code, message=str(exc))
        return
    for step_id in sorted(expressions.step_references(source)):
        yield from _step_ref_errors(path, step_id, known, upstream)


def _step_ref_errors(
    path: str, step_id: str | None, known: set[str], upstream: set[str] | None
) -> Iterator[Issue]:
    if step_id is None:
        return
    if step_id not in known:
        yield Issue(path=path, code="unknown_reference", message=f"no node with id {step_id!r}")
    elif upstream is not None and step_id not in upstream:
        msg = f"step {step_id!r} is not upstream of this node, so it may not have run yet"
        yield Issue(path=path, code="reference_not_upstream", message=msg)
