"""The SQL schema: instances, studies, jobs, results, reports, deliveries, the audit trail.

Managed by Alembic (`dicom_node/store/migrations`); the engine is made in `database`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

UID = String(64)
AE = String(16)


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores naive UTC (comparable as text on SQLite), returns timezone-aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: use timezone-aware UTC")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    pass


class Instance(Base):
    """A received instance, stored durably in the spool before it was acknowledged."""

    __tablename__ = "instances"

    sop_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("studies.study_instance_uid"), index=True
    )
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    calling_ae: Mapped[str] = mapped_column(AE)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # False: an object the model never reads, spooled without its pixel data (its header only)
    pixels_kept: Mapped[bool] = mapped_column(Boolean, default=True)
    # when the retention policy removed its file from the spool (the row stays)
    purged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Study(Base):
    """A study being received or analysed. `state`: receiving, ready."""

    __tablename__ = "studies"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    open_associations: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_instance_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    ready_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    calling_ae: Mapped[str] = mapped_column(AE)


class Job(Base):
    """Analysis of one study. `state`: queued, running, done, skipped, failed, superseded.
    `reason`: received (the study became ready) or reprocess (an operator asked)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_lease", "state", "lease_expires_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(
        UID, ForeignKey("studies.study_instance_uid"), index=True
    )
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(16), default="received")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class Result(Base):
    """One finding of one analysed image: probability, decision and the model that made it."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    label: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    present: Mapped[bool] = mapped_column(Boolean)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))


class Skip(Base):
    """An image of a study that was not analysed, with the reason."""

    __tablename__ = "skips"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    reason: Mapped[str] = mapped_column(Text)


class Delivery(Base):
    """A result object owed to a destination. `state`: pending (to be sent, at `due_at`), sent,
    committing (sent to a destination with storage commitment, its report awaited until
    `due_at`, then sent again), committed, failed (retried automatically at `due_at`), dead
    (the retry window passed: dead-lettered, `dicom-node retry` still sends it), withdrawn.
    `lease_*`: the delivery lane that is sending it now (a lane that died loses it)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_state", "state"),
        Index("ix_deliveries_due", "destination_ae", "state", "due_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    destination_ae: Mapped[str] = mapped_column(AE)
    destination_host: Mapped[str] = mapped_column(String(255))
    destination_port: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    first_failed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # storage commitment: the N-ACTION's Transaction UID, and when the destination committed
    commitment_uid: Mapped[str | None] = mapped_column(UID, nullable=True, index=True)
    committed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Notification(Base):
    """A critical-finding notification owed to a receiver (`kind`: webhook or hl7), one per
    study, result version (the SR's SOP Instance UID) and kind. `state`: pending, sent, failed
    (retried at `due_at`), dead. `payload`: the exact bytes sent (JSON or the HL7 message)."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_version", "sr_sop_instance_uid", "kind", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sr_sop_instance_uid: Mapped[str] = mapped_column(UID)
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class User(Base):
    """A console and API account. `role`: viewer, operator, auditor or admin (docs/console.md);
    `password_hash`: argon2id (argon2-cffi)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiToken(Base):
    """A REST API token of a user: only its SHA-256 is kept (shown once when made)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Feedback(Base):
    """A reader's verdict on one finding of one analysed image: `verdict` agree, disagree or
    missed (a finding the model did not call); the result it judged (job, SR version)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    label: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), nullable=True)
    user_name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class ResultObject(Base):
    """Every object the node emitted for a study (SR, Grad-CAM SC, rejection KOS), one row per SOP
    Instance UID however often it is sent, with the file its bytes live in (a resend sends these
    bytes again, unchanged).

    SRs also record what they state (`content_digest`, `structured_reports.sr.content_digest`) and
    the SR they replace (`predecessor_sop_instance_uid`). `instance_number` increases within each
    series across versions. A retracted object names the KOS that withdrew it (`retracted_by`).
    """

    __tablename__ = "result_objects"
    __table_args__ = (Index("ix_result_objects_series", "series_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # sr, sc, kos
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int] = mapped_column(Integer)
    content_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    predecessor_sop_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    retracted_by: Mapped[str | None] = mapped_column(UID, nullable=True)
    # the model whose result an SR or SC states (a new version replaces only its own model's)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)


class AuditEvent(Base):
    """Append-only audit trail: one row per event; rows are never updated or deleted.

    Each row is a DICOM PS3.15 A.5 event (`event_id`, `event_action`, `outcome_code`) and a link
    of a hash chain: `seq` is its position, `prev_hash` the `row_hash` of row `seq - 1`, and
    `row_hash` the SHA-256 of its content and `prev_hash` (`dicom_node.audit.chain`).
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_study", "study_instance_uid"),
        Index("ix_audit_type_time", "event_type", "occurred_at"),
        Index("ix_audit_seq", "seq", unique=True),
        Index("ix_audit_patient", "patient_id"),
        Index("ix_audit_time", "occurred_at"),
        Index("ix_audit_calling_ae", "calling_ae"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    event_type: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(16))
    event_action: Mapped[str] = mapped_column(String(1))
    outcome: Mapped[str] = mapped_column(String(16))
    outcome_code: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(AE, nullable=True)
    called_ae: Mapped[str | None] = mapped_column(AE, nullable=True)
    peer_address: Mapped[str | None] = mapped_column(String(255), nullable=True)
    user_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    study_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    sop_class_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    sop_class_counts: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    process: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The one row naming the newest link of the audit chain. Writers lock it (`FOR UPDATE` on
    PostgreSQL, the write lock on SQLite) so that links are added one at a time."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    row_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """Written by a purge: the chain was cut after `last_seq`, whose hash was `last_hash`;
    verification starts from the newest checkpoint. Append-only, like the audit table."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))
    purged_rows: Mapped[int] = mapped_column(BigInteger)
    cutoff: Mapped[dt.datetime] = mapped_column(UTCDateTime)
