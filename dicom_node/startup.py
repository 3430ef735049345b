"""Start-up of a node's parts, each check failing with a `StartupError` whose one-line message
names the cause and what to do: the database (reached and migrated), the spool (writable), the
model bundle and device, the C-STORE SCU towards the destinations; and the workers' services."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.dimse.scu import DimseSender, Sender
from dicom_node.dimse.tls import client_context
from dicom_node.errors import ConfigError, StartupError
from dicom_node.model.batching import BatchingClassifier
from dicom_node.model.bundle import Bundle, BundleError, load_bundle
from dicom_node.model.decode_pool import DecodePool
from dicom_node.model.infer import Classifier, batch_size_for, resolve_device
from dicom_node.notify import critical_thresholds
from dicom_node.pipeline.routes import ModelRoute
from dicom_node.pipeline.run import Services
from dicom_node.settings import Settings
from dicom_node.store.database import open_database
from dicom_node.store.spool import Spool, write_atomic

log = logging.getLogger(__name__)


def build_services(
    settings: Settings, sessions: sessionmaker[Session], *, sender: Sender | None = None
) -> Services:
    """Load and validate the model bundles and assemble what workers need."""
    first, device = _load_model(settings)
    max_batch = batch_size_for(device, settings.max_batch)
    bundles = [first, *(_load_bundle(p, "model_bundles") for p in settings.model_bundles)]
    names = [bundle.identity.name for bundle in bundles]
    if len(set(names)) != len(names):
        raise StartupError(
            f"model bundles must have different names, got {names}: rename one in its "
            "configs/metadata.json"
        )
    paths = [settings.model_bundle, *settings.model_bundles]
    return Services(
        settings=settings,
        sessions=sessions,
        spool=Spool(settings.spool_dir),
        models=tuple(
            _route(bundle, path, settings, device, max_batch, first=k == 0)
            for k, (bundle, path) in enumerate(zip(bundles, paths, strict=True))
        ),
        sender=sender or default_sender(settings),
        decode_pool=(
            DecodePool(settings.decode_processes, memory_bytes=settings.decode_memory_bytes)
            if settings.decode_processes
            else None
        ),
    )


def _route(
    bundle: Bundle,
    path: Path,
    settings: Settings,
    device: torch.device,
    max_batch: int,
    *,
    first: bool,
) -> ModelRoute:
    """A model the node serves: its bundle (and scope), batching classifier and critical
    findings (the site's critical_findings apply to the first model, the others use their
    bundle's)."""
    log.info(
        "model %s %s on %s, batches of up to %d, reads %s",
        bundle.identity.name,
        bundle.identity.version,
        device,
        max_batch,
        bundle.scope.describe(),
    )
    return ModelRoute(
        bundle=bundle,
        batcher=BatchingClassifier(
            _classifier(bundle, device, path, max_batch),
            max_batch=max_batch,
            max_wait_ms=settings.max_wait_ms,
        ),
        critical=critical_of(settings, bundle) if first else bundle.critical_findings,
    )


def critical_of(settings: Settings, bundle: Bundle) -> Mapping[str, float]:
    """The critical findings in force (the site's setting, else the bundle's), checked."""
    try:
        return critical_thresholds(
            settings.critical_findings, bundle.critical_findings, bundle.labels
        )
    except ConfigError as exc:
        raise StartupError(str(exc)) from exc


def _load_bundle(path: Path, setting: str) -> Bundle:
    try:
        return load_bundle(path)
    except BundleError as exc:
        raise StartupError(
            f"model bundle {path} is missing or invalid ({exc}): set {setting} to a MONAI "
            "bundle folder (models/<name>, see the README)"
        ) from exc


def _load_model(settings: Settings) -> tuple[Bundle, torch.device]:
    bundle = _load_bundle(settings.model_bundle, "model_bundle")
    try:
        return bundle, resolve_device(settings.device)
    except ValueError as exc:
        raise StartupError(f'{exc}: set device = "cpu" or "auto"') from exc


def _classifier(bundle: Bundle, device: torch.device, path: Path, max_batch: int) -> Classifier:
    try:
        return Classifier(bundle, device, max_batch=max_batch)
    except BundleError as exc:
        raise StartupError(
            f"model bundle {path} cannot be loaded ({exc}): check its models/model.pt and configs"
        ) from exc


def connect_database(url: str, spool_root: Path | None = None) -> sessionmaker[Session]:
    """The database reached and migrated (spool paths relative to `spool_root` when given); a
    StartupError naming the URL (password hidden)."""
    try:
        return open_database(url, spool_root)
    except (SQLAlchemyError, OSError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StartupError(
            f"database {shown} cannot be used ({reason}): check database_url and that the "
            "database server is running and reachable"
        ) from exc


def check_spool(spool_dir: Path) -> None:
    """The spool folder exists (created if need be) and takes a durable write."""
    probe = spool_dir / ".write-test"
    try:
        write_atomic(probe, b"dicom-node")
        probe.unlink()
    except OSError as exc:
        raise StartupError(
            f"spool folder {spool_dir} is not writable ({exc.strerror or exc}): fix its "
            "permissions or set spool_dir to a writable folder"
        ) from exc


def default_sender(settings: Settings) -> DimseSender:
    """The C-STORE SCU towards the destinations, with the TLS client context when any of them
    uses DICOM TLS."""
    tls = None
    if any(d.tls for d in settings.destinations):
        tls = client_context(
            cert=settings.tls_cert_file, key=settings.tls_key_file, ca=settings.tls_ca_file
        )
    return DimseSender(
        ae_title=settings.ae_title,
        max_pdu=settings.max_pdu,
        attempts=settings.send_attempts,
        backoff_seconds=settings.send_backoff_seconds,
        timeout_seconds=settings.send_timeout_seconds,
        tls_context=tls,
    )
