"""Settings: env prefix, URL normalisation, placeholder secrets refused outside development."""

import pytest
from pydantic import SecretStr

from cadenza_common.settings import DatabaseSettings, KafkaSettings, SecuritySettings


def test_kafka_settings_read_the_cadenza_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADENZA_KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("CADENZA_KAFKA_PARTITIONS", "6")

    settings = KafkaSettings()

    assert (settings.bootstrap_servers, settings.partitions) == ("k:1", 6)


def test_plain_postgres_url_uses_asyncpg() -> None:
    assert DatabaseSettings(url="postgresql://u@h/db").url == "postgresql+asyncpg://u@h/db"


def test_placeholder_secret_refused_in_production() -> None:
    settings = SecuritySettings(environment="production")

    with pytest.raises(ValueError, match="CADENZA_SECRET_KEY"):
        settings.check_production_secrets()


def test_real_secret_accepted_in_production() -> None:
    settings = SecuritySettings(environment="production", secret_key=SecretStr("x" * 40))

    settings.check_production_secrets()
