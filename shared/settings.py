"""Typed settings read from the environment.

An unset `APP_ENV` means production: the services then refuse to start while a secret still
has its published default value. A developer's machine says `APP_ENV=dev` (the local stack,
docker-compose.yml and the tests do), and the defaults are enough there.
"""

import os
import socket
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.db import PlanCacheMode

if TYPE_CHECKING:
    from shared.crypto import CodeVault

DEV_ADMIN_TOKEN = "dev-admin-token-change-me"  # noqa: S105 - published dev default, refused in prod
# 32 zero bytes, base64: published dev defaults, refused in prod.
DEV_CODE_KEYS = "dev:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
DEV_FINGERPRINT_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    app_env: Literal["dev", "test", "prod"] = Field("prod", alias="APP_ENV")
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", alias="KAFKA_BOOTSTRAP_SERVERS")
    admin_token: SecretStr = Field(SecretStr(DEV_ADMIN_TOKEN), alias="ADMIN_TOKEN")
    code_encryption_keys: SecretStr = Field(SecretStr(DEV_CODE_KEYS), alias="CODE_ENCRYPTION_KEYS")
    code_fingerprint_key: SecretStr = Field(
        SecretStr(DEV_FINGERPRINT_KEY), alias="CODE_FINGERPRINT_KEY"
    )
    # Failed admin authentications a client address may make within the window; past them
    # its admin requests are answered 429 until the oldest is older than the window.
    admin_auth_max_failures: int = Field(10, alias="ADMIN_AUTH_MAX_FAILURES", ge=1, le=10_000)
    admin_auth_window_s: float = Field(60.0, alias="ADMIN_AUTH_FAILURE_WINDOW_S", gt=0, le=86400)
    log_level: str = Field("INFO", alias="LOG_LEVEL")
    bind_host: str = Field("127.0.0.1", alias="BIND_HOST")
    instance_id: str = Field(default_factory=_default_instance_id, alias="INSTANCE_ID")
    db_pool_size: int = Field(20, alias="DB_POOL_SIZE", ge=1, le=200)
    # A request that cannot get a connection in this time answers 503 (the pool is exhausted).
    db_acquire_timeout_s: float = Field(2.0, alias="DB_ACQUIRE_TIMEOUT_S", gt=0, le=60)
    # How PostgreSQL plans the pool's prepared statements (shared/db.py create_pool).
    db_plan_cache_mode: PlanCacheMode = Field("force_generic_plan", alias="DB_PLAN_CACHE_MODE")
    consumer_max_retries: int = Field(5, alias="CONSUMER_MAX_RETRIES", ge=0, le=100)
    # Every outbox insert wakes the relay (NOTIFY); the poll only covers a lost notification.
    outbox_poll_interval_s: float = Field(10.0, alias="OUTBOX_POLL_INTERVAL_S", gt=0)
    # Every order ends by this long after acceptance: fulfilment cancels a backorder still
    # waiting, the api asks to cancel an order no decision was heard of.
    backorder_deadline_s: float = Field(24 * 3600, alias="ORDERS_BACKORDER_DEADLINE_S", gt=0)

    @model_validator(mode="after")
    def _refuse_default_secrets_outside_dev(self) -> Self:
        if self.app_env == "prod":
            defaults = {
                "ADMIN_TOKEN": self.admin_token.get_secret_value() == DEV_ADMIN_TOKEN,
                "CODE_ENCRYPTION_KEYS": self.code_encryption_keys.get_secret_value()
                == DEV_CODE_KEYS,
                "CODE_FINGERPRINT_KEY": self.code_fingerprint_key.get_secret_value()
                == DEV_FINGERPRINT_KEY,
            }
            bad = [name for name, is_default in defaults.items() if is_default]
            if bad:
                raise ValueError(
                    "In production (APP_ENV unset or prod) the services refuse the published "
                    f"default value of {', '.join(bad)}: set each to a secret of your own (see "
                    "'In production' in docs/running.md), or set APP_ENV=dev on a developer's "
                    "machine."
                )
            if len(self.admin_token.get_secret_value()) < 24:
                raise ValueError("ADMIN_TOKEN must be at least 24 characters in production.")
        return self

    def code_vault(self) -> "CodeVault":
        from shared.crypto import CodeVault

        return CodeVault(
            self.code_encryption_keys.get_secret_value(),
            self.code_fingerprint_key.get_secret_value(),
        )


class ApiSettings(CommonSettings):
    database_url: str = Field("postgresql://api:api@127.0.0.1:5432/api", alias="API_DATABASE_URL")
    port: int = Field(8000, alias="API_PORT", ge=0, le=65535)
    # The operators' listener (admin endpoints, /metrics) of every api process: loopback
    # unless said otherwise, whatever BIND_HOST is (docker-compose.yml binds it to 0.0.0.0
    # inside the container so that Prometheus reaches it, and publishes it on the host's
    # loopback only).
    admin_port: int = Field(8010, alias="API_ADMIN_PORT", ge=0, le=65535)
    admin_bind_host: str = Field("127.0.0.1", alias="API_ADMIN_BIND_HOST")
    # Worker processes sharing the port (uvicorn's supervisor restarts one that dies); each has
    # its own reply listener, pool, relay and share of the in-flight limit. See docs/running.md.
    processes: int = Field(1, alias="API_PROCESSES", ge=1, le=64)
    decision_window_ms: int = Field(500, alias="ORDERS_DECISION_WINDOW_MS", ge=10, le=5000)
    wallet_slots: int = Field(16, alias="API_WALLET_SLOTS", ge=1, le=256)
    max_body_bytes: int = Field(16 * 1024, alias="API_MAX_BODY_BYTES", ge=1024)
    # How long a successful check is reused: the bound on how late a revoked or disabled
    # credential can still be accepted.
    auth_cache_ttl_s: float = Field(5.0, alias="API_AUTH_CACHE_TTL_S", ge=0, le=5)
    # Failed authentications allowed per API-key prefix and per client network before they
    # are answered 429 (a bucket of this many, refilled at the rate).
    auth_failure_burst: int = Field(20, alias="API_AUTH_FAILURE_BURST", ge=1, le=100_000)
    auth_failure_rate_per_s: float = Field(1.0, alias="API_AUTH_FAILURE_RATE_PER_S", gt=0)
    # Credential lookups (cache misses) running at once per process: the most connections
    # authentication can hold, whatever it is sent. Below DB_POOL_SIZE.
    auth_max_lookups: int = Field(4, alias="API_AUTH_MAX_LOOKUPS", ge=1, le=64)
    rate_limit_per_s: float = Field(2000.0, alias="API_RATE_LIMIT_PER_S", gt=0)
    rate_limit_burst: int = Field(4000, alias="API_RATE_LIMIT_BURST", ge=1)
    # Instant orders in progress in the api on this host, split evenly over its processes:
    # past it an order is answered 503 at once. Sized so that what is in flight is decided
    # within the decision window (docs/benchmarks.md, "Overload").
    max_in_flight: int = Field(256, alias="API_MAX_IN_FLIGHT", ge=1, le=100_000)
    # A group commit's wait for more orders before it flushes (docs/benchmarks.md).
    group_commit_linger_ms: float = Field(0.0, alias="API_GROUP_COMMIT_LINGER_MS", ge=0, le=50)
    nudge_after_s: float = Field(30.0, alias="API_NUDGE_AFTER_S", gt=0)
    nudge_interval_s: float = Field(5.0, alias="API_NUDGE_INTERVAL_S", gt=0)

    @property
    def max_in_flight_per_process(self) -> int:
        """Each process's share of `max_in_flight` (rounded up: at least one)."""
        return -(-self.max_in_flight // self.processes)

    @model_validator(mode="after")
    def _leave_the_pool_to_orders(self) -> Self:
        if self.auth_max_lookups >= self.db_pool_size:
            raise ValueError(
                f"API_AUTH_MAX_LOOKUPS ({self.auth_max_lookups}) must be below DB_POOL_SIZE "
                f"({self.db_pool_size}): the connections authentication cannot take are the "
                "ones orders are sure to get. Lower the one or raise the other."
            )
        return self

    @model_validator(mode="after")
    def _admin_on_its_own_port(self) -> Self:
        if self.admin_port == self.port != 0:
            raise ValueError(
                f"API_ADMIN_PORT and API_PORT are both {self.port}: the operators' endpoints "
                "have a listener of their own. Give API_ADMIN_PORT another port (default 8010)."
            )
        return self


class InventorySettings(CommonSettings):
    database_url: str = Field(
        "postgresql://inventory:inventory@127.0.0.1:5432/inventory", alias="INVENTORY_DATABASE_URL"
    )
    port: int = Field(8001, alias="INVENTORY_PORT")
    # Worker processes; their consumers share the group's partitions (the SKU lock in the
    # decision transaction keeps two processes from deciding one SKU's orders at once).
    processes: int = Field(1, alias="INVENTORY_PROCESSES", ge=1, le=16)


class FulfilmentSettings(CommonSettings):
    database_url: str = Field(
        "postgresql://fulfilment:fulfilment@127.0.0.1:5432/fulfilment",
        alias="FULFILMENT_DATABASE_URL",
    )
    port: int = Field(8002, alias="FULFILMENT_PORT")
    # The deadline scan and the simulated supplier wake at their next due time, or when this
    # process commits a new one; this long at most, they look anyway (another instance's).
    scan_interval_s: float = Field(30.0, alias="FULFILMENT_SCAN_INTERVAL_S", gt=0)
    retry_after_s: float = Field(30.0, alias="FULFILMENT_RETRY_AFTER_S", gt=0)
    supplier_enabled: bool = Field(False, alias="SUPPLIER_ENABLED")
    supplier_delay_s: float = Field(5.0, alias="SUPPLIER_DELAY_S", ge=0)
    supplier_batch: int = Field(10, alias="SUPPLIER_BATCH", ge=1, le=10_000)
