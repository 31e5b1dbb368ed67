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
- the passes run between batches (`Collector.between_batches`, called by the agent once a
  batch is flushed), not wherever the allocation count happens to cross the threshold.
  A pass scans every young object still alive, and in the middle of a batch that is the
  whole batch: its input records, the states being built, the records to send. Saturated,
  young passes took 7-9 ms each (~6 % of the scheduler's time, 10-28 ms at worst), because
  they scanned 18,000-25,000 live objects and freed none of them; between batches those
  objects are gone by reference counting. The collector's own trigger stays on as a
  backstop, at `backstop` times the young threshold, for allocations outside batches
  (recovery, a burst of timers);
- `settle` runs one full collection and freezes what survives (`gc.freeze`) once the
  partitions are recovered: the startup objects and the recovered table stop being
  scanned. Frozen objects are still freed by reference counting when they die;
- each pass is timed into `cadenza_scheduler_gc_pause_seconds`, by generation and by
  trigger (`between_batches`, or `other`: the backstop and recovery's full pass). Passes
  labelled `other` under load mean batches allocate more than the backstop allows.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from cadenza_scheduler.metrics import Metrics


class Collector:
    """Runs the collector's passes between batches, with CPython's own thresholds.

    `gc.get_count()` gives what the collector counts: net allocations since the last young
    pass, young passes since the last middle one, middle passes since the last full one.
    The generation collected is the oldest whose count exceeds its threshold, as in
    CPython's `collect_generations` (without its rule that defers a full pass until the
    objects promoted since the last one are a quarter of the old generation: Python does
    not expose those counts; full passes still come only every `t1 * t2` young ones).

    Inactive (`between_batches` does nothing) until `configure` hands it the collector:
    the process's collector is the entry point's to set, not every app's that a test makes.
    """

    def __init__(self, thresholds: tuple[int, int, int], backstop: int = 10) -> None:
        self.thresholds = thresholds
        self.backstop = backstop
        self.active = False
        self.collecting = False  # a pass of ours is running (the pause metric's `trigger`)

    def between_batches(self) -> int | None:
        """Collect the generation that is due, if any; return which one."""
        if not self.active:
            return None
        counts = gc.get_count()
        if counts[0] <= self.thresholds[0]:
            return None
        generation = next(g for g in (2, 1, 0) if g == 0 or counts[g] > self.thresholds[g])
        self.collecting = True
        try:
            gc.collect(generation)
        finally:
            self.collecting = False
        return generation


def configure(collector: Collector, metrics: Metrics) -> None:
    """Hand the process's collector to `collector` (its own trigger only as a backstop, at
    `backstop` times the young threshold) and time every pass into `metrics`."""
    young, middle, old = collector.thresholds
    gc.set_threshold(young * collector.backstop, middle, old)
    collector.active = True
    started = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pause = time.perf_counter() - started[0]
            trigger = "between_batches" if collector.collecting else "other"
            metrics.gc_pause.labels(str(info["generation"]), trigger).observe(pause)

    gc.callbacks.append(timed)


def settle() -> None:
    """Collect everything once, then keep what is alive out of later passes."""
    gc.collect()
    gc.freeze()
