"""Backend settings: environment variables with the KERNEX_ prefix, nested groups with `__`.

Any setting may instead be read from a file by appending `_FILE` to its variable name
(`KERNEX_DATABASE_URL_FILE=/run/secrets/db-url`), which is how Docker and Kubernetes secrets
are mounted. A value set directly wins over a file.
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "KERNEX_"
NESTED_DELIMITER = "__"
FILE_SUFFIX = "_FILE"

# Passwords that ship in examples and compose files; never acceptable in production.
KNOWN_DEFAULT_SECRETS = frozenset(
    {"", "kernex", "kernex-dev", "postgres", "password", "changeme", "minioadmin", "secret"}
)


class DatabaseSettings(BaseModel):
    """Connection pool tuning; the URL itself is `database_url`."""

    pool_size: int = Field(default=10, ge=1, le=200)
    max_overflow: int = Field(default=10, ge=0, le=200)
    pool_timeout_s: float = Field(default=10.0, gt=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    statement_timeout_ms: int = Field(default=15_000, ge=0)


class ApiSettings(BaseModel):
    """The HTTP server and request limits."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    page_size_default: int = Field(default=50, ge=1)
    page_size_max: int = Field(default=500, ge=1)
    # HTTPS: both set, `kernex-backend serve` speaks TLS only (plain HTTP on the port fails).
    tls_cert_file: Path | None = None  # PEM certificate chain
    tls_key_file: Path | None = None  # PEM private key
    # Behind a reverse proxy that terminates TLS: the proxies whose X-Forwarded-For/-Proto are
    # believed (comma-separated addresses, as uvicorn's forwarded_allow_ips). Empty: none, the
    # default, so a client can never claim another address or scheme.
    forwarded_allow_ips: str = ""
    # Say so when TLS is terminated in front of us, so that HSTS is sent.
    behind_https_proxy: bool = False

    @property
    def https(self) -> bool:
        """Whether clients reach the API over HTTPS (here or at the proxy)."""
        return self.tls_cert_file is not None or self.behind_https_proxy


class AuthSettings(BaseModel):
    """API key handling."""

    # last_used_at is written in batches so that authentication never writes per request.
    last_used_flush_interval_s: float = Field(default=30.0, gt=0)


class TelemetrySettings(BaseModel):
    """Heartbeat storage and presence history."""

    heartbeat_retention_days: int = Field(default=14, ge=1, le=3650)
    # Every online/offline change of every device is kept this long (the device page's
    # presence history); pruned by the same periodic job that maintains heartbeat partitions.
    presence_retention_days: int = Field(default=30, ge=1, le=3650)
    partitions_ahead_days: int = Field(default=3, ge=1, le=60)
    maintenance_interval_s: float = Field(default=3600.0, gt=0)
    # How far back a heartbeat that is not above the device's highest stored one is looked up
    # as a possible duplicate: a copy redelivered later than this (a worker that stored it and
    # died before acknowledging, back after so long) is stored again. Longer costs more per
    # late heartbeat (the device's rows in the window are read).
    duplicate_horizon_s: float = Field(default=86400.0, ge=60, le=7 * 86400)


class PkiSettings(BaseModel):
    """The online issuing CA (for CSR signing and revocation) and the broker it feeds."""

    # A CA directory made by `kernex-provision init-ca`; unset disables the certificate endpoints.
    ca_dir: Path | None = None
    ca_passphrase: SecretStr | None = None
    # The broker directory whose CRL and ACL are refreshed on revocation.
    broker_dir: Path | None = None
    # How the broker learns of it: "signal" sends SIGHUP to the PID in the directory's
    # mosquitto.pid (same host, same PID namespace); "watch" leaves it to the broker's runner
    # (`kernex-provision broker-run`), which reloads within a second of the files changing. In
    # containers, use "watch": a PID read from a shared volume means nothing in another
    # container, and signalling it could hit one of the backend's own processes.
    broker_reload: Literal["signal", "watch"] = "signal"
    device_cert_days: int = Field(default=365, ge=1, le=825)
    crl_valid_days: int = Field(default=7, ge=1, le=90)


class StorageSettings(BaseModel):
    """Where bundles live: any S3 API (MinIO, SeaweedFS, AWS) or a local directory."""

    backend: Literal["s3", "local"] = "s3"
    endpoint: str = "127.0.0.1:9000"  # host:port of the S3 API
    secure: bool = True  # HTTPS to the S3 API
    region: str | None = None
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    bucket: str = Field(default="kernex-bundles", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    local_dir: Path = Path("/var/lib/kernex/bundles")
    # The local backend serves its own signed download URLs under this base URL, signed with
    # this key (shared by every replica).
    public_base_url: str = "http://127.0.0.1:8000"
    download_signing_key: SecretStr = SecretStr("")
    # Presigned URLs are bearer credentials: short-lived. Devices ask for a fresh one when needed.
    url_expiry_s: int = Field(default=900, ge=5, le=3600)
    max_bundle_bytes: int = Field(default=2 * 1024**3, ge=1)
    # Retention: delete bundles older than this many days that nothing uses; None disables it.
    retention_days: int | None = Field(default=None, ge=1)
    retention_dry_run: bool = False
    retention_interval_s: float = Field(default=3600.0, gt=0)


class ReleaseSettings(BaseModel):
    """Which release keys the backend trusts."""

    # A directory of Ed25519 *.pub files from `kernex-release keygen`.
    trusted_keys_dir: Path | None = None
    # Development only: accept bundles without a release signature (logged loudly).
    allow_unsigned: bool = False


class MqttSettings(BaseModel):
    """The MQTT bridge: how the backend reaches the broker, and the fleet-state timings."""

    # Off by default so the API can run without a broker (tests, API-only replicas); the
    # compose file and `make demo` turn it on. `kernex-backend worker` runs it on its own.
    enabled: bool = False
    host: str = "localhost"
    port: int = Field(default=8883, ge=1, le=65535)
    # The backend's service identity, from `kernex-provision issue-service` (one per replica:
    # the broker makes the certificate's CN the client id).
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=600)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    # Replicas in the same group split device traffic between them ($share/<group>/...).
    share_group: str = Field(default="kernex", pattern=r"^[A-Za-z0-9_-]{1,32}$")
    # Presence messages and URL requests handled at once (each a database round trip).
    handler_concurrency: int = Field(default=16, ge=1, le=256)
    # Notices published at once (each waits for the broker's acknowledgement).
    publish_concurrency: int = Field(default=64, ge=1, le=1000)
    heartbeat_batch_size: int = Field(default=1000, ge=1, le=50_000)
    heartbeat_flush_interval_s: float = Field(default=0.5, gt=0)
    # Heartbeats waiting for the database beyond this are dropped (and counted).
    heartbeat_buffer: int = Field(default=50_000, ge=100)
    # Progress reports are applied in batches too, one transaction each.
    progress_batch_size: int = Field(default=500, ge=1, le=10_000)
    progress_flush_interval_s: float = Field(default=0.1, gt=0)
    # A device is marked offline after this long without a heartbeat or presence.
    offline_after_s: float = Field(default=95.0, gt=0)
    # An execution that has not reported for this long is TIMED_OUT.
    execution_timeout_s: float = Field(default=3600.0, gt=0)
    url_requests_per_minute: int = Field(default=6, ge=1)
    # PENDING executions are looked for this often (and at once when this replica creates a
    # deployment), then notified a batch (one transaction) at a time until none is left.
    notify_interval_s: float = Field(default=1.0, gt=0)
    notify_batch_size: int = Field(default=1000, ge=1, le=10_000)
    # Re-publish every live notice this often: the broker may have lost its retained store.
    reconcile_interval_s: float = Field(default=300.0, gt=0)
    sweep_interval_s: float = Field(default=15.0, gt=0)
    # Per-device traffic budgets, in messages per second, checked before a message is parsed
    # (docs/operations.md). The agent sends a heartbeat every 30 s and a few progress reports
    # per update step: these leave it a wide margin. A burst of `budget_burst_s` seconds' worth
    # may come at once (a reconnect flushing its queue).
    heartbeat_budget_per_s: float = Field(default=1.0, gt=0)
    progress_budget_per_s: float = Field(default=10.0, gt=0)
    presence_budget_per_s: float = Field(default=1.0, gt=0)
    url_request_budget_per_s: float = Field(default=0.5, gt=0)
    budget_burst_s: float = Field(default=20.0, ge=1)
    # A device dropping this many messages over budget within quarantine_window_s is cut off at
    # the broker for quarantine_s (0: never quarantine; an operator can release it earlier).
    quarantine_after_drops: int = Field(default=1000, ge=0)
    quarantine_window_s: float = Field(default=10.0, gt=0)
    quarantine_s: float = Field(default=900.0, ge=10)


class NoticeSettings(BaseModel):
    """Signing deployment notices: the backend's online notice key (docs/security.md).

    Devices refuse a notice that this key did not sign, and one whose expiry lies further ahead
    than they allow; a live notice is re-signed with a fresh expiry whenever it is re-published
    (at least every `mqtt.reconcile_interval_s`), so `ttl_s` only bounds how long a captured
    notice could be replayed."""

    # Ed25519 private key in PEM, from `kernex-provision notice-key` (its public part goes into
    # every device kit). Required when the MQTT bridge is on.
    key_file: Path | None = None
    ttl_s: int = Field(default=3600, ge=60, le=86400)


class MetricsSettings(BaseModel):
    """Prometheus metrics (docs/observability.md lists every series)."""

    # GET /metrics on the API, for a key with the read scope (Prometheus: bearer credentials).
    enabled: bool = True
    # Also serve /metrics without authentication on this port, in `serve` and `worker` alike
    # (the worker has no API): bind it where only Prometheus reaches it. None: off.
    port: int | None = Field(default=None, ge=1, le=65535)
    bind: str = "127.0.0.1"
    # Fleet and rollout figures come from PostgreSQL; they are read this often, never per scrape.
    refresh_interval_s: float = Field(default=15.0, gt=0)


class WebhookSettings(BaseModel):
    """Events out (docs/observability.md)."""

    interval_s: float = Field(default=1.0, gt=0)  # how often the outbox is looked at
    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=12, ge=1, le=100)  # 12: about a day with the backoff
    backoff_min_s: float = Field(default=5.0, gt=0)
    backoff_max_s: float = Field(default=3600.0, gt=0)
    disable_after_failures: int = Field(default=50, ge=1)
    # The outbox is pruned every prune_interval_s: events that no webhook wanted at once, and
    # events older than retention_days whose deliveries all finished (the delivery log with them).
    retention_days: int = Field(default=30, ge=1, le=3650)
    prune_interval_s: float = Field(default=3600.0, gt=0)
    # Loopback and link-local targets (the backend's own host, cloud metadata) are refused
    # unless this is set: for a receiver on the same host in development and tests.
    allow_private_targets: bool = False


class RolloutSettings(BaseModel):
    """The rollout controller (deployments/rollout.py), run by every backend process."""

    # How often each open deployment is stepped (also at once after a device finishes).
    interval_s: float = Field(default=1.0, gt=0, le=60)
    # How often a dynamic deployment looks for devices that match its selector now.
    dynamic_interval_s: float = Field(default=10.0, gt=0, le=3600)


class LogSettings(BaseModel):
    """Logging output."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # None: JSON when stderr is not a terminal, pretty when it is.
    json_output: bool | None = None


def _is_path_setting(model: type[BaseModel], key: str) -> bool:
    """Whether `key` (e.g. "api__tls_cert_file") names a setting itself, one whose name ends
    in _file (a path), rather than a secret to be read from a file."""
    *groups, leaf = key.split(NESTED_DELIMITER)
    for group in groups:
        field = model.model_fields.get(group)
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return leaf in model.model_fields


class _FileSecretsSource(PydanticBaseSettingsSource):
    """Reads `KERNEX_X_FILE` / `KERNEX_GROUP__X_FILE` variables as the contents of those files."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ builds the whole mapping at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, path in os.environ.items():
            if not (name.startswith(ENV_PREFIX) and name.endswith(FILE_SUFFIX)):
                continue
            key = name[len(ENV_PREFIX) : -len(FILE_SUFFIX)].lower()
            if not key or _is_path_setting(self.settings_cls, name[len(ENV_PREFIX) :].lower()):
                continue
            try:
                content = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(f"{name} points to an unreadable file: {exc.strerror}") from None
            *groups, leaf = key.split(NESTED_DELIMITER)
            target = values
            for group in groups:
                target = target.setdefault(group, {})
            target[leaf] = content
        return values


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Settings(BaseSettings):
    """All backend settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="ignore",
    )

    environment: Literal["development", "production"] = "production"
    database_url: SecretStr = Field(
        description="postgresql+asyncpg://user:password@host:port/database"
    )
    # When set (typically KERNEX_DATABASE_PASSWORD_FILE, a Docker or Kubernetes secret), it
    # replaces the password in database_url, so the URL can live in plain configuration.
    database_password: SecretStr | None = None
    db: DatabaseSettings = DatabaseSettings()
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    telemetry: TelemetrySettings = TelemetrySettings()
    pki: PkiSettings = PkiSettings()
    storage: StorageSettings = StorageSettings()
    release: ReleaseSettings = ReleaseSettings()
    mqtt: MqttSettings = MqttSettings()
    notice: NoticeSettings = NoticeSettings()
    rollout: RolloutSettings = RolloutSettings()
    metrics: MetricsSettings = MetricsSettings()
    webhooks: WebhookSettings = WebhookSettings()
    log: LogSettings = LogSettings()
    migrations_dir: Path = Path(__file__).resolve().parents[3] / "migrations"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSecretsSource(settings_cls))

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.database_password is not None:
            self.database_url = SecretStr(
                _with_password(
                    self.database_url.get_secret_value(), self.database_password.get_secret_value()
                )
            )
        url = urlsplit(self.database_url.get_secret_value())
        if url.scheme != "postgresql+asyncpg":
            raise ValueError("database_url must use the postgresql+asyncpg:// scheme")
        if self.environment == "production" and url.password in KNOWN_DEFAULT_SECRETS - {""}:
            raise ValueError(
                "database_url uses a well-known default password; set a real one, "
                "or KERNEX_ENVIRONMENT=development for local use"
            )
        if self.environment == "production":
            if self.release.allow_unsigned:
                raise ValueError("release.allow_unsigned is for development only")
            if self.storage.backend == "s3" and (
                self.storage.secret_key.get_secret_value() in KNOWN_DEFAULT_SECRETS
            ):
                raise ValueError("storage.secret_key is empty or a well-known default")
            if (
                self.storage.backend == "local"
                and len(self.storage.download_signing_key.get_secret_value()) < 32
            ):
                raise ValueError("storage.download_signing_key needs at least 32 characters")
        if (self.api.tls_cert_file is None) != (self.api.tls_key_file is None):
            raise ValueError("api.tls_cert_file and api.tls_key_file go together: set both")
        if self.mqtt.enabled and None in (
            self.mqtt.ca_file,
            self.mqtt.cert_file,
            self.mqtt.key_file,
        ):
            raise ValueError("mqtt.enabled needs mqtt.ca_file, mqtt.cert_file and mqtt.key_file")
        if self.mqtt.enabled and self.notice.key_file is None:
            raise ValueError(
                "mqtt.enabled needs notice.key_file: devices refuse unsigned notices "
                "(kernex-provision notice-key makes one)"
            )
        if self.notice.ttl_s <= 2 * self.mqtt.reconcile_interval_s:
            raise ValueError(
                "notice.ttl_s must exceed twice mqtt.reconcile_interval_s, or retained notices "
                "expire before they are re-signed"
            )
        if self.api.page_size_default > self.api.page_size_max:
            raise ValueError("api.page_size_default must not exceed api.page_size_max")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()  # database_url comes from the environment
