"""The one settings object of a tandem process, read from ``TANDEM_*`` environment variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tandem.contracts.domain import EVENT_TYPES, EXCLUDED_EVENTS, I2I, POPULAR, U2I
from tandem.contracts.exceptions import ConfigError, ValidationError
from tandem.contracts.ids import check_store

ENV_PREFIX = "TANDEM_"
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster"})
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class GuardPolicy(BaseModel):
    """When a canary (or the live version) of a store is judged: its online guards."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Impressions each variant needs before CTR or conversion is compared at all.
    min_impressions: int = Field(default=500, ge=10, le=10_000_000)
    # How far (relative) the canary's CTR or conversion may fall below control's...
    max_drop: float = Field(default=0.05, ge=0.0, le=1.0)
    # ...before a one-sided two-proportion z-test at this z calls it worse.
    z: float = Field(default=2.33, ge=0.5, le=6.0)
    max_degraded_share: float = Field(default=0.05, ge=0.0, le=1.0)
    max_p99_ms: float = Field(default=250.0, gt=0, le=60_000)
    # Impressions per variant after which a canary no guard objects to is promoted (0: never).
    promote_after: int = Field(default=2000, ge=0, le=100_000_000)


class StorePolicy(BaseModel):
    """How one store's versions live in Redis and which gates a new version must pass."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ttl_s: int = Field(default=3 * 86400, ge=60, le=90 * 86400)
    keep_versions: int = Field(default=2, ge=1, le=20)
    min_coverage: float = Field(default=0.9, ge=0.0, le=10.0)
    max_empty_share: float = Field(default=0.05, ge=0.0, le=1.0)
    metric_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    guard: GuardPolicy = Field(default_factory=GuardPolicy)


def _default_stores() -> dict[str, StorePolicy]:
    return {
        U2I: StorePolicy(ttl_s=3 * 86400),
        I2I: StorePolicy(ttl_s=7 * 86400),
        POPULAR: StorePolicy(ttl_s=2 * 86400, min_coverage=0.5),
    }


class Settings(BaseSettings):
    """Every setting of a tandem process. Read it once, in an entry point, with :meth:`load`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    kafka: str = "127.0.0.1:9092"
    redis_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    key_prefix: str = "tandem"
    partitions: int = Field(default=4, ge=1, le=256)
    events_partitions: int = Field(default=4, ge=1, le=256)
    replication_factor: int = Field(default=1, ge=1, le=5)
    stores: dict[str, StorePolicy] = Field(default_factory=_default_stores)
    max_record_bytes: int = Field(default=900_000, ge=1024, le=8_000_000)
    redis_timeout_s: float = Field(default=2.0, gt=0, le=60)
    state_dir: Path = Path(".state")
    admin_token: SecretStr | None = None
    api_deadline_ms: int = Field(default=50, ge=5, le=10_000)
    api_cache_ttl_s: int = Field(default=60, ge=5, le=3600)
    api_redis_timeout_ms: int = Field(default=30, ge=1, le=10_000)
    metrics_host: str = "127.0.0.1"
    # Share of answers written to ``tandem.impressions``, and how many may wait to be sent
    # (beyond it they are dropped and counted, never slowing an answer).
    impressions_sample: float = Field(default=1.0, ge=0.0, le=1.0)
    impressions_buffer: int = Field(default=10_000, ge=1, le=1_000_000)
    # Events without a request id are attributed to the user's last impression this recent.
    attribution_window_s: int = Field(default=1800, ge=1, le=7 * 86400)
    # Origins whose browsers may call the API (CORS), as a JSON list: ["https://shop.example"].
    cors_origins: tuple[str, ...] = ()
    log_format: Literal["text", "json"] = "text"
    # Extra librdkafka settings (a JSON object) for every Kafka client, e.g. security.protocol,
    # sasl.mechanism, sasl.username, sasl.password, ssl.ca.location for a managed cluster. Kept
    # secret: it is never logged or printed.
    kafka_config: SecretStr = SecretStr("{}")
    # Items of the user's session with these event types are not recommended again: a comma
    # list of event types, ``all`` or ``none``.
    exclude_seen: str = ",".join(sorted(EXCLUDED_EVENTS))

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if _PREFIX_RE.fullmatch(value) is None:
            raise ValueError("must be 1-32 characters of A-Z a-z 0-9 _ . -")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        scheme = urlsplit(value.get_secret_value()).scheme
        if scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"scheme {scheme or '(none)'!r} is not one of {', '.join(sorted(REDIS_SCHEMES))} "
                "(e.g. redis://host:6379/0, or redis+cluster://host:7000 for a Redis Cluster)"
            )
        return value

    @field_validator("kafka")
    @classmethod
    def _check_kafka(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isascii() or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port (e.g. 127.0.0.1:9092)")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for origin in value:
            parts = urlsplit(origin)
            if origin != "*" and (
                parts.scheme not in ("http", "https") or not parts.netloc or parts.path
            ):
                raise ValueError(f"{origin!r} is not an origin (e.g. https://shop.example:8443)")
        return value

    @field_validator("kafka_config")
    @classmethod
    def _check_kafka_config(cls, value: SecretStr) -> SecretStr:
        try:
            parsed = orjson.loads(value.get_secret_value())
        except orjson.JSONDecodeError:
            raise ValueError("must be a JSON object of librdkafka settings") from None
        if not isinstance(parsed, dict) or not all(
            isinstance(v, str | int | float | bool) for v in parsed.values()
        ):
            raise ValueError("must be a JSON object of librdkafka settings (scalar values)")
        return value

    def kafka_client_config(self) -> dict[str, str | int | float | bool]:
        """The extra librdkafka settings of ``TANDEM_KAFKA_CONFIG`` (secrets included)."""
        parsed: dict[str, str | int | float | bool] = orjson.loads(
            self.kafka_config.get_secret_value()
        )
        return parsed

    @field_validator("exclude_seen")
    @classmethod
    def _check_exclude_seen(cls, value: str) -> str:
        excluded_event_types(value)
        return value

    def excluded_types(self) -> frozenset[str]:
        """The event types of ``TANDEM_EXCLUDE_SEEN``."""
        return excluded_event_types(self.exclude_seen)

    @field_validator("stores")
    @classmethod
    def _check_stores(cls, value: dict[str, StorePolicy]) -> dict[str, StorePolicy]:
        for name in value:
            try:
                check_store(name, "stores")
            except ValidationError as e:
                raise ValueError(f"store name {name!r}: {e.rule}") from e
        return value

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Read the environment, apply non-None ``overrides``; fail naming the variable."""
        given = {key: value for key, value in overrides.items() if value is not None}
        try:
            return cls(**given)
        except pydantic.ValidationError as e:
            problems = []
            for err in e.errors():
                name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else ENV_PREFIX
                problems.append(f"{name}: {err['msg']}")
            raise ConfigError("invalid settings: " + "; ".join(problems)) from e

    def policy(self, store: str) -> StorePolicy:
        """The policy of a configured store; unknown stores are refused with what to do."""
        check_store(store)
        try:
            return self.stores[store]
        except KeyError:
            known = ", ".join(sorted(self.stores))
            raise ConfigError(
                f"unknown store {store!r} (configured: {known}); add it to {ENV_PREFIX}STORES, "
                'for example {"' + store + '": {"ttl_s": 86400}}'
            ) from None

    def redis_url_redacted(self) -> str:
        """The Redis URL with any password masked, for logs and status output."""
        return redact_url(self.redis_url.get_secret_value())


def excluded_event_types(text: str) -> frozenset[str]:
    """Event types from ``all``, ``none`` or a comma list of them; ValueError naming the rest."""
    words = {word.strip() for word in text.split(",")} - {""}
    if words == {"all"}:
        return frozenset(EVENT_TYPES)
    if words <= {"none"}:
        return frozenset()
    unknown = words - EVENT_TYPES
    if unknown:
        raise ValueError(
            f"unknown event types {', '.join(sorted(unknown))}: give all, none or some of "
            + ", ".join(sorted(EVENT_TYPES))
        )
    return frozenset(words)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
