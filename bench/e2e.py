"""`python -m bench e2e`: the whole system on this machine, 1, 2 and 4 scheduler/runner processes.

Workload: a 3-step service_call workflow (KTP verify → AML screen → CRM upsert) against the
demo service in instant mode. For each topology the five services and the demo run as real
processes (`cadenza_devstack.supervisor`) on a fresh database and topic prefix of the local
stack; an open-loop generator sends `POST /api/workflows/bench-e2e/execute` at a fixed rate
over keep-alive connections for `BENCH_E2E_SECONDS`.

Per topology, after a warm-up (60 executions at 20/s) and 10 s without load (the idle row:
what the processes cost doing nothing), two phases:
- saturation: `BENCH_E2E_BURST` executions (default 600) offered at `BENCH_E2E_RATE`
  (default 200/s, the target); executions/s = executions that reached `succeeded` in the
  read model divided by the time from the first request to the last success;
- paced: `BENCH_E2E_PACE` (default 80%) of that throughput for `BENCH_E2E_SECONDS` (20 s),
  where the latencies mean something.
Each row reports:
- end-to-end latency p50/p99: scheduled send time of the execute request → `succeeded` seen
  in the read model (`execution_runs`, polled every 20 ms);
- step scheduling latency p50/p99: Kafka timestamp of a StepSucceeded on `executions.commands` →
  Kafka timestamp of the next node's StepReady on `steps.ready` (producers' clocks, one host);
- CPU (% of one core over the phase) and peak RSS (MB) per service, Kafka and Postgres.

`BENCH_E2E_TOPOLOGIES` (default `1,2,4`) sets the scheduler/runner process counts;
`BENCH_E2E_PROFILE=1` records py-spy profiles (collapsed stacks, `bench/results/
e2e-profile-<service>.txt`) of the first topology's saturation phase when `py-spy` is on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil  # type: ignore[import-untyped]

from bench.report import RESULTS, percentile, report
from cadenza_common import events as ev
from cadenza_common.kafka import consumer, decode, delete_prefixed_topics, ensure_topics
from cadenza_common.settings import DatabaseSettings, KafkaSettings
from cadenza_devstack.databases import create_database, database_name, drop_database
from cadenza_devstack.demo_setup import auth, create_org, expect
from cadenza_devstack.stack import Stack, StackInfo
from cadenza_devstack.supervisor import (
    Child,
    ServiceFailed,
    ServiceSpec,
    Topology,
    isolated_env,
    running,
    service_port,
    service_specs,
    wait_ready,
)

RATE = float(os.environ.get("BENCH_E2E_RATE", "200"))
SECONDS = float(os.environ.get("BENCH_E2E_SECONDS", "20"))
BURST = int(os.environ.get("BENCH_E2E_BURST", "600"))
PACE = float(os.environ.get("BENCH_E2E_PACE", "0.8"))
TOPOLOGIES = [int(n) for n in os.environ.get("BENCH_E2E_TOPOLOGIES", "1,2,4").split(",")]
PROFILE = os.environ.get("BENCH_E2E_PROFILE") == "1"
CONNECTIONS = 32
POLL_S = 0.02
IDLE_S = 10.0
DRAIN_S = float(os.environ.get("BENCH_E2E_DRAIN_S", "120"))
NODES = ("verify", "screen", "upsert")
SPEC: dict[str, Any] = {
    "slug": "bench-e2e",
    "name": "bench e2e",
    "inputs": {"type": "object", "required": ["customer_id", "nik", "name"]},
    "nodes": [
        {"id": "verify", "type": "service_call", "connection": "demo", "method": "POST",
         "path": "/v1/ktp/verify", "body": {"nik": "${trigger.nik}", "name": "${trigger.name}"}},
        {"id": "screen", "type": "service_call", "connection": "demo", "method": "POST",
         "depends_on": ["verify"], "path": "/v2/screen",
         "body": {"name": "${trigger.name}", "nik": "${trigger.nik}"}},
        {"id": "upsert", "type": "service_call", "connection": "demo", "method": "PUT",
         "depends_on": ["screen"], "path": "/v1/customers/${trigger.customer_id}",
         "body": {"name": "${trigger.name}",
                  "screening": "${step.screen.output.result}"}},
    ],
}


@dataclass
class Samples:
    """What one topology's run observed."""

    sent: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    completed_ts: dict[tuple[str, str], int] = field(default_factory=dict)
    ready_ts: dict[tuple[str, str], int] = field(default_factory=dict)

    def step_latencies(self) -> list[float]:
        out = []
        for (xid, node), done_ms in self.completed_ts.items():
            if xid not in self.sent:  # the probe reads earlier phases' records too
                continue
            index = NODES.index(node)
            if index + 1 < len(NODES):
                ready = self.ready_ts.get((xid, NODES[index + 1]))
                if ready is not None:
                    out.append((ready - done_ms) / 1000)
        return out


# --- load -------------------------------------------------------------------------------------


def _request(port: int, key: str, n: int) -> bytes:
    body = orjson.dumps({"input": {"customer_id": f"c{n}", "nik": f"31712345678{n % 7:05d}",
                                   "name": "Siti Rahma"}})
    head = (f"POST /api/workflows/bench-e2e/execute HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    data: bytes) -> tuple[int, bytes]:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return int(head[9:12]), await reader.readexactly(length)


async def _sender(port: int, key: str, queue: asyncio.Queue[tuple[int, float] | None],
                  samples: Samples) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (item := await queue.get()) is not None:
            n, scheduled = item
            status, body = await _exchange(reader, writer, _request(port, key, n))
            samples.statuses[status] += 1
            if status == 202:
                samples.sent[orjson.loads(body)["executionId"]] = scheduled
    finally:
        writer.close()


async def offer(port: int, key: str, rate: float, seconds: float, samples: Samples) -> None:
    """Open loop: request n is due at start + n/rate whatever the answers' latency."""
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    senders = [asyncio.create_task(_sender(port, key, queue, samples))
               for _ in range(CONNECTIONS)]
    start = time.perf_counter()
    for n in range(int(rate * seconds)):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((n, due))
    for _ in senders:
        queue.put_nowait(None)
    await asyncio.gather(*senders)


# --- observation ------------------------------------------------------------------------------


async def watch_read_model(dsn: str, samples: Samples, stop: asyncio.Event) -> None:
    """Note when each sent execution shows `succeeded` in execution_runs."""
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            pending = [x for x in samples.sent if x not in samples.done]
            if pending:
                rows = await conn.fetch(
                    "SELECT id::text FROM execution_runs WHERE id = ANY($1::uuid[]) "
                    "AND status = 'succeeded'", pending)
                now = time.perf_counter()
                for row in rows:
                    samples.done[row["id"]] = now
            await asyncio.sleep(POLL_S)
    finally:
        await conn.close()


async def watch_steps(kafka: KafkaSettings, samples: Samples, stop: asyncio.Event) -> None:
    """Kafka timestamps of StepSucceeded (executions.commands) and StepReady (steps.ready)."""
    prefix = kafka.topic_prefix
    topics = [f"{prefix}executions.commands", f"{prefix}steps.ready"]
    async with consumer(kafka, topics, f"{prefix}bench-probe") as cons:
        while not stop.is_set():
            batch = await cons.getmany(timeout_ms=100, max_records=5000)
            for tp, records in batch.items():
                target = samples.ready_ts if tp.topic.endswith("ready") else samples.completed_ts
                for record in records:
                    event = decode(record.value, record.headers)
                    if isinstance(event, ev.StepSucceeded | ev.StepReady):
                        key = (str(event.execution_id), event.node_id)
                        target.setdefault(key, record.timestamp)


class Usage:
    """CPU seconds and peak RSS per named process tree, sampled every 0.5 s."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.cpu0 = {name: self._cpu(p) for name, p in self.procs.items()}
        self.peak: dict[str, float] = dict.fromkeys(self.procs, 0.0)
        self.started = time.perf_counter()

    @staticmethod
    def _tree(proc: psutil.Process) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [proc, *proc.children(recursive=True)]
        return []

    def _cpu(self, proc: psutil.Process) -> float:
        total = 0.0
        for p in self._tree(proc):
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def sample(self) -> None:
        for name, proc in self.procs.items():
            rss = 0
            for p in self._tree(proc):
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            self.peak[name] = max(self.peak[name], rss / 2**20)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.sample()
            await asyncio.sleep(0.5)

    def summary(self) -> dict[str, tuple[float, float]]:
        wall = time.perf_counter() - self.started
        return {name: ((self._cpu(p) - self.cpu0[name]) / wall * 100, self.peak[name])
                for name, p in self.procs.items()}


def infrastructure_pids(stack: Stack) -> dict[str, int]:
    """Kafka's and Postgres's main processes, when this is the local stack."""
    pids: dict[str, int] = {}
    if stack.state.kafka_pid and psutil.pid_exists(stack.state.kafka_pid):
        pids["kafka"] = stack.state.kafka_pid
    pidfile = Path(stack.state.postgres_data_dir or "/nonexistent") / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError):
        pids["postgres"] = int(pidfile.read_text().split()[0])
    return pids


# --- one topology -----------------------------------------------------------------------------


async def _setup(api_url: str, demo_url: str, env: dict[str, str]) -> str:
    key = await create_org(env, "bench", per_minute=100_000_000)
    async with httpx.AsyncClient(base_url=api_url, headers=auth(key), timeout=30) as api:
        expect(await api.post("/api/service-connections", json={
            "name": "demo", "baseUrl": demo_url, "allowPrivateNetwork": True}), 201)
        expect(await api.post("/api/workflows", json={
            "slug": SPEC["slug"], "name": SPEC["name"], "spec": SPEC}), 201)
        expect(await api.post(f"/api/workflows/{SPEC['slug']}/publish"), 201)
    return key


def _specs(n: int, api_port: int, demo_port: int, workdir: Path,
           prefix: str) -> list[ServiceSpec]:
    demo = ServiceSpec("demo", "cadenza_demo", ("--port", str(demo_port), "--instant"),
                       ready_url=f"http://127.0.0.1:{demo_port}/healthz")
    topology = Topology(schedulers=n, runners=n, env={
        **isolated_env(prefix), "CADENZA_WEBHOOK_ENABLED": "false"})
    return [demo, *service_specs(topology, api_port, workdir)]


def _profile(children: list[Child], workdir: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    spy = shutil.which("py-spy")
    if not (PROFILE and spy):
        return []
    procs = []
    for child in children:
        if child.name in ("scheduler", "step-runner", "trigger-api", "audit-sink"):
            out = RESULTS / f"e2e-profile-{child.name}.txt"
            procs.append(subprocess.Popen(
                [spy, "record", "--pid", str(child.process.pid), "--duration",
                 str(int(seconds)), "--format", "raw", "--rate", "50", "--nonblocking",
                 "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


async def one(n: int, stack: Stack, base: StackInfo) -> list[dict[str, Any]]:
    """Bring up `n` schedulers and runners on fresh data, warm up, load, measure."""
    db_url = await create_database(base.database_url, "bench_e2e")
    name = database_name(db_url)
    kafka = KafkaSettings(bootstrap_servers=base.bootstrap_servers, topic_prefix=f"{name}.")
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    await ensure_topics(kafka)
    taken: set[int] = set()
    api_port, demo_port = service_port(taken), service_port(taken)
    info = StackInfo(base.bootstrap_servers, db_url)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            logs = stack.dir / "bench-e2e" / name
            print(f"e2e: service logs in {logs}", file=sys.stderr, flush=True)
            specs = _specs(n, api_port, demo_port, workdir, kafka.topic_prefix)
            async with running(info, specs, log_dir=logs) as children:
                await wait_ready(children, 180)
                env = {**info.env(), **isolated_env(kafka.topic_prefix)}
                key = await _setup(f"http://127.0.0.1:{api_port}",
                                   f"http://127.0.0.1:{demo_port}", env)
                return await _measure(n, children, key, api_port, kafka, dsn, stack, workdir)
    finally:
        await drop_database(db_url)
        await delete_prefixed_topics(kafka)


async def _measure(n: int, children: list[Child], key: str, api_port: int,
                   kafka: KafkaSettings, dsn: str, stack: Stack, workdir: Path
                   ) -> list[dict[str, Any]]:
    await _phase(children, key, api_port, kafka, dsn, stack, 20, 3)  # warm-up
    idle = Usage({c.name: c.process.pid for c in children} | infrastructure_pids(stack))
    await asyncio.sleep(IDLE_S)
    idle.sample()
    spies = _profile(children, workdir, 30) if n == TOPOLOGIES[0] else []
    burst, usage = await _phase(children, key, api_port, kafka, dsn, stack, RATE, BURST / RATE)
    for spy in spies:
        spy.wait(timeout=120)
    capacity = burst.executions_per_s
    paced, paced_usage = await _phase(children, key, api_port, kafka, dsn, stack,
                                      max(1.0, round(PACE * capacity, 1)), SECONDS)
    return [_row(n, f"idle {IDLE_S:.0f} s", Phase(Samples(), 0.0, 0.0), idle.summary()),
            _row(n, f"saturation ({RATE:.0f}/s offered)", burst, usage),
            _row(n, f"paced at {PACE:.0%} of it", paced, paced_usage)]


@dataclass
class Phase:
    """One phase's samples and when it started."""

    samples: Samples
    started: float
    rate: float

    @property
    def executions_per_s(self) -> float:
        if not self.samples.done:
            return 0.0
        last = max(self.samples.done.values(), default=self.started)
        return len(self.samples.done) / max(last - self.started, 1e-9)


async def _phase(children: list[Child], key: str, api_port: int, kafka: KafkaSettings,
                 dsn: str, stack: Stack, rate: float, seconds: float
                 ) -> tuple[Phase, dict[str, tuple[float, float]]]:
    samples, stop = Samples(), asyncio.Event()
    usage = Usage({c.name: c.process.pid for c in children} | infrastructure_pids(stack))
    watchers = [asyncio.create_task(watch_read_model(dsn, samples, stop)),
                asyncio.create_task(watch_steps(kafka, samples, stop)),
                asyncio.create_task(usage.run(stop))]
    phase = Phase(samples, time.perf_counter(), rate)
    await offer(api_port, key, rate, seconds, samples)
    await _until_done(samples, DRAIN_S)
    cpu = usage.summary()
    await asyncio.sleep(1.0)  # let the step probe catch up
    stop.set()
    await asyncio.gather(*watchers)
    return phase, cpu


async def _until_done(samples: Samples, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while len(samples.done) < len(samples.sent) and time.perf_counter() < deadline:
        await asyncio.sleep(0.1)


def _row(n: int, name: str, phase: Phase, cpu: dict[str, tuple[float, float]]
         ) -> dict[str, Any]:
    s = phase.samples
    e2e = [s.done[x] - s.sent[x] for x in s.done]
    steps = s.step_latencies()
    row: dict[str, Any] = {
        "procs": n,
        "phase": name,
        "offered_per_s": phase.rate,
        "sent": len(s.sent),
        "errors": sum(v for k, v in s.statuses.items() if k != 202),
        "succeeded": len(s.done),
        "executions_per_s": round(phase.executions_per_s, 1),
        "e2e_p50_ms": round(percentile(e2e, 50) * 1000, 1),
        "e2e_p99_ms": round(percentile(e2e, 99) * 1000, 1),
        "step_p50_ms": round(percentile(steps, 50) * 1000, 1),
        "step_p99_ms": round(percentile(steps, 99) * 1000, 1),
    }
    for name_, (percent, peak) in sorted(cpu.items()):
        row[f"cpu%:{name_}"] = round(percent, 1)
        row[f"rss_mb:{name_}"] = round(peak, 1)
    return row


def main() -> None:
    """Run every topology and report them as `e2e`."""
    bootstrap = os.environ["CADENZA_TEST_KAFKA"]
    database = DatabaseSettings(url=os.environ["CADENZA_TEST_DATABASE_URL"]).url
    stack = Stack()
    rows = []
    for n in TOPOLOGIES:
        print(f"e2e: {n} scheduler(s) and runner(s), {RATE:.0f}/s for {SECONDS:.0f} s ...",
              file=sys.stderr, flush=True)
        for attempt in (1, 2):  # a service dying at start (a port race) gets one retry
            try:
                rows += asyncio.run(one(n, stack, StackInfo(bootstrap, database)))
                break
            except ServiceFailed as exc:
                print(f"e2e: {exc}", file=sys.stderr, flush=True)
                if attempt == 2:
                    raise
    load = os.getloadavg()
    report("e2e", rows, notes=(
        f"3-step service_call workflow against the demo service (instant); open-loop "
        f"{RATE:.0f} executions/s for {SECONDS:.0f} s after a warm-up; cpu% = % of one core "
        f"over the run (machine: {os.cpu_count()} cores, load average at the end "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f})"))
