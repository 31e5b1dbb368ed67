"""Scheduler throughput and latency: one scheduler process, a synthetic runner answering at once.

Each execution is a chain of service_call nodes. A transition is one StepSucceeded applied
by the scheduler (`emits_per_s` shows the events decide() emitted meanwhile, which the
scheduler's own `cadenza_scheduler_transitions_total` counts). Latency is from the runner
producing StepSucceeded for node n to the runner consuming the StepReady of node n+1 (both
clocks are this process).

Sustained figures, measured in steady state: a warm-up first (`CADENZA_BENCH_WARMUP_S`,
10 s, `CADENZA_BENCH_EXECUTIONS` in flight: topic metadata, connections, the workflow's
validated spec, the broker's JIT), then two timed phases of
`CADENZA_BENCH_SECONDS` (20) each. Saturation keeps `CADENZA_BENCH_EXECUTIONS` (600)
executions in flight, starting a new one as each finishes; the paced phase starts
executions at half the saturated rate, open loop. `CADENZA_BENCH_PACED_RATE` (in
transitions/s, e.g. 1000: half the target) runs only the paced phase, at that rate. Each
phase counts transitions and latencies only after its first `WINDOW_START_S` seconds (the
ramp), and then waits for its executions to finish before the next phase starts.
`CADENZA_BENCH_LATENCIES=PREFIX` also writes each phase's timed transitions to
`PREFIX.saturation.json` and `PREFIX.paced.json`: `[seconds into the window, latency ms,
of which until the scheduler produced ms]`, to see whether a tail is spread or clustered,
and `PREFIX.<phase>.start`: the window's start on the monotonic clock (`time.perf_counter`).

Needs a Kafka broker: `CADENZA_BENCH_KAFKA` (or `CADENZA_TEST_KAFKA`), default 127.0.0.1:9092.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer
from prometheus_client.parser import text_string_to_metric_families

from bench import decide as decide_bench
from bench.kafka_floor import librdkafka_consumer, librdkafka_producer
from bench.report import percentile, report
from cadenza_common import events as ev
from cadenza_common.kafka import (
    KafkaMessage,
    decode,
    delete_prefixed_topics,
    encode,
    ensure_topics,
    header,
)
from cadenza_common.settings import KafkaSettings
from cadenza_scheduler import heap
from cadenza_scheduler.settings import Settings as SchedulerSettings

CHAIN = 10
WINDOW_START_S = 3.0
SCHEDULER_LOG = "scheduler.log"
ORG = uuid.UUID("0190f0f0-0000-7000-8000-0000000000aa")


def _workflow() -> dict[str, Any]:
    nodes = [
        {
            "id": f"n{i}",
            "type": "service_call",
            "connection": "svc",
            "path": f"/n{i}",
            "depends_on": [f"n{i - 1}"] if i else [],
        }
        for i in range(CHAIN)
    ]
    return {"slug": "bench", "nodes": nodes}


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_speed(executions: int = 40) -> float:
    """Microseconds a decide() call with the state's JSON round trip takes in this process
    now (`bench decide`'s workflow): how quick the machine is as a phase starts. Its speed
    drifts by half within minutes, and latencies with it; this column tells runs apart."""
    doc = decide_bench.workflow()
    batches = [decide_bench.events_for(n, doc) for n in range(executions)]
    decide_bench.run(batches[:5], round_trip=True)  # warm: compiled templates, the graph
    elapsed, latencies = decide_bench.run(batches, round_trip=True)
    return elapsed / len(latencies) * 1e6


def harness_cpu() -> float:
    """CPU seconds this process (the harness) used so far, every thread."""
    times = os.times()
    return times.user + times.system


def machine_cpu() -> tuple[float, float]:
    """Busy and idle seconds of all the machine's cores so far (`/proc/stat`; 0 off Linux)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    busy = sum(ticks[:8]) - idle  # user nice system idle iowait irq softirq steal
    tick = os.sysconf("SC_CLK_TCK")
    return busy / tick, idle / tick


class Bench:
    def __init__(
        self,
        kafka: KafkaSettings,
        log: Path | None = None,
        scheduler_pid: int | None = None,
        metrics_url: str | None = None,
    ) -> None:
        self.kafka = kafka
        self.log = log
        self.scheduler_pid = scheduler_pid
        self.metrics_url = metrics_url
        self.topics = ev.Topics(kafka.topic_prefix)
        # (execution, node index) -> when its StepSucceeded was produced (perf_counter, wall)
        self.sent_at: dict[tuple[uuid.UUID, int], tuple[float, float]] = {}
        # (when the StepReady came, latency, of which until the scheduler produced it)
        self.latencies: list[tuple[float, float, float]] = []
        self.transitions: list[float] = []  # when each StepSucceeded was recorded
        self.finished: set[uuid.UUID] = set()
        self.failed: list[str] = []  # delivery errors of the harness's producer
        self.producer = Producer(
            {
                **librdkafka_producer(kafka),
                "delivery.report.only.error": True,
                "on_delivery": self._delivered,
            }
        )

    def serve(self, stop: threading.Event) -> None:
        """The synthetic runner and the history reader, until `stop` is set (a thread).

        One librdkafka consumer reads `steps.ready` and `executions.events`: each StepReady
        is answered at once with its StepSucceeded on `executions.commands`; the history
        counts the transitions and the executions that succeeded. librdkafka fetches and
        produces in threads of its own, in C: the harness shares the machine's two cores
        with the scheduler and the broker, and an aiokafka harness (sessions 1-16) used
        ~480 us of CPU a transition, half a core at 1,000/s, to the scheduler's ~800.
        """
        group = f"bench-harness-{uuid.uuid4().hex[:8]}"
        cons = Consumer(librdkafka_consumer(self.kafka, group))
        cons.subscribe([self.topics.steps_ready, self.topics.executions_events])
        ready_topic, commands = self.topics.steps_ready, self.topics.executions_commands
        try:
            while not stop.is_set():
                self.producer.poll(0)  # delivery reports (errors only)
                first = cons.poll(0.05)  # returns as soon as one record is there
                if first is None:
                    continue
                records = [first, *cons.consume(1999, 0)]  # and whatever else is fetched
                now = time.perf_counter()
                wall = time.time()
                answered = []
                for record in records:
                    if (error := record.error()) is not None:
                        raise RuntimeError(f"the harness consumer failed: {error}")
                    if record.topic() != ready_topic:
                        self._history(record)
                        continue
                    ready = decode(record.value(), record.headers())
                    assert isinstance(ready, ev.StepReady)
                    index = int(ready.node_id[1:])
                    previous = self.sent_at.pop((ready.execution_id, index - 1), None)
                    if previous is not None:
                        # the record's timestamp: when the scheduler produced it (ms)
                        produced = min(record.timestamp()[1] / 1000, wall)
                        inside = max(0.0, produced - previous[1])
                        self.latencies.append((now, now - previous[0], inside))
                    out = ev.StepSucceeded(
                        execution_id=ready.execution_id,
                        org_id=ready.org_id,
                        node_id=ready.node_id,
                        attempt=ready.attempt,
                    )
                    self._produce(commands, encode(out, source="/bench"))
                    answered.append((ready.execution_id, index))
                # librdkafka's own thread sends them now (linger 0)
                sent = time.perf_counter(), time.time()
                for answer in answered:
                    self.sent_at[answer] = sent
        finally:
            cons.close()

    def _history(self, record: Any) -> None:
        ce_type = header(record.headers(), "ce_type")
        if ce_type == ev.StepSucceeded.CE_TYPE:
            self.transitions.append(time.perf_counter())
        elif ce_type == ev.ExecutionSucceeded.CE_TYPE:
            self.finished.add(uuid.UUID(record.key().decode()))

    def _produce(self, topic: str, msg: KafkaMessage) -> None:
        self.producer.produce(topic, msg.value, msg.key, headers=list(msg.headers))

    def _delivered(self, error: Any, _msg: Any) -> None:
        if error is not None:
            self.failed.append(str(error))

    def start(self) -> uuid.UUID:
        """Request one execution of the chain."""
        event = ev.ExecutionRequested(
            execution_id=uuid.uuid4(),
            org_id=ORG,
            workflow_id=ORG,
            workflow_version=1,
            workflow=_workflow(),
        )
        self._produce(self.topics.executions_commands, encode(event, source="/bench"))
        return event.execution_id

    def start_more(self, count: int, ids: list[uuid.UUID], running: set[uuid.UUID]) -> None:
        """Start `count` executions (none when not positive), noted in `ids` and `running`."""
        for _ in range(max(0, count)):
            ids.append(self.start())
            running.add(ids[-1])

    async def warm_up(self, in_flight: int, seconds: float) -> None:
        """Executions to the end, not measured, `in_flight` at a time for `seconds`: topic
        metadata, connections, caches, and the broker's JIT compiler. A broker started
        just before spends its first ~10 s under load compiling (~0.6 of a core more,
        session 22): a first run with a short warm-up had p99 43 ms, 9 ms the next."""
        end = time.perf_counter() + seconds
        ids: list[uuid.UUID] = []
        running: set[uuid.UUID] = set()
        while time.perf_counter() < end or not ids:
            running = {i for i in running if i not in self.finished}
            self.start_more(in_flight - len(running), ids, running)
            await asyncio.sleep(0.01)
        await self.drain(ids, time.perf_counter() + 120)

    async def drain(self, ids: list[uuid.UUID], deadline: float) -> None:
        while not self.finished.issuperset(ids) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)

    async def phase(self, in_flight: int, rate: float | None, seconds: float) -> dict[str, Any]:
        """Run for `seconds`: `in_flight` executions at all times (rate None), or `rate`
        new executions a second; then wait for the started ones to finish."""
        errors_before = self.scheduler_errors()
        machine_us = machine_speed()
        start = time.perf_counter()
        end = start + seconds
        ids: list[uuid.UUID] = []
        running: set[uuid.UUID] = set()
        cpu_at_window: tuple[float, float] | None = None
        harness_at_window, machine_at_window = 0.0, (0.0, 0.0)
        switches_at_window = (0, 0)
        batches_at_window: dict[str, float] = {}
        while (now := time.perf_counter()) < end:
            if cpu_at_window is None and now >= start + WINDOW_START_S:
                cpu_at_window = self.scheduler_cpu()
                harness_at_window, machine_at_window = harness_cpu(), machine_cpu()
                switches_at_window = self.scheduler_switches()
                batches_at_window = await asyncio.to_thread(self.scheduler_batches)
            running = {i for i in running if i not in self.finished}
            if rate is None:
                wanted = in_flight - len(running)
            else:
                wanted = int((now - start) * rate) + 1 - len(ids)
            self.start_more(wanted, ids, running)
            await asyncio.sleep(0.005)
        cpu_at_end = self.scheduler_cpu()
        harness_s = harness_cpu() - harness_at_window
        machine_busy, machine_idle = (
            at_end - at for at_end, at in zip(machine_cpu(), machine_at_window, strict=True)
        )
        switches = [
            end - at for end, at in zip(self.scheduler_switches(), switches_at_window, strict=True)
        ]
        batches = await asyncio.to_thread(self.scheduler_batches)
        batches = {k: v - batches_at_window.get(k, 0.0) for k, v in batches.items()}
        await self.drain(ids, time.perf_counter() + 300)
        window = (start + WINDOW_START_S, end)
        transitions = sum(window[0] <= t < window[1] for t in self.transitions)
        timed = [row for row in self.latencies if window[0] <= row[0] < window[1]]
        latencies = [lat for _, lat, _ in timed]
        insides = [inside for _, _, inside in timed]
        if dump := os.environ.get("CADENZA_BENCH_LATENCIES"):
            # every timed transition: seconds into the window, latency, of which inside (ms)
            rows = [
                (round(t - window[0], 4), round(lat * 1000, 2), round(inside * 1000, 1))
                for t, lat, inside in timed
            ]
            name = "saturation" if rate is None else "paced"
            Path(f"{dump}.{name}.json").write_bytes(orjson.dumps(rows))
            # where the window began on the system's monotonic clock (time.perf_counter), to
            # line the latencies up with other samples (CPU, the broker's GC log)
            Path(f"{dump}.{name}.start").write_text(f"{window[0]}\n")
        self.transitions.clear()
        self.latencies.clear()
        main_s = all_s = 0.0
        if cpu_at_window is not None:
            main_s = cpu_at_end[0] - cpu_at_window[0]
            all_s = cpu_at_end[1] - cpu_at_window[1]
        per = 1e6 / max(1, transitions)
        taken = max(1.0, batches.get("batches", 0.0))
        return {
            "phase": "saturation" if rate is None else f"paced {rate * CHAIN:,.0f}/s",
            "in_flight": in_flight if rate is None else "",
            "executions": len(ids),
            "finished": len(self.finished.intersection(ids)),
            "window_s": round(window[1] - window[0], 1),
            "transitions": transitions,
            "transitions_per_s": round(transitions / (window[1] - window[0]), 1),
            # what the scheduler's `cadenza_scheduler_transitions_total` counts: events
            # decide() emitted (a StepSucceeded applied emits ~3: history and StepReady)
            "emits_per_s": round(batches.get("emits", 0.0) / (window[1] - window[0])),
            "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            # of which until the scheduler produced the StepReady (record timestamps, 1 ms
            # resolution): the inbound hop and the scheduler; the rest is the hop back
            "sched_p50_ms": round(percentile(insides, 50) * 1000, 1),
            "sched_p99_ms": round(percentile(insides, 99) * 1000, 1),
            # the scheduler's CPU per transition: its main thread (the event loop, with
            # Faust's consumer on it) and the whole process (its other threads too)
            "cpu_main_us": round(main_s * per),
            "cpu_all_us": round(all_s * per),
            # this process's CPU (the synthetic runner, the history reader, the starts) per
            # transition, and the share of the machine's cores busy: the scheduler shares
            # them with the harness and the broker
            "harness_cpu_us": round(harness_s * per),
            "machine_busy": round(machine_busy / max(1e-9, machine_busy + machine_idle), 2),
            # how often its main thread blocked (its event loop had nothing to run) and was
            # preempted, a second: a loop that never blocks is busy, whatever the load
            "loop_waits_per_s": round(switches[0] / (window[1] - window[0])),
            "preempted_per_s": round(switches[1] / (window[1] - window[0])),
            # the scheduler's batches (its /metrics): records per batch, the mean time a batch
            # spent applying, until its states were persisted and its emits sent (both counted
            # from the end of apply: they go together), and the share of the window it was busy
            "batch_records": round(batches.get("records", 0.0) / taken, 1),
            "apply_ms": round(batches.get("apply", 0.0) / taken * 1000, 2),
            "persist_ms": round(batches.get("persist", 0.0) / taken * 1000, 2),
            "send_ms": round(batches.get("send", 0.0) / taken * 1000, 2),
            "agent_busy": round(
                sum(batches.get(k, 0.0) for k in ("apply", "flush")) / (window[1] - window[0]),
                2,
            ),
            # its produce requests a second (state writes and emits together) and their mean
            # round trip: the broker's share of a batch's flush
            "produce_per_s": round(batches.get("produces", 0.0) / (window[1] - window[0])),
            "produce_ms": round(
                batches.get("produce", 0.0) / max(1.0, batches.get("produces", 0.0)) * 1000, 2
            ),
            # the garbage collector's passes a second and the share of the window they took
            # (all generations): a profiler charges them to whatever allocated at the time
            "gc_passes_per_s": round(batches.get("gc_passes", 0.0) / (window[1] - window[0]), 1),
            "gc_busy": round(batches.get("gc", 0.0) / (window[1] - window[0]), 3),
            # a failed flush is retried after a back-off: it shows as latency, so count them
            "scheduler_errors": self.scheduler_errors() - errors_before,
            "machine_us": round(machine_us),
        }

    def scheduler_cpu(self) -> tuple[float, float]:
        """CPU seconds of the scheduler's main thread and of the whole process (0 off Linux)."""
        pid = self.scheduler_pid
        if pid is None:
            return 0.0, 0.0
        tick = os.sysconf("SC_CLK_TCK")

        def used(stat: str) -> float:
            try:
                fields = Path(stat).read_text().rpartition(")")[2].split()
            except OSError:
                return 0.0
            return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

        return used(f"/proc/{pid}/task/{pid}/stat"), used(f"/proc/{pid}/stat")

    def scheduler_switches(self) -> tuple[int, int]:
        """Voluntary and involuntary context switches of the scheduler's main thread so far
        (0 off Linux)."""
        pid = self.scheduler_pid
        counts = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
        if pid is None:
            return 0, 0
        try:
            lines = Path(f"/proc/{pid}/task/{pid}/status").read_text().splitlines()
        except OSError:
            return 0, 0
        for line in lines:
            name, _, value = line.partition(":")
            if name in counts:
                counts[name] = int(value)
        return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]

    def scheduler_batches(self) -> dict[str, float]:
        """Totals of the scheduler's metrics so far: batches, records, seconds spent in each
        phase, emits, the collector's passes and their seconds (empty when its /metrics
        cannot be read)."""
        if self.metrics_url is None:
            return {}
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "cadenza_scheduler_batch_seconds_sum":
                    totals[sample.labels["phase"]] = sample.value
                elif key := _SUMMED.get(sample.name):
                    totals[key] = totals.get(key, 0.0) + sample.value  # over every label
        return totals

    def scheduler_errors(self) -> int:
        """ERROR lines in the scheduler's log so far."""
        if self.log is None or not self.log.exists():
            return 0
        with self.log.open("rb") as lines:
            return sum(b"ERROR" in line for line in lines)


# the scheduler's metrics summed into `Bench.scheduler_batches`' totals (by total's name)
_SUMMED = {
    "cadenza_scheduler_batch_records_count": "batches",
    "cadenza_scheduler_batch_records_sum": "records",
    "cadenza_scheduler_transitions_total": "emits",
    "cadenza_scheduler_gc_pause_seconds_sum": "gc",
    "cadenza_scheduler_gc_pause_seconds_count": "gc_passes",
    "cadenza_scheduler_produce_seconds_sum": "produce",
    "cadenza_scheduler_produce_seconds_count": "produces",
}


def _start_scheduler(kafka: KafkaSettings, workdir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "CADENZA_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "CADENZA_SCHEDULER_APP_ID": f"{kafka.topic_prefix}scheduler",
        "CADENZA_SCHEDULER_WEB_PORT": str(port),
        "CADENZA_SCHEDULER_DATA_DIR": str(workdir / "data"),
        "CADENZA_SCHEDULER_LOG_LEVEL": "warning",
    }
    log = (workdir / SCHEDULER_LOG).open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cadenza_scheduler"], env=env, cwd=workdir, stdout=log, stderr=log
    )


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=2) as r:
            return int(r.status) == 200
    except Exception:
        return False


Start = Callable[[KafkaSettings, Path, int], subprocess.Popen[bytes]]


async def run(
    executions: int,
    seconds: float,
    paced_rate: float | None = None,
    start: Start | None = None,
    warm_up_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Both phases; with `paced_rate` (transitions/s) only the paced one, at that rate.

    `start(kafka, workdir, port)` starts the process under test (the scheduler); it is
    ready once `http://127.0.0.1:{port}/health/ready` answers 200, and serves its
    Prometheus metrics on `/metrics`.
    """
    bootstrap = os.environ.get("CADENZA_BENCH_KAFKA") or os.environ.get(
        "CADENZA_TEST_KAFKA", "127.0.0.1:9092"
    )
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka)
    port = _port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = (start or _start_scheduler)(kafka, Path(tmp), port)
        try:
            for _ in range(300):
                if await asyncio.to_thread(_ready, port):
                    break
                await asyncio.sleep(0.3)
            bench = Bench(
                kafka, Path(tmp) / SCHEDULER_LOG, proc.pid, f"http://127.0.0.1:{port}/metrics"
            )
            # the runner's own collector pauses would count as scheduler latency: same
            # settings as the scheduler's (cadenza_scheduler.heap)
            gc.set_threshold(*SchedulerSettings.model_fields["gc_thresholds"].default)
            heap.settle()
            stop = threading.Event()
            serving = asyncio.create_task(asyncio.to_thread(bench.serve, stop))
            try:
                await bench.warm_up(executions, warm_up_s)
                rows = []
                if paced_rate is None:
                    rows.append(await bench.phase(executions, None, seconds))
                    paced_rate = rows[0]["transitions_per_s"] / 2
                rows.append(await bench.phase(executions, paced_rate / CHAIN, seconds))
            finally:
                stop.set()
                await serving  # a harness failure fails the bench: it is not a figure
                bench.producer.flush(30)
            if bench.failed:
                raise RuntimeError(f"the harness could not send: {bench.failed[0]}")
            return rows
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            await delete_prefixed_topics(kafka)


def main() -> None:
    executions = int(os.environ.get("CADENZA_BENCH_EXECUTIONS", "600"))
    seconds = float(os.environ.get("CADENZA_BENCH_SECONDS", "20"))
    paced = os.environ.get("CADENZA_BENCH_PACED_RATE")
    warm_up_s = float(os.environ.get("CADENZA_BENCH_WARMUP_S", "10"))
    rows = asyncio.run(
        run(executions, seconds, float(paced) if paced else None, warm_up_s=warm_up_s)
    )
    report(
        "scheduler",
        rows,
        notes=(
            f"one scheduler process (memory store), chains of {CHAIN} service_call nodes, "
            "synthetic runner answering at once; latency = StepSucceeded produced -> next "
            f"StepReady consumed; figures from {WINDOW_START_S:.0f} s into each phase to its end"
        ),
    )
