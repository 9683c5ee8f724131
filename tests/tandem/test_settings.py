"""Settings come from TANDEM_* variables and fail at start naming the variable."""

from __future__ import annotations

import faust
import orjson
import pytest

from tandem.contracts.exceptions import ConfigError
from tandem.contracts.kafka import consumer_config, producer_config
from tandem.contracts.settings import Settings, redact_url
from tandem.streams.app import broker_credentials


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TANDEM_KAFKA", raising=False)
    settings = Settings.load()
    assert settings.kafka == "127.0.0.1:9092"
    assert settings.redis_url.get_secret_value() == "redis://127.0.0.1:6379/0"
    assert set(settings.stores) == {"u2i", "i2i", "popular"}


def test_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_KAFKA", "k1:9093")
    monkeypatch.setenv("TANDEM_STORES", '{"u2i": {"ttl_s": 600}, "geo": {}}')
    settings = Settings.load(kafka=None)
    assert settings.kafka == "k1:9093"
    assert settings.policy("u2i").ttl_s == 600
    assert settings.policy("geo").min_coverage == 0.9
    assert Settings.load(kafka="other:1").kafka == "other:1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TANDEM_PARTITIONS", "zero"),
        ("TANDEM_PARTITIONS", "0"),
        ("TANDEM_KEY_PREFIX", "has space"),
        ("TANDEM_STORES", '{"Bad Name": {}}'),
        ("TANDEM_STORES", '{"u2i": {"ttl_s": 1}}'),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as err:
        Settings.load()
    assert variable in str(err.value)


def test_unknown_store_says_how_to_add_it() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load().policy("nope")
    assert "TANDEM_STORES" in str(err.value)


def test_secrets_do_not_leak_into_repr() -> None:
    settings = Settings.load(redis_url="redis://:hunter2@h:6379/0", admin_token="t0ps3cret")
    assert "hunter2" not in repr(settings)
    assert "t0ps3cret" not in repr(settings)
    assert settings.redis_url_redacted() == "redis://:***@h:6379/0"
    assert redact_url("redis://u:pw@h:1/2") == "redis://u:***@h:1/2"


def test_kafka_client_settings_pass_through_and_stay_secret() -> None:
    extra = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "hunter2-secret",
    }
    settings = Settings.load(kafka_config=orjson.dumps(extra).decode())
    assert producer_config(settings, bulk=False)["sasl.password"] == "hunter2-secret"
    assert consumer_config(settings, "g")["security.protocol"] == "SASL_SSL"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())
    credentials = broker_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism.name == "SCRAM_SHA_512"
    assert credentials.username == "svc"
    assert broker_credentials(Settings.load()) is None
    with pytest.raises(ConfigError, match="TANDEM_KAFKA_CONFIG"):
        Settings.load(kafka_config="[1, 2]")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("redis_url", "http://x"),
        ("redis_url", "127.0.0.1:6379"),
        ("kafka", "localhost"),
        ("kafka", "127.0.0.1:9092,broker2"),
    ],
)
def test_addresses_are_checked_at_start(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"TANDEM_{name.upper()}"):
        Settings.load(**{name: value})
