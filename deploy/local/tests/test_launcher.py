"""The launcher against real servers, in a state directory of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from cadenza_common.events import Topics
from cadenza_common.kafka import producer
from cadenza_common.settings import KafkaSettings
from cadenza_devstack.stack import Stack
from cadenza_devstack.state import port_open, state_dir

pytestmark = pytest.mark.integration


def _cli(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CADENZA_STATE_DIR": str(directory)}
    return subprocess.run(
        [sys.executable, "-m", "cadenza_devstack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def own_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("stack")
    shared_jars = state_dir() / "kafka" / "lib"
    if shared_jars.exists():  # reuse the jars the main stack already fetched
        (directory / "kafka").mkdir()
        (directory / "kafka" / "lib").symlink_to(shared_jars)
    yield directory
    _cli(directory, "down")
    pg_home = Stack(directory).postgres.data_dir.parent
    if not pg_home.is_relative_to(directory):  # the /var/tmp fallback: leave nothing behind
        shutil.rmtree(pg_home.parent, ignore_errors=True)


async def _probe(stack: Stack) -> None:
    settings = KafkaSettings(bootstrap_servers=stack.state.bootstrap_servers)
    async with producer(settings) as prod:
        await prod.send_and_wait(Topics().dlq, b"ping", key=b"k")
    conn = await asyncpg.connect(stack.info().database_url.replace("+asyncpg", ""))
    assert await conn.fetchval("SELECT count(*) FROM orgs") == 0
    await conn.close()


def test_up_twice_is_harmless_and_status_tells_the_truth(own_state_dir: Path) -> None:
    first = _cli(own_state_dir, "up")
    pids_after_first = Stack(own_state_dir).state.kafka_pid

    second = _cli(own_state_dir, "up")
    status = _cli(own_state_dir, "status")

    stack = Stack(own_state_dir)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert stack.state.kafka_pid == pids_after_first
    assert status.returncode == 0
    assert "kafka: running" in status.stdout
    assert "postgres: running" in status.stdout
    asyncio.run(_probe(stack))


def test_down_stops_both_servers(own_state_dir: Path) -> None:
    _cli(own_state_dir, "up")
    stack = Stack(own_state_dir)

    down = _cli(own_state_dir, "down")
    status = _cli(own_state_dir, "status")

    assert down.returncode == 0, down.stderr
    assert not port_open(stack.state.kafka_port)
    assert not port_open(stack.state.postgres_port)
    assert status.returncode == 3
    assert "kafka: stopped" in status.stdout
    assert "postgres: stopped" in status.stdout


def test_missing_postgres_binaries_give_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "CADENZA_STATE_DIR": str(tmp_path), "CADENZA_PG_BINDIR": str(tmp_path)}
    env["PATH"] = "/usr/bin:/bin"
    code = (
        "import glob, cadenza_devstack.postgres_server as p;"
        "glob.glob = lambda *a, **k: [];"
        "p.find_bindir()"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )

    assert result.returncode != 0
    assert "apt-get install -y postgresql" in result.stderr
