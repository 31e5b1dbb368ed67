"""`python -m bench api_execute`: sustained POST .../execute on one uvicorn process.

Brings the trigger-api up as a real process (`python -m cadenza_trigger_api`, the outbox
relay running inside it) on a fresh database and topic prefix of the shared stack
(`CADENZA_TEST_DATABASE_URL`, `CADENZA_TEST_KAFKA`), then drives it with a small
keep-alive HTTP/1.1 load generator (raw asyncio streams, so the client costs little CPU).
Reports requests/s, latency percentiles, errors, and how long the relay took to drain
the outbox to Kafka afterwards. Every request uses a fresh externalId.
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

import asyncpg
import httpx
import orjson

from bench.report import percentile, report
from cadenza_common.kafka import delete_prefixed_topics, ensure_topics
from cadenza_common.settings import DatabaseSettings, KafkaSettings
from cadenza_devstack.databases import create_database, database_name, drop_database

DURATION_S = float(os.environ.get("BENCH_DURATION_S", "15"))
WARMUP_S = 3.0
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "32").split(",")]
SPEC = {
    "inputs": {
        "type": "object",
        "required": ["customer"],
        "properties": {"customer": {"type": "string"}},
    },
    "nodes": [{"id": "greet", "type": "transform", "expression": '{"hello": trigger.customer}'}],
}


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def _unsent(url: str) -> int:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        return count
    finally:
        await conn.close()


def _request(port: int, slug: str, key: str) -> bytes:
    body = orjson.dumps({"input": {"customer": "ada"}, "externalId": uuid.uuid4().hex})
    head = (
        f"POST /api/workflows/{slug}/execute HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _worker(
    port: int, slug: str, key: str, until: float, latencies: list[float], statuses: dict[int, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(_request(port, slug, key))
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _load(
    port: int, slug: str, key: str, concurrency: int, seconds: float
) -> tuple[list[float], dict[int, int], float]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(
        *[_worker(port, slug, key, until, latencies, statuses) for _ in range(concurrency)]
    )
    return latencies, statuses, time.perf_counter() - started


async def _setup(base: str, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        await client.post("/api/workflows", json={"slug": "bench", "name": "bench", "spec": SPEC})
        published = await client.post("/api/workflows/bench/publish")
        published.raise_for_status()
    return "bench"


def _start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "cadenza_trigger_api"], env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("trigger-api did not become ready")


async def _drain(url: str, timeout_s: float = 120) -> float:
    if os.environ.get("BENCH_WITHOUT_KAFKA"):
        return 0.0
    started = time.perf_counter()
    while await _unsent(url) > 0 and time.perf_counter() - started < timeout_s:
        await asyncio.sleep(0.2)
    return time.perf_counter() - started


async def _run(env: dict[str, str], url: str, port: int) -> list[dict[str, Any]]:
    key = subprocess.run(
        [
            sys.executable,
            "-m",
            "cadenza_trigger_api",
            "create-org",
            "bench",
            "--executions-per-minute",
            "100000000",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    proc = _start_server(env, port)
    rows: list[dict[str, Any]] = []
    try:
        slug = await _setup(f"http://127.0.0.1:{port}", key)
        await _load(port, slug, key, 8, WARMUP_S)
        await _drain(url)
        for concurrency in CONCURRENCY:
            latencies, statuses, elapsed = await _load(port, slug, key, concurrency, DURATION_S)
            backlog = await _unsent(url)
            drain_s = await _drain(url)
            ok = statuses.get(202, 0)
            rows.append(
                {
                    "concurrency": concurrency,
                    "seconds": round(elapsed, 1),
                    "requests": len(latencies),
                    "accepted_202": ok,
                    "errors": len(latencies) - ok,
                    "req_per_s": len(latencies) / elapsed,
                    "p50_ms": percentile(latencies, 50) * 1000,
                    "p99_ms": percentile(latencies, 99) * 1000,
                    "outbox_backlog_at_end": backlog,
                    "outbox_drain_s": drain_s,
                }
            )
    finally:
        proc.terminate()
        proc.wait(30)
    return rows


def main() -> None:
    """Run the benchmark and report it as `api_execute`."""
    database = os.environ.get("CADENZA_TEST_DATABASE_URL", os.environ.get("CADENZA_DATABASE_URL"))
    bootstrap = os.environ.get("CADENZA_TEST_KAFKA", "127.0.0.1:9092")
    base_url = DatabaseSettings(url=database or DatabaseSettings().url).url
    url = asyncio.run(create_database(base_url, "bench_api"))
    kafka = KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=f"{database_name(url)}.")
    try:
        if not os.environ.get("BENCH_WITHOUT_KAFKA"):  # diagnostic: relay idles, rows wait
            asyncio.run(ensure_topics(kafka))
        port = _free_port()
        env = {
            **os.environ,
            "CADENZA_DATABASE_URL": url,
            "CADENZA_DATABASE_POOL_SIZE": "20",
            "CADENZA_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "CADENZA_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
            "CADENZA_API_PORT": str(port),
            "CADENZA_API_KEY_CACHE_TTL_S": "5",
        }
        rows = asyncio.run(_run(env, url, port))
    finally:
        asyncio.run(drop_database(url))
        asyncio.run(delete_prefixed_topics(kafka))
    without = bool(os.environ.get("BENCH_WITHOUT_KAFKA"))
    report(
        "api_execute_without_kafka" if without else "api_execute",
        rows,
        notes=(
            "POST /api/workflows/bench/execute, fresh externalId per request, one uvicorn process "
            + (
                "whose relay cannot reach Kafka (rows wait; diagnostic only)"
                if without
                else "with the outbox relay publishing to Kafka"
            )
            + f"; {os.cpu_count()} cores shared with the load generator, Postgres and Kafka."
        ),
    )


if __name__ == "__main__":
    main()
