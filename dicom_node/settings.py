"""Settings: built once from a TOML file and DICOM_NODE_<KEY> environment variables (which win),
with pydantic-settings; validated at start-up with errors that name the key and where it came
from; immutable afterwards.

Relative paths in the file (and a relative SQLite path in its `database_url`) resolve against the
file's folder; relative paths from the environment or the defaults against the working folder.
Lists and tables are JSON in the environment (`DICOM_NODE_DESTINATIONS='[{...}]'`);
`DICOM_NODE_ALLOWED_CALLING_AETS` may also be a comma-separated list.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from dicom_node.errors import ConfigError
from structured_reports.results import ScFindings

ENV_PREFIX = "DICOM_NODE_"
_AE_TITLE = r"^[ -~]{1,16}$"  # PS3.5 AE VR: 16 characters of the default repertoire
SQLITE = "sqlite:///"
DATABASE_SCHEMES = (SQLITE, "postgresql+psycopg://")
PATH_KEYS = (
    "spool_dir",
    "model_bundle",
    "tls_cert_file",
    "tls_key_file",
    "tls_ca_file",
    "audit_syslog_ca_file",
    "audit_syslog_cert_file",
    "audit_syslog_key_file",
)


class Destination(BaseModel):
    """A DICOM peer that receives the node's results by C-STORE.

    `send_sr` / `send_sc` choose the objects it gets; `sc_findings` what its Grad-CAM SCs show:
    "present" (one SC per image, findings above threshold), "all" (the same picture, every
    finding's probability listed) or "per_finding" (one SC per finding above threshold, each
    with that finding's heatmap). See docs/results.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: str = Field(pattern=_AE_TITLE)
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    send_sr: bool = True
    send_sc: bool = True
    sc_findings: ScFindings = "present"
    tls: bool = False  # DICOM TLS towards this destination (its certificate verified)
    tls_server_name: str | None = None  # the name its certificate must bear (default: host)
    storage_commitment: bool = False  # ask it to commit to keeping each result (N-ACTION)

    @field_validator("ae_title")
    @classmethod
    def _strip_ae(cls, value: str) -> str:
        if value.strip() != value or not value.strip():
            raise ValueError("AE title must not have leading or trailing spaces or be blank")
        return value

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class KnownPeer(BaseModel):
    """A sender the node accepts: its calling AE title, the addresses it may come from (host
    names, addresses or CIDR networks; any when empty), whether it must use DICOM TLS."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: str = Field(pattern=_AE_TITLE)
    addresses: tuple[str, ...] = ()
    require_tls: bool = False


class Settings(BaseSettings):
    """Every setting of the node; `config/dicom-node.toml` documents each with its default."""

    model_config = SettingsConfigDict(
        frozen=True, extra="forbid", env_prefix=ENV_PREFIX, case_sensitive=False
    )

    ae_title: str = Field(default="DICOMNODE", pattern=_AE_TITLE)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aets: Annotated[tuple[str, ...], NoDecode] = ()
    peers: tuple[KnownPeer, ...] = ()
    tls_port: int | None = Field(default=None, ge=0, le=65535)
    listen_plain: bool = True
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_require_client_certificate: bool = True
    max_pdu: int = Field(default=131072, ge=0)
    max_associations: int = Field(default=256, ge=1, le=4096)
    max_associations_per_peer: int = Field(default=256, ge=1, le=4096)
    association_timeout_seconds: float = Field(default=10.0, gt=0)
    idle_timeout_seconds: float = Field(default=60.0, gt=0)
    max_instance_bytes: int = Field(default=1 << 30, ge=1 << 20)
    min_free_disk_bytes: int = Field(default=1 << 30, ge=0)
    spool_dir: Path = Path("var/spool")
    spool_retention_days: float | None = Field(default=30.0, gt=0)
    database_url: str = "sqlite:///var/dicom-node.db"
    database_timeout_seconds: float = Field(default=8.0, gt=0, le=600)
    model_bundle: Path = Path("models/cxr14-densenet121-demo")
    model_bundles: tuple[Path, ...] = ()  # further models, each reading the images of its scope
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: int | None = Field(default=None, ge=1, le=1024)  # None: 8 on CPU, 256 on CUDA
    max_wait_ms: float = Field(default=10.0, ge=0, le=10_000)
    decode_processes: int = Field(default=0, ge=0, le=256)
    max_decoded_pixels: int = Field(default=60_000_000, ge=1_000_000)
    decode_memory_bytes: int = Field(default=8 << 30, ge=256 << 20)
    quiet_seconds: float = Field(default=3.0, ge=0)
    workers: int = Field(default=1, ge=0, le=64)
    poll_seconds: float = Field(default=0.5, gt=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    max_job_attempts: int = Field(default=3, ge=1)
    destinations: tuple[Destination, ...] = ()
    send_attempts: int = Field(default=4, ge=1)
    send_backoff_seconds: float = Field(default=1.0, ge=0)
    send_timeout_seconds: float = Field(default=30.0, gt=0)
    commitment_timeout_seconds: float = Field(default=600.0, gt=0)
    retry_initial_seconds: float = Field(default=30.0, gt=0)
    retry_max_interval_seconds: float = Field(default=900.0, gt=0)
    retry_window_seconds: float = Field(default=86400.0, gt=0)
    http_host: str = "127.0.0.1"
    http_enabled: bool = True
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_console: bool = True  # the web console and the REST API beside the probes and metrics
    console_host: str | None = (
        None  # the console and API on their own interface (default http_host)
    )
    console_port: int | None = Field(default=None, ge=0, le=65535)  # None: beside the probes
    http_session_secret: str | None = None  # signs session cookies; unset: random per process
    http_secure_cookies: bool = False  # true behind a TLS-terminating proxy (cookie Secure)
    audit_verify_every_seconds: float = Field(default=3600.0, gt=0)
    critical_findings: dict[str, float] | None = None  # None: the bundle's list
    webhook_url: str | None = None
    webhook_secret: str | None = None
    hl7_host: str | None = None
    hl7_port: int = Field(default=2575, ge=1, le=65535)
    hl7_sending_application: str = "DICOM-NODE"
    hl7_sending_facility: str = "RADIOLOGY"
    hl7_receiving_application: str = "RIS"
    hl7_receiving_facility: str = "HOSPITAL"
    notify_timeout_seconds: float = Field(default=10.0, gt=0)
    sc_max_side: int = Field(default=1024, ge=64, le=4096)
    require_view_position: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    audit_retention_days: float = Field(default=2192, gt=0)
    audit_syslog_host: str | None = None
    audit_syslog_port: int = Field(default=6514, ge=1, le=65535)
    audit_syslog_ca_file: Path | None = None
    audit_syslog_cert_file: Path | None = None
    audit_syslog_key_file: Path | None = None
    audit_syslog_queue_size: int = Field(default=10000, ge=1)
    audit_enterprise_site: str | None = None

    @field_validator("allowed_calling_aets", mode="before")
    @classmethod
    def _split_aets(cls, value: Any) -> Any:
        """The environment gives a JSON list or a comma-separated one."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list ({exc.msg})") from exc
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_aets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for aet in value:
            if not aet.strip() or len(aet) > 16:
                raise ValueError(f"invalid AE title {aet!r}")
        return value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        wants_tls = self.tls_port is not None or any(d.tls for d in self.destinations)
        if self.tls_port is not None and not (self.tls_cert_file and self.tls_key_file):
            raise ValueError("tls_port needs tls_cert_file and tls_key_file")
        if wants_tls and self.tls_require_client_certificate and self.tls_ca_file is None:
            raise ValueError("DICOM TLS needs tls_ca_file (the CA bundle that verifies peers)")
        if not self.listen_plain and self.tls_port is None:
            raise ValueError("listen_plain = false needs tls_port: the node would not listen")
        return self

    @model_validator(mode="after")
    def _check_notifications(self) -> Settings:
        if self.webhook_url is not None and not self.webhook_secret:
            raise ValueError("webhook_url needs webhook_secret (the key its HMAC signature uses)")
        if self.retry_max_interval_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_interval_seconds must not be below retry_initial_seconds")
        return self

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value.startswith(DATABASE_SCHEMES):
            return value
        scheme = value.split("://", 1)[0] if "://" in value else "(none)"
        if scheme in {"postgres", "postgresql", "postgresql+psycopg2"}:
            raise ValueError(
                f"URL scheme {scheme}:// is not supported: write postgresql+psycopg://"
                "user@host:port/database (the driver the node installs)"
            )
        raise ValueError(
            f"URL scheme {scheme} is not supported: use sqlite:///PATH or "
            "postgresql+psycopg://user@host:port/database"
        )


class _Environment(EnvSettingsSource):
    """DICOM_NODE_<KEY> variables of `environ` (the process environment unless given)."""

    def __init__(self, environ: Mapping[str, str] | None) -> None:
        self._environ = environ  # read by _load_env_vars, which the base class calls
        super().__init__(Settings)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        if self._environ is None:
            return super()._load_env_vars()
        return {k.lower(): v for k, v in self._environ.items()}


def _from_environment(environ: Mapping[str, str] | None) -> dict[str, Any]:
    names = os.environ if environ is None else environ
    known = Settings.model_fields
    for name in names:
        if name.upper().startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() not in known:
            raise ConfigError(f"unknown setting {name} (known keys: {', '.join(sorted(known))})")
    return _read(_Environment(environ), "the environment")


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            values = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} does not exist") from exc
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc
    return _relative_to(path.resolve().parent, values)


def _relative_to(folder: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Relative paths of a file's values, resolved against the file's folder."""
    resolved = dict(values)
    for key in PATH_KEYS:
        if isinstance(resolved.get(key), str) and not Path(resolved[key]).is_absolute():
            resolved[key] = os.path.normpath(folder / resolved[key])
    bundles = resolved.get("model_bundles")
    if isinstance(bundles, list):
        resolved["model_bundles"] = [
            os.path.normpath(folder / b) if isinstance(b, str) and not Path(b).is_absolute() else b
            for b in bundles
        ]
    url = resolved.get("database_url")
    if isinstance(url, str) and url.startswith(SQLITE) and url != SQLITE + ":memory:":
        database = Path(url.removeprefix(SQLITE))
        if not database.is_absolute():
            resolved["database_url"] = SQLITE + os.path.normpath(folder / database)
    return resolved


def _read(source: PydanticBaseSettingsSource, where: str) -> dict[str, Any]:
    try:
        return dict(source())
    except SettingsError as exc:
        cause = exc.__cause__
        detail = f": {cause}" if isinstance(cause, ValueError) else ""
        raise ConfigError(f"{_origin_of(str(exc), where)}{detail}") from exc


def _origin_of(message: str, where: str) -> str:
    """`error parsing value for field "destinations" from source ...` in the node's words."""
    if 'field "' in message:
        key = message.split('field "', 1)[1].split('"', 1)[0]
        return f"setting {ENV_PREFIX}{key.upper()} from {where} is not valid JSON"
    return f"settings from {where}: {message}"


def _describe(exc: ValidationError, origins: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(settings)"
        top = str(error["loc"][0]) if error["loc"] else ""
        where = origins.get(top, "the defaults")
        lines.append(f"setting {key!r} (from {where}): {error['msg']}")
    return "; ".join(lines)


def load_settings(
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: file, then environment (wins), then explicit overrides (tests, CLI).

    `environ` replaces the process environment (tests and the demo pass `{}`). Raises
    ConfigError naming the key and where its value came from.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        layers.append((f"file {config_file}", _from_file(config_file)))
    layers.append(("the environment", _from_environment(environ)))
    layers.append(("the caller", dict(overrides or {})))
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for where, layer in layers:
        values.update(layer)
        for key in layer:
            origins[key] = f"{ENV_PREFIX}{key.upper()}" if where == "the environment" else where
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origins)) from exc
