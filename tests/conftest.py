"""Fixtures of the cross-service suites (tests/e2e, tests/faults): the whole system.

One `System` per pytest session: a database and a topic prefix of its own, the stub
service, and the five services started as processes. Logs go to one file per service
under the session's work directory (printed at the end when a service logged a
traceback).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from system_harness import System
from system_stub import StubServer

from cadenza_devstack.pytest_plugin import (
    delete_prefixed_topics,
    fresh_database,
    new_kafka_settings,
)
from cadenza_devstack.stack import StackInfo


@pytest.fixture(scope="session")
def stub() -> Iterator[StubServer]:
    """The programmable HTTP service workflows call (a real uvicorn server)."""
    server = StubServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def system_database(devstack: StackInfo) -> Iterator[str]:
    """A migrated database of the system's own (other suites' sinks never write here)."""
    with fresh_database(devstack, "cadenza_e2e") as url:
        yield url


@pytest.fixture(scope="session")
def system(kafka_bootstrap: str, system_database: str, stub: StubServer) -> Iterator[System]:
    """The five services as processes, an org with its admin key, the stub registered."""
    kafka = new_kafka_settings(kafka_bootstrap)
    workdir = Path(tempfile.mkdtemp(prefix="cadenza-e2e-"))
    running = System(kafka, system_database, workdir, stub.url)
    try:
        running.start_all()
        running.connection("stub")
        yield running
    finally:
        running.stop_all()
        broken = running.logs_with_tracebacks()
        if broken:
            print(f"service logs in {workdir}\n{broken}")
        delete_prefixed_topics(kafka)


@pytest.fixture(scope="session")
def demo_url(system: System) -> str:
    """The demo sibling service (deploy/local/demo, answering in 0-50 ms), a process."""
    return system.demo_url
