"""Settings: built once from a TOML file and DICOM_NODE_<KEY> environment variables (which win),
validated at start-up with errors that name the key, immutable afterwards."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dicom_node.errors import ConfigError
from structured_reports.results import ScFindings

ENV_PREFIX = "DICOM_NODE_"
_AE_TITLE = r"^[ -~]{1,16}$"  # PS3.5 AE VR: 16 characters of the default repertoire


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

    @field_validator("ae_title")
    @classmethod
    def _strip_ae(cls, value: str) -> str:
        if value.strip() != value or not value.strip():
            raise ValueError("AE title must not have leading or trailing spaces or be blank")
        return value

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class Settings(BaseModel):
    """Every setting of the node; `config/dicom-node.toml` documents each with its default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ae_title: str = Field(default="DICOMNODE", pattern=_AE_TITLE)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aets: tuple[str, ...] = ()
    max_pdu: int = Field(default=131072, ge=0)
    spool_dir: Path = Path("var/spool")
    database_url: str = "sqlite:///var/dicom-node.db"
    model_bundle: Path = Path("models/cxr14-densenet121-demo")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: int = Field(default=32, ge=1, le=1024)
    max_wait_ms: float = Field(default=10.0, ge=0, le=10_000)
    decode_processes: int = Field(default=0, ge=0, le=256)
    quiet_seconds: float = Field(default=3.0, ge=0)
    workers: int = Field(default=1, ge=0, le=64)
    poll_seconds: float = Field(default=0.5, gt=0)
    lease_seconds: float = Field(default=120.0, gt=0)
    max_job_attempts: int = Field(default=3, ge=1)
    destinations: tuple[Destination, ...] = ()
    send_attempts: int = Field(default=4, ge=1)
    send_backoff_seconds: float = Field(default=1.0, ge=0)
    send_timeout_seconds: float = Field(default=30.0, gt=0)
    sc_max_side: int = Field(default=1024, ge=64, le=4096)
    require_view_position: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    audit_retention_days: float = Field(default=2192, gt=0)
    audit_syslog_host: str | None = None
    audit_syslog_port: int = Field(default=6514, ge=1, le=65535)
    audit_syslog_ca_file: Path | None = None
    audit_syslog_cert_file: Path | None = None
    audit_syslog_key_file: Path | None = None
    audit_syslog_queue_size: int = Field(default=10000, ge=1)
    audit_enterprise_site: str | None = None

    @field_validator("allowed_calling_aets")
    @classmethod
    def _check_aets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for aet in value:
            if not aet.strip() or len(aet) > 16:
                raise ValueError(f"invalid AE title {aet!r}")
        return value


def _env_value(key: str, raw: str) -> Any:
    """Parse an environment value: JSON for structured keys, comma lists for AE titles."""
    if key == "destinations":
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{ENV_PREFIX}DESTINATIONS is not valid JSON: {exc}") from exc
    if key == "allowed_calling_aets":
        text = raw.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return raw


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    known = Settings.model_fields
    values: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key not in known:
            raise ConfigError(f"unknown setting {name} (known keys: {', '.join(sorted(known))})")
        values[key] = _env_value(key, raw)
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from exc


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(settings)"
        lines.append(f"setting {key!r}: {error['msg']}")
    return "; ".join(lines)


def load_settings(
    config_file: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: file, then environment (wins), then explicit overrides (tests, CLI)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_from_file(config_file))
    values.update(_from_environment(os.environ if environ is None else environ))
    values.update(overrides or {})
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
