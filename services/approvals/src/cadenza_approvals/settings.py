"""The approvals service's settings (env prefix `CADENZA_APPROVALS_`), from the shared pieces."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cadenza_common.settings import DatabaseSettings, KafkaSettings


class Settings(BaseSettings):
    """Where Kafka and Postgres are, the consumer groups and the health/metrics port.

    `group_id` is a base: the service consumes `executions.events` as `<group_id>.events`
    and `approvals.decisions` as `<group_id>.decisions`.
    """

    model_config = SettingsConfigDict(env_prefix="CADENZA_APPROVALS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=9103, ge=0, le=65535)
    group_id: str = "cadenza-approvals"
    source: str = "/cadenza/approvals"
    resend_interval_s: float = Field(default=30.0, gt=0)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
