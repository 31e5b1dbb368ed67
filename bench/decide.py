"""decide() throughput on a 20-node workflow: events applied per second on one core.

Each execution is ExecutionRequested + one StepSucceeded per service_call node, applied in
a valid order; the figure counts every decide() call (input event). A second row adds the
state's JSON round trip the Faust shell pays per event (`load_state` + `dump_state`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.report import percentile, report
from cadenza_common.events import Event, StepSucceeded
from cadenza_scheduler.domain import ExecutionState, decide, dump_state, load_state
from cadenza_scheduler.domain.simulate import ORG, T0, request

EXECUTIONS = 300
LAYERS, WIDTH = 4, 5


def workflow() -> dict[str, Any]:
    """20 service_call nodes: 4 layers of 5, each node joining the whole previous layer."""
    nodes = []
    for layer in range(LAYERS):
        for i in range(WIDTH):
            deps = [f"l{layer - 1}_{j}" for j in range(WIDTH)] if layer else []
            body = {"customer": "${trigger.customer}", "prev": "${step.l0_0.output.v}"}
            nodes.append(
                {
                    "id": f"l{layer}_{i}",
                    "type": "service_call",
                    "connection": "svc",
                    "method": "POST",
                    "path": f"/step/{layer}/{i}",
                    "depends_on": deps,
                    "body": body if layer else {"customer": "${trigger.customer}"},
                    "retry": {"max_attempts": 3},
                    "timeout": "30s",
                }
            )
    return {"slug": "bench", "nodes": nodes, "timeout": "1h"}


def events_for(n: int, doc: dict[str, Any]) -> list[Event]:
    xid = uuid.UUID(int=n + 1)
    events: list[Event] = [request(doc, {"customer": f"c{n}"}, execution_id=xid)]
    for node in doc["nodes"]:
        events.append(
            StepSucceeded(
                execution_id=xid,
                org_id=ORG,
                node_id=node["id"],
                attempt=1,
                output={"v": n},
                occurred_at=T0,
            )
        )
    return events


def run(batches: list[list[Event]], round_trip: bool) -> tuple[float, list[float]]:
    latencies: list[float] = []
    started = time.perf_counter()
    for events in batches:
        state: ExecutionState | None = None
        for event in events:
            t = time.perf_counter()
            if round_trip and state is not None:
                state = load_state(dump_state(state))
            state = decide(state, event, T0).state
            latencies.append(time.perf_counter() - t)
        assert state is not None
        assert state.finished
    return time.perf_counter() - started, latencies


def main() -> None:
    doc = workflow()
    batches = [events_for(n, doc) for n in range(EXECUTIONS)]
    run(batches[:20], round_trip=False)  # warm caches (compiled templates, graph)
    rows = []
    for label, round_trip in (("decide()", False), ("decide() + load_state/dump_state", True)):
        elapsed, latencies = run(batches, round_trip)
        count = len(latencies)
        rows.append(
            {
                "scenario": label,
                "executions": EXECUTIONS,
                "events": count,
                "seconds": elapsed,
                "events_per_s": count / elapsed,
                "p50_us": percentile(latencies, 50) * 1e6,
                "p99_us": percentile(latencies, 99) * 1e6,
            }
        )
    report(
        "decide",
        rows,
        notes="20-node workflow (4 layers x 5 service_calls, join all); "
        "one core, single thread; events = ExecutionRequested + 20 StepSucceeded each",
    )


if __name__ == "__main__":
    main()
