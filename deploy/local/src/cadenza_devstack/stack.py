"""The whole local stack: Kafka + Postgres + migrations + topics, idempotent `up`/`down`."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cadenza_common.db import upgrade
from cadenza_common.kafka import ensure_topics
from cadenza_common.settings import KafkaSettings
from cadenza_devstack.kafka_server import KafkaServer
from cadenza_devstack.postgres_server import PostgresServer
from cadenza_devstack.state import StackState, state_dir

DATABASE = "cadenza"


@dataclass(frozen=True)
class StackInfo:
    """Where the running stack answers."""

    bootstrap_servers: str
    database_url: str

    def env(self) -> dict[str, str]:
        """The settings services read, as environment variables."""
        return {
            "CADENZA_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "CADENZA_DATABASE_URL": self.database_url,
        }


class Stack:
    """Kafka and Postgres under one state directory."""

    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or state_dir()
        self.state = StackState.load(self.dir)
        self.kafka = KafkaServer(self.dir, self.state)
        self.postgres = PostgresServer(self.dir, self.state)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `up`s at once (two pytest sessions, `make run` + tests) must not race.
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "stack.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.state = StackState.load(self.dir)
            self.kafka.state = self.postgres.state = self.state
            yield
            self.state.save(self.dir)

    def info(self) -> StackInfo:
        return StackInfo(self.state.bootstrap_servers, self.state.database_url(DATABASE))

    def status(self) -> dict[str, bool]:
        return {"kafka": self.kafka.running(), "postgres": self.postgres.running()}

    def up(self) -> StackInfo:
        """Start whatever is not running, migrate, create topics; harmless when all is up."""
        with self._locked():
            if not self.postgres.running():
                self.postgres.start()
            self.postgres.create_database(DATABASE)
            if not self.kafka.running():
                self.kafka.start()
            self.state.save(self.dir)
        info = self.info()
        upgrade(info.database_url)
        asyncio.run(ensure_topics(KafkaSettings(bootstrap_servers=info.bootstrap_servers)))
        return info

    def down(self) -> None:
        """Stop both servers (data is kept for the next `up`)."""
        with self._locked():
            self.kafka.stop()
            self.postgres.stop()

    def restart_kafka(self, kill: bool = False) -> None:
        """Stop the broker (SIGKILL when `kill`) and start it again on the same ports."""
        with self._locked():
            self.kafka.stop(kill=kill)
            self.kafka.start()

    def log_files(self) -> dict[str, Path]:
        return {"kafka": self.kafka.log_file, "postgres": self.postgres.log_file}
