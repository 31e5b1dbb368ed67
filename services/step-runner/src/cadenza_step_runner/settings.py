"""Settings of the step-runner (env prefix `CADENZA_`, e.g. `CADENZA_MAX_IN_FLIGHT=512`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cadenza_common.settings import DatabaseSettings, KafkaSettings, SecuritySettings


class BreakerSettings(BaseSettings):
    """Per-connection circuit breaker (env prefix `CADENZA_BREAKER_`)."""

    model_config = SettingsConfigDict(env_prefix="CADENZA_BREAKER_", extra="ignore")

    window: int = Field(default=20, ge=1, description="last N calls the failure rate is over")
    min_calls: int = Field(default=5, ge=1, description="calls needed before it may open")
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    cooldown_s: float = Field(default=30.0, gt=0, description="open → half-open after this")


class WebhookSettings(BaseSettings):
    """Outbound webhook subscriptions delivery (env prefix `CADENZA_WEBHOOK_`)."""

    model_config = SettingsConfigDict(env_prefix="CADENZA_WEBHOOK_", extra="ignore")

    enabled: bool = True
    group_id: str = "cadenza-webhook-delivery"
    max_attempts: int = Field(default=6, ge=1)
    initial_backoff_s: float = Field(default=1.0, ge=0)
    max_backoff_s: float = Field(default=60.0, ge=0)
    timeout_s: float = Field(default=10.0, gt=0)
    disable_after_failures: int = Field(default=20, ge=1)
    max_in_flight: int = Field(default=64, ge=1)
    allow_private_network: bool = False


class Settings(BaseSettings):
    """Everything the step-runner reads from the environment.

    Secrets for `${secrets.NAME}` come from `CADENZA_SECRETS_NAME` variables and values for
    `${env.NAME}` from `CADENZA_ENV_NAME` (only those: the runner never exposes its own
    environment, which holds `CADENZA_SECRET_KEY`).
    """

    model_config = SettingsConfigDict(env_prefix="CADENZA_", extra="ignore")

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)

    group_id: str = "cadenza-step-runner"
    max_in_flight: int = Field(default=256, ge=1)
    metrics_port: int = Field(default=9102, ge=0, le=65535)
    default_timeout_s: float = Field(default=30.0, gt=0)
    max_response_bytes: int = Field(default=10_000_000, ge=1)
    blob_threshold_bytes: int = Field(default=100_000, ge=1)
    allow_private_network: bool = Field(
        default=False, description="allow private/loopback targets for absolute URLs (dev only)"
    )
    connection_cache_ttl_s: float = Field(default=10.0, ge=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    commit_interval_s: float = Field(default=0.5, gt=0)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
