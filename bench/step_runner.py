"""Step-runner benchmark: sustained calls/s and added latency against an instant local stub.

Runs one `python -m cadenza_step_runner` process against the configured Kafka
(`CADENZA_TEST_KAFKA` or `CADENZA_KAFKA_BOOTSTRAP_SERVERS`) under a fresh topic prefix, with
an HTTP/1.1 keep-alive stub (a raw asyncio server in its own process) that answers at once.

1. backlog: N StepReady are published first; throughput = answers / (last - first answer).
2. paced: StepReady published at a fixed rate; latency = answer's record time minus the
   StepReady's record time (Kafka → runner → stub → Kafka), and the runner's own
   handling time (`duration_ms`: StepReady consumed → call answered) — p50/p99.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from bench.report import percentile, report
from cadenza_common import kafka
from cadenza_common.events import StepReady, StepSucceeded, Topics
from cadenza_common.settings import KafkaSettings

STUB = r"""
import asyncio, sys
BODY = b'{"ok":true}'
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
RESP = HEAD % len(BODY) + BODY
async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            writer.write(RESP)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _steps(n: int, url: str, org: uuid.UUID) -> list[StepReady]:
    out = []
    for _ in range(n):
        exec_id = uuid.uuid4()
        out.append(
            StepReady(
                execution_id=exec_id,
                org_id=org,
                node_id="call",
                node_type="service_call",
                request={"url": url, "method": "POST", "body": {"n": 1}},
                idempotency_key=f"{exec_id}:call",
            )
        )
    return out


async def _publish(
    prod: Any, topic: str, steps: list[StepReady], rate: float | None
) -> dict[str, int]:
    """Send the steps (at `rate` per second if given); return each one's record time (ms)."""
    messages = [kafka.encode(step, source="/bench") for step in steps]
    started = time.monotonic()
    futures = []
    for i, msg in enumerate(messages):
        futures.append(await prod.send(topic, msg.value, key=msg.key, headers=msg.headers))
        if rate is not None and i % 20 == 0:
            ahead = started + i / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    metas = await asyncio.gather(*futures)
    return {str(s.execution_id): m.timestamp for s, m in zip(steps, metas, strict=True)}


async def _collect(
    cons: AIOKafkaConsumer, want: set[str], timeout_s: float
) -> list[tuple[int, dict[str, Any]]]:
    """(record time ms, event JSON) of the first StepSucceeded of each wanted execution."""
    got: dict[str, tuple[int, dict[str, Any]]] = {}
    async with asyncio.timeout(timeout_s):
        while len(got) < len(want):
            for batch in (await cons.getmany(timeout_ms=200, max_records=5000)).values():
                for record in batch:
                    if kafka.header(record.headers, "ce_type") != StepSucceeded.CE_TYPE:
                        continue
                    data = orjson.loads(record.value)
                    if data["execution_id"] in want:
                        got.setdefault(data["execution_id"], (record.timestamp, data))
    return list(got.values())


def _runner(settings: KafkaSettings, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "CADENZA_KAFKA_TOPIC_PREFIX": settings.topic_prefix,
        "CADENZA_DATABASE_URL": database_url,
        "CADENZA_ALLOW_PRIVATE_NETWORK": "true",
        "CADENZA_METRICS_PORT": "0",
        "CADENZA_WEBHOOK_ENABLED": "false",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cadenza_step_runner"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _run() -> list[dict[str, Any]]:
    bootstrap = os.environ.get("CADENZA_TEST_KAFKA") or os.environ.get(
        "CADENZA_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"
    )
    database_url = os.environ.get("CADENZA_TEST_DATABASE_URL") or os.environ.get(
        "CADENZA_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/cadenza"
    )
    settings = KafkaSettings(
        bootstrap_servers=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", client_id="bench"
    )
    await kafka.ensure_topics(settings)
    topics = Topics(settings.topic_prefix)
    n = int(os.environ.get("BENCH_STEPS", "20000"))
    rate = float(os.environ.get("BENCH_PACED_RATE", "1000"))
    paced_n = int(rate * float(os.environ.get("BENCH_PACED_SECONDS", "8")))
    port = _free_port()
    stub = subprocess.Popen([sys.executable, "-c", STUB, str(port)])
    url = f"http://127.0.0.1:{port}/call"
    org = uuid.uuid4()
    rows: list[dict[str, Any]] = []
    runner = _runner(settings, database_url)
    try:
        async with (
            kafka.producer(settings, linger_ms=20) as prod,
            kafka.consumer(
                settings,
                [topics.executions_commands],
                f"bench-{uuid.uuid4().hex[:6]}",
                auto_offset_reset="latest",
            ) as cons,
        ):
            warm = _steps(500, url, org)
            await asyncio.sleep(1.0)
            await _publish(prod, topics.steps_ready, warm, None)
            await _collect(cons, {str(s.execution_id) for s in warm}, 120)

            backlog = _steps(n, url, org)
            await _publish(prod, topics.steps_ready, backlog, None)
            done = await _collect(cons, {str(s.execution_id) for s in backlog}, 300)
            stamps = sorted(ts for ts, _ in done)
            seconds = max(1e-3, (stamps[-1] - stamps[0]) / 1000)
            handling = [e["duration_ms"] or 0.0 for _, e in done]
            rows.append(
                {
                    "mode": "backlog",
                    "steps": n,
                    "calls_per_s": round(n / seconds, 1),
                    "handling_p50_ms": percentile(handling, 50),
                    "handling_p99_ms": percentile(handling, 99),
                }
            )

            paced = _steps(paced_n, url, org)
            pub = asyncio.create_task(_publish(prod, topics.steps_ready, paced, rate))
            done = await _collect(cons, {str(s.execution_id) for s in paced}, 300)
            sent_at = await pub
            e2e = [ts - sent_at[e["execution_id"]] for ts, e in done]
            handling = [e["duration_ms"] or 0.0 for _, e in done]
            rows.append(
                {
                    "mode": f"paced {rate:.0f}/s",
                    "steps": paced_n,
                    "calls_per_s": rate,
                    "handling_p50_ms": percentile(handling, 50),
                    "handling_p99_ms": percentile(handling, 99),
                    "kafka_to_kafka_p50_ms": percentile(e2e, 50),
                    "kafka_to_kafka_p99_ms": percentile(e2e, 99),
                }
            )
    finally:
        runner.terminate()
        stub.terminate()
        runner.wait(timeout=30)
        stub.wait(timeout=10)
        await kafka.delete_prefixed_topics(settings)
    return rows


def main() -> None:
    """Run the benchmark and report it as `bench/results/step_runner.json`."""
    rows = asyncio.run(_run())
    report(
        "step_runner",
        rows,
        notes=(
            "one runner process, max_in_flight=256, instant keep-alive stub in its own process; "
            "handling = StepReady consumed → call answered (duration_ms); kafka_to_kafka = "
            "StepReady record time → StepSucceeded record time"
        ),
    )
