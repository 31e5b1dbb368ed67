"""The trigger-api's settings (env prefix `CADENZA_API_`), composed of the shared pieces."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from cadenza_common.settings import DatabaseSettings, KafkaSettings, SecuritySettings


class Settings(BaseSettings):
    """Everything `create_app` and the outbox relay need."""

    model_config = SettingsConfigDict(env_prefix="CADENZA_API_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    default_page_size: int = Field(default=50, ge=1)
    max_page_size: int = Field(default=200, ge=1)
    relay_enabled: bool = True
    relay_batch_size: int = Field(default=500, ge=1)
    relay_idle_s: float = Field(default=0.02, gt=0)
    relay_retry_s: float = Field(default=1.0, gt=0)
    key_cache_ttl_s: float = Field(default=5.0, ge=0)
    outbound_timeout_s: float = Field(default=10.0, gt=0)
    outbound_allow_private: bool = False
    approval_link_ttl_s: int = Field(default=24 * 3600, ge=60)
    public_base_url: str = "http://127.0.0.1:8080"
