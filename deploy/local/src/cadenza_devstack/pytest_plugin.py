"""Session-scoped pytest fixtures for the real Kafka and Postgres servers.

By default the fixtures bring up the local stack with the launcher (and stop it
at the end if they started it). With `CADENZA_TEST_KAFKA` and
`CADENZA_TEST_DATABASE_URL` set, they use those servers instead. Each test
session gets its own database (migrated from empty) and its own topic prefix,
so sessions never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from cadenza_common import kafka
from cadenza_common.events import Topics
from cadenza_common.kafka import ensure_topics
from cadenza_common.settings import DatabaseSettings, KafkaSettings
from cadenza_devstack.databases import create_database, drop_database
from cadenza_devstack.stack import Stack, StackInfo


@pytest.fixture(scope="session")
def devstack() -> Iterator[StackInfo]:
    """The servers tests run against: configured ones, or the local stack."""
    kafka = os.environ.get("CADENZA_TEST_KAFKA")
    database = os.environ.get("CADENZA_TEST_DATABASE_URL")
    if kafka and database:
        yield StackInfo(kafka, DatabaseSettings(url=database).url)
        return
    stack = Stack()
    was_running = all(stack.status().values())
    info = stack.up()
    yield info
    if not was_running and not os.environ.get("CADENZA_TEST_KEEP_STACK"):
        stack.down()


@pytest.fixture(scope="session")
def kafka_bootstrap(devstack: StackInfo) -> str:
    """Bootstrap servers of the real broker."""
    return devstack.bootstrap_servers


def new_kafka_settings(bootstrap_servers: str) -> KafkaSettings:
    """Kafka settings under a prefix nobody else uses, with all of Cadenza's topics created."""
    settings = KafkaSettings(
        bootstrap_servers=bootstrap_servers,
        topic_prefix=f"test{uuid.uuid4().hex[:10]}.",
        client_id="cadenza-tests",
    )
    asyncio.run(ensure_topics(settings))
    return settings


def delete_prefixed_topics(settings: KafkaSettings) -> None:
    """Delete every topic under the settings' prefix (a test's own topics and Faust's)."""
    asyncio.run(kafka.delete_prefixed_topics(settings))


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> Iterator[KafkaSettings]:
    """Kafka settings with a topic prefix of this session's own; its topics exist."""
    settings = new_kafka_settings(kafka_bootstrap)
    yield settings
    delete_prefixed_topics(settings)


@pytest.fixture
def fresh_kafka(kafka_bootstrap: str) -> Iterator[KafkaSettings]:
    """Kafka settings with a topic prefix of this test's own (empty topics), deleted after."""
    settings = new_kafka_settings(kafka_bootstrap)
    yield settings
    delete_prefixed_topics(settings)


@pytest.fixture(scope="session")
def topics(kafka_settings: KafkaSettings) -> Topics:
    """Physical topic names of this session."""
    return Topics(kafka_settings.topic_prefix)


@pytest.fixture(scope="session")
def database_url(devstack: StackInfo) -> Iterator[str]:
    """A fresh database of this session's own, migrated to head; dropped afterwards."""
    with fresh_database(devstack, "cadenza_test") as url:
        yield url


@contextlib.contextmanager
def fresh_database(devstack: StackInfo, prefix: str) -> Iterator[str]:
    """Create `<prefix>_<random>` on the stack's server, migrate it, drop it on exit."""
    url = asyncio.run(create_database(devstack.database_url, prefix))
    try:
        yield url
    finally:
        asyncio.run(drop_database(url))
