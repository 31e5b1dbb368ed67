"""How the scheduler uses Python's garbage collector.

The scheduler keeps many long-lived objects: Faust's and aiokafka's, and a parsed state
(a tree of pydantic models) for every execution it caches. CPython's cyclic collector
scans all of them in each full pass. With the default thresholds (700, 10, 10) the bench
measured ~1 s of collection in 9 s of load, and full passes of 100-150 ms each: a tenth
of the CPU, and the worst latency outliers.

Objects here die by reference counting (states are trees, replaced whole on each
transition); the collector is only needed for the rare cycles (exceptions with
tracebacks, tasks). So:

- `configure` sets larger thresholds (`Settings.gc_thresholds`): the young generation is
  collected after 10,000 net allocations instead of 700, so the garbage of a transition
  dies before it is promoted, and full passes come far less often;
- `settle` runs one full collection and freezes what survives (`gc.freeze`) once the
  partitions are recovered: the startup objects and the recovered table stop being
  scanned. Frozen objects are still freed by reference counting when they die;
- each pass is timed into `cadenza_scheduler_gc_pause_seconds`, by generation.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from cadenza_scheduler.metrics import Metrics


def configure(thresholds: tuple[int, int, int], metrics: Metrics) -> None:
    """Set the collector's thresholds and time its passes into `metrics`."""
    gc.set_threshold(*thresholds)
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pause = time.perf_counter() - started[0]
            metrics.gc_pause.labels(str(info["generation"])).observe(pause)

    gc.callbacks.append(timed)


def settle() -> None:
    """Collect everything once, then keep what is alive out of later passes."""
    gc.collect()
    gc.freeze()
