"""The DAG of a workflow spec as the engine walks it: edges, topological order, join readiness."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cadenza_common.workflow import DecisionNode, Goto, Node, WorkflowSpec
from cadenza_scheduler.domain.state import NodeState, NodeStatus


class Edge(Enum):
    """How an edge stands once (or before) its predecessor finished."""

    OPEN = "open"
    LIVE = "live"
    DEAD = "dead"
    BLOCKED = "blocked"


class Readiness(Enum):
    WAIT = "wait"
    READY = "ready"
    SKIP = "skip"


@dataclass(frozen=True)
class Graph:
    """Per node: its predecessors with the kinds of edge (`dep`, `branch`, `goto`)."""

    order: tuple[str, ...]
    preds: dict[str, dict[str, frozenset[str]]]
    nodes: dict[str, Node]
    #: each node's place in `order`, and the nodes whose readiness depends on it
    position: dict[str, int]
    succs: dict[str, tuple[str, ...]]


def graph_of(spec: WorkflowSpec) -> Graph:
    """The spec's graph (cached per spec object: specs are immutable)."""
    return _graph(id(spec), spec)


def _graph(key: int, spec: WorkflowSpec) -> Graph:
    cached = _CACHE.get(key)
    if cached is not None and cached[0] is spec:
        return cached[1]
    graph = _build(spec)
    if len(_CACHE) > 512:
        _CACHE.clear()
    _CACHE[key] = (spec, graph)
    return graph


_CACHE: dict[int, tuple[WorkflowSpec, Graph]] = {}


def _build(spec: WorkflowSpec) -> Graph:
    nodes = {n.id: n for n in spec.nodes}
    kinds: dict[str, dict[str, set[str]]] = {n.id: {} for n in spec.nodes}
    for node in spec.nodes:
        for dep in node.depends_on:
            kind = "branch" if isinstance(nodes[dep], DecisionNode) else "dep"
            kinds[node.id].setdefault(dep, set()).add(kind)
        if isinstance(node, DecisionNode):
            for target in {t for c in node.cases for t in c.next} | set(node.default):
                kinds[target].setdefault(node.id, set()).add("branch")
        if isinstance(node.on_error, Goto):
            kinds[node.on_error.goto].setdefault(node.id, set()).add("goto")
    preds = {n: {p: frozenset(k) for p, k in ps.items()} for n, ps in kinds.items()}
    order = _topological(spec, preds)
    succs = {n: tuple(s for s in order if n in preds[s]) for n in order}
    position = {n: i for i, n in enumerate(order)}
    return Graph(order=order, preds=preds, nodes=nodes, position=position, succs=succs)


def _topological(
    spec: WorkflowSpec, preds: dict[str, dict[str, frozenset[str]]]
) -> tuple[str, ...]:
    position = {n.id: i for i, n in enumerate(spec.nodes)}
    placed: list[str] = []
    done: set[str] = set()
    while len(placed) < len(position):
        ready = [n for n in position if n not in done and set(preds[n]) <= done]
        ready.sort(key=position.__getitem__)
        placed += ready
        done.update(ready)
    return tuple(placed)


def edge_state(pred: NodeState, kinds: frozenset[str], succ: str) -> Edge:
    """Whether the edge pred → succ carries control, given how pred ended."""
    if not pred.status.terminal:
        return Edge.OPEN
    if "goto" in kinds and pred.status is NodeStatus.FAILED and pred.goto_fired:
        return Edge.LIVE
    if pred.status is not NodeStatus.SUCCEEDED:
        return Edge.BLOCKED if pred.status is NodeStatus.FAILED and "dep" in kinds else Edge.DEAD
    if "branch" in kinds:
        return Edge.LIVE if succ in (pred.chosen or []) else Edge.DEAD
    return Edge.LIVE if "dep" in kinds else Edge.DEAD


def readiness(node: Node, states: dict[str, NodeState], graph: Graph) -> Readiness:
    """Whether a pending node can start, must be skipped, or waits (join all/any/n_of_m)."""
    preds = graph.preds[node.id]
    if not preds:
        return Readiness.READY
    edges = [edge_state(states[p], kinds, node.id) for p, kinds in preds.items()]
    live = edges.count(Edge.LIVE)
    open_ = edges.count(Edge.OPEN)
    if node.join == "any":
        return _threshold(live, open_, 1)
    if node.join == "n_of_m":
        return _threshold(live, open_, node.join_n or 1)
    if open_:
        return Readiness.WAIT
    return Readiness.READY if live and Edge.BLOCKED not in edges else Readiness.SKIP


def _threshold(live: int, open_: int, needed: int) -> Readiness:
    if live >= needed:
        return Readiness.READY
    return Readiness.WAIT if live + open_ >= needed else Readiness.SKIP
