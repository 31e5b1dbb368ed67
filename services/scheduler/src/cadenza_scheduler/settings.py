"""The scheduler's settings (env prefix `CADENZA_SCHEDULER_`), from the shared pieces."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cadenza_common.settings import KafkaSettings


class Settings(BaseSettings):
    """The Faust app id (also its consumer group and changelog prefix), store and web port.

    `store` is `memory://`: the state is rebuilt from the (compacted) changelog on every start
    and rebalance. Faust's `rocksdb://` store is not offered: it files each write under the
    partition of Faust's "current event", which is wrong when the agent handles a batch of
    records from several partitions (tried: it asserts on the first write).

    `retention_s` is how long a finished execution stays in the table before it is deleted
    (tombstoned). The agent takes up to `batch_max` records at a time, at most
    `batch_within_s` after the first of them arrived (a backlog at once), and makes their
    changes durable and sends their emits together (`app.Inbox.batches`). A changelog
    write nothing waits for (the outbox cleared after a batch's sends) is held back up to
    `write_delay_s`, so the execution's next transition usually replaces it; a crash in
    that window only resends events consumers already have.

    `event_loop` is `uvloop` (libuv's loop, what Faust's `-L uvloop` selects) or `asyncio`
    (the standard library's). Under load the standard loop's own turns (ready queue,
    selector, handles) were a few per cent of the scheduler's CPU; with uvloop saturated
    throughput did not change measurably, and latency at a fixed load was lower in most
    paired runs (bench/README.md, scheduler session 10).

    `gc_thresholds` are the garbage collector's (`gc.set_threshold`), applied between
    batches: the agent runs the pass that is due once a batch is flushed, and the
    collector's own trigger only fires at ten times the young threshold. Python's default
    (700, 10, 10), triggered anywhere, made the collector a tenth of the scheduler's CPU
    under load, with full passes of 100-150 ms over every cached state; see
    `cadenza_scheduler.heap`.
    """

    model_config = SettingsConfigDict(env_prefix="CADENZA_SCHEDULER_", extra="ignore")

    app_id: str = "cadenza-scheduler"
    store: str = "memory://"
    data_dir: str = ".cadenza-scheduler"
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    source: str = "/cadenza/scheduler"
    retention_s: float = Field(default=3600.0, ge=0)
    timer_tick_s: float = Field(default=0.05, gt=0)
    log_level: str = "info"
    session_timeout_s: float = Field(default=10.0, ge=6.0)
    rebalance_timeout_s: float = Field(default=60.0, ge=1.0)
    commit_interval_s: float = Field(default=1.0, gt=0)
    batch_max: int = Field(default=500, ge=1)
    batch_within_s: float = Field(default=0.001, gt=0)
    write_delay_s: float = Field(default=1.0, ge=0)
    gc_thresholds: tuple[int, int, int] = (10_000, 50, 100)
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)

    @field_validator("store")
    @classmethod
    def _memory_only(cls, value: str) -> str:
        if value != "memory://":
            raise ValueError(
                f"store {value!r} is not supported: the scheduler keeps its table in "
                "`memory://` and rebuilds it from the changelog (see the settings docstring)"
            )
        return value
