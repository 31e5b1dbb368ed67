"""Property-based run of the OpenAPI document against the live app: no 5xx, responses conform.

Bounded (`max_examples` per operation) so it takes well under a minute. The app runs
under uvicorn in a thread, on the session's database, with a real admin key.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings

from cadenza_common.db.engine import create_engine
from cadenza_common.settings import DatabaseSettings, KafkaSettings
from cadenza_trigger_api.app import create_app
from cadenza_trigger_api.auth import KeyHasher
from cadenza_trigger_api.orgs import create_org
from cadenza_trigger_api.settings import Settings

from .conftest import VALID_SPEC

checks = schemathesis.checks

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 12


async def _bootstrap(api_settings: Settings) -> str:
    engine = create_engine(api_settings.database)
    try:
        org = await create_org(engine, KeyHasher(api_settings.security), "schemathesis-org",
                               executions_per_minute=100_000)
    finally:
        await engine.dispose()
    return org.key


@pytest.fixture(scope="module")
def live_api(database_url: str, api_kafka: KafkaSettings) -> Iterator[tuple[str, str]]:
    """(base URL, admin key) of the app served by uvicorn on a free port."""
    api_settings = Settings(database=DatabaseSettings(url=database_url, pool_size=5),
                            kafka=api_kafka, relay_enabled=False)
    key = asyncio.run(_bootstrap(api_settings))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(create_app(api_settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {key}"}
    httpx.post(f"{base}/api/workflows", headers=headers,
               json={"slug": "st", "name": "st", "spec": VALID_SPEC}, timeout=10)
    httpx.post(f"{base}/api/workflows/st/publish", headers=headers, timeout=10)
    yield base, key
    server.should_exit = True
    thread.join(15)


def test_api_conforms_to_its_openapi_document(live_api: tuple[str, str]) -> None:
    base, key = live_api
    api = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []

    for result in api.get_all_operations():
        operation = result.ok()
        try:
            _exercise(operation, base, key)
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")

    assert not failures, "\n\n".join(failures)


def _exercise(operation: object, base: str, key: str) -> None:
    @given(case=operation.as_strategy())  # type: ignore[attr-defined]
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: object) -> None:
        case.call_and_validate(  # type: ignore[attr-defined]
            base_url=base,
            headers={"Authorization": f"Bearer {key}"},
            checks=[checks.not_a_server_error, checks.status_code_conformance,
                    checks.content_type_conformance, checks.response_schema_conformance],
        )

    run()
