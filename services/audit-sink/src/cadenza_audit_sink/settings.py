"""The audit-sink's settings (env prefix `CADENZA_AUDIT_SINK_`, plus the shared Kafka/DB pieces)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cadenza_common.settings import DatabaseSettings, KafkaSettings


class Settings(BaseSettings):
    """Consumer group, batching, back-off, metrics port and retention of the audit-sink."""

    model_config = SettingsConfigDict(env_prefix="CADENZA_AUDIT_SINK_", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    group_id: str = "cadenza-audit-sink"
    batch_max_records: int = Field(default=2000, ge=1, le=50_000)
    batch_timeout_ms: int = Field(default=100, ge=1, le=10_000)
    backoff_initial_s: float = Field(default=0.2, gt=0)
    backoff_max_s: float = Field(default=5.0, gt=0)
    session_timeout_ms: int = Field(default=10_000, ge=6_000)
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    retention_days: int = Field(default=90, ge=1)
    retention_interval_s: float = Field(default=3600.0, gt=0)

    @property
    def dsn(self) -> str:
        """The database URL in the form asyncpg accepts (`postgresql://`)."""
        return "postgresql://" + self.database.url.split("://", 1)[1]
