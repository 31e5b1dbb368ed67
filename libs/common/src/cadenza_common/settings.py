"""Shared settings pieces: every service composes these into its own `Settings`."""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "dev", "development"})


class KafkaSettings(BaseSettings):
    """Where Kafka is and how Cadenza's topics are named (env prefix `CADENZA_KAFKA_`).

    `fetch_max_wait_ms` bounds how long the broker holds a consumer's fetch when its
    partitions are quiet. aiokafka keeps one fetch in flight per broker, for the partitions
    with nothing buffered when it was sent; a record arriving on another partition waits for
    that fetch to come back, so under load it adds to the latency of workflow hops (Faust's
    fixed 1500 ms halved the scheduler's throughput). Short waits cost an idle consumer one
    fetch per interval: measured for 24 partitions, 4.7 % of a core at 20 ms, 1.2 % at
    100 ms, 0.5 % at 500 ms (aiokafka's default); the scheduler benchmark does as well at
    100 ms as at 20 ms.
    """

    model_config = SettingsConfigDict(env_prefix="CADENZA_KAFKA_", extra="ignore")

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "cadenza."
    partitions: int = Field(default=12, ge=1, le=1000)
    replication_factor: int = Field(default=1, ge=1)
    client_id: str = "cadenza"
    fetch_max_wait_ms: int = Field(default=100, ge=0, le=5000)


class DatabaseSettings(BaseSettings):
    """Where Postgres is (env prefix `CADENZA_DATABASE_`)."""

    model_config = SettingsConfigDict(env_prefix="CADENZA_DATABASE_", extra="ignore")

    url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/cadenza"
    pool_size: int = Field(default=10, ge=1)
    echo: bool = False

    @field_validator("url")
    @classmethod
    def _asyncpg_driver(cls, value: str) -> str:
        """Accept a plain `postgresql://` URL and use the asyncpg driver for it."""
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        return value


class SecuritySettings(BaseSettings):
    """Secrets shared by services (env prefix `CADENZA_`).

    `secret_key` encrypts connection secrets at rest; `secret_key_id` names it so
    keys can rotate (older keys go in `old_secret_keys` as `id:key` pairs).
    """

    model_config = SettingsConfigDict(env_prefix="CADENZA_", extra="ignore")

    environment: str = "development"
    secret_key: SecretStr = SecretStr("dev-only-insecure-key-change-me")
    secret_key_id: str = "k1"
    old_secret_keys: str = ""

    def check_production_secrets(self) -> None:
        """Refuse placeholder secrets outside development.

        Raises:
            ValueError: when a placeholder or development key is used in production.
        """
        value = self.secret_key.get_secret_value()
        if self.environment != "development" and (
            value.lower() in PLACEHOLDER_SECRETS or value.startswith("dev-only")
        ):
            raise ValueError("CADENZA_SECRET_KEY must be set to a real secret outside development")
