"""The audit trail: one append-only row per event, written in the same transaction as the state
change it describes, as a DICOM PS3.15 A.5 event (`audit_codes`) and a link of a hash chain
(`audit_chain`). Nothing in the node updates or deletes an audit row.

After a commit, each new row is handed to the registered sinks (e.g. the syslog forwarder); a
sink must return at once (queue the row) and never raise into the caller's path.
"""

from __future__ import annotations

import datetime as dt
import enum
import getpass
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.audit import chain as audit_chain
from dicom_node.audit.codes import describe
from dicom_node.store.schema import AuditEvent, Instance

log = logging.getLogger(__name__)

PROCESS = f"dicom-node@{socket.gethostname()}:{os.getpid()}"
OUTBOX = "dicom_node.audit_outbox"


class Event(enum.StrEnum):
    NODE_START = "node_start"
    NODE_STOP = "node_stop"
    ASSOCIATION_ACCEPTED = "association_accepted"
    ASSOCIATION_REJECTED = "association_rejected"
    INSTANCE_RECEIVED = "instance_received"
    INSTANCE_REJECTED = "instance_rejected"
    STUDY_READY = "study_ready"
    JOB_STARTED = "job_started"
    JOB_FINISHED = "job_finished"
    JOB_FAILED = "job_failed"
    JOB_SKIPPED = "job_skipped"
    IMAGE_SKIPPED = "image_skipped"
    STUDY_REPROCESS = "study_reprocess"
    RESULTS_RETRACTED = "results_retracted"
    INSTANCES_PURGED = "instances_purged"
    RESULT_SENT = "result_sent"
    RESULT_FAILED = "result_failed"
    RESULT_DEAD_LETTERED = "result_dead_lettered"
    RESULT_COMMITTED = "result_committed"
    USER_LOGIN = "user_login"
    USER_LOGOUT = "user_logout"
    STUDY_VIEWED = "study_viewed"
    STUDY_QUERIED = "study_queried"
    FEEDBACK_RECORDED = "feedback_recorded"
    DELIVERY_RETRIED = "delivery_retried"
    LABELS_EXPORTED = "labels_exported"
    NOTIFICATION_SENT = "notification_sent"
    NOTIFICATION_FAILED = "notification_failed"
    AUDIT_LOG_USED = "audit_log_used"
    AUDIT_LOG_PURGED = "audit_log_purged"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    DUPLICATE = "duplicate"
    FAILURE = "failure"
    SKIPPED = "skipped"


# Study-level events about the model reading a study: their rows count the study's instances.
STUDY_ACCESS = frozenset(
    {
        Event.STUDY_READY,
        Event.STUDY_REPROCESS,
        Event.JOB_STARTED,
        Event.JOB_FINISHED,
        Event.JOB_FAILED,
        Event.JOB_SKIPPED,
    }
)
# Events whose participant is the person who started the process.
LAUNCHED = frozenset(
    {
        Event.NODE_START,
        Event.NODE_STOP,
        Event.AUDIT_LOG_USED,
        Event.LABELS_EXPORTED,
        Event.AUDIT_LOG_PURGED,
        Event.STUDY_REPROCESS,
        Event.RESULTS_RETRACTED,
        Event.INSTANCES_PURGED,
    }
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Peer:
    """The remote end of an association: who called us, from where, and whom they called."""

    calling_ae: str | None = None
    called_ae: str | None = None
    address: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditRecord:
    """One committed audit row, as handed to sinks (no patient data goes to logs from here)."""

    seq: int
    occurred_at: dt.datetime
    event_type: str
    event_id: str
    event_action: str
    outcome: str
    outcome_code: int
    calling_ae: str | None
    called_ae: str | None
    peer_address: str | None
    user_id: str | None
    process: str | None
    patient_id: str | None
    study_instance_uid: str | None
    sop_instance_uid: str | None
    sop_class_uid: str | None
    sop_class_counts: str | None
    job_id: int | None
    model: str | None
    detail: str | None
    prev_hash: str
    row_hash: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditRecord:
        return cls(**{name: row[name] for name in cls.__slots__})

    @property
    def counts(self) -> dict[str, int]:
        """SOP Class UID -> number of instances this event covers."""
        if self.sop_class_counts:
            return {str(k): int(v) for k, v in json.loads(self.sop_class_counts).items()}
        return {self.sop_class_uid: 1} if self.sop_class_uid else {}


Sink = Callable[[AuditRecord], None]
_sinks: list[Sink] = []
_switch = {"enabled": True}


def add_sink(sink: Sink) -> None:
    """Hand every committed audit row of this process to `sink` (it must not block)."""
    _sinks.append(sink)


def remove_sink(sink: Sink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def _set_enabled(enabled: bool) -> None:
    """Private switch for bench/bench_audit.py: turn the audit write off to measure its cost."""
    _switch["enabled"] = enabled


def current_user() -> str:
    """The person or service account running this process, as user@host."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        name = f"uid{os.getuid()}"
    return f"{name}@{socket.gethostname()}"


def record(
    session: Session,
    event: Event,
    outcome: Outcome = Outcome.SUCCESS,
    *,
    peer: Peer | None = None,
    patient_id: str | None = None,
    study_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
    job_id: int | None = None,
    model: str | None = None,
    detail: str | None = None,
    user_id: str | None = None,
    sop_class_counts: Mapping[str, int] | None = None,
) -> None:
    """Add one audit row to `session`; it commits with the caller's unit of work."""
    if not _switch["enabled"]:
        return
    peer = peer or Peer()
    event_id, action, outcome_code = describe(event.value, outcome.value)
    values: dict[str, Any] = {
        "event_type": event.value,
        "event_id": event_id,
        "event_action": action,
        "outcome": outcome.value,
        "outcome_code": outcome_code,
        "calling_ae": peer.calling_ae or None,
        "called_ae": peer.called_ae or None,
        "peer_address": peer.address or None,
        "user_id": user_id or (current_user() if event in LAUNCHED else None),
        "process": PROCESS,
        "patient_id": patient_id or None,
        "study_instance_uid": study_instance_uid or None,
        "sop_instance_uid": sop_instance_uid or None,
        "sop_class_uid": sop_class_uid or None,
        "sop_class_counts": _counts_text(sop_class_counts),
        "job_id": job_id,
        "model": model or None,
        "detail": detail or None,
    }
    _enrich(session, event, values)
    row = audit_chain.append(session, values)
    if _sinks:
        session.info.setdefault(OUTBOX, []).append(AuditRecord.from_row(row))


def _counts_text(counts: Mapping[str, int] | None) -> str | None:
    if not counts:
        return None
    return json.dumps(dict(sorted(counts.items())), separators=(",", ":"))


def _enrich(session: Session, event: Event, values: dict[str, Any]) -> None:
    """Fill in the participant objects callers do not pass: the patient of a study (from its
    received instances' rows) and, for study-level model events, the SOP classes and counts."""
    study = values["study_instance_uid"]
    if study is None:
        return
    if values["patient_id"] is None:
        values["patient_id"] = session.scalar(
            select(AuditEvent.patient_id)
            .where(AuditEvent.study_instance_uid == study, AuditEvent.patient_id.is_not(None))
            .limit(1)
        )
    if event in STUDY_ACCESS and values["sop_class_counts"] is None:
        rows = session.execute(
            select(Instance.sop_class_uid, func.count())
            .where(Instance.study_instance_uid == study)
            .group_by(Instance.sop_class_uid)
        ).all()
        values["sop_class_counts"] = _counts_text({uid: int(n) for uid, n in rows})


def _deliver_outbox(session: Session) -> None:
    records = session.info.pop(OUTBOX, None)
    if not records:
        return
    for sink in list(_sinks):
        for item in records:
            try:
                sink(item)
            except Exception:  # a sink must never break the caller's unit of work
                log.exception("audit sink failed")


def _drop_outbox(session: Session, *_: Any) -> None:
    session.info.pop(OUTBOX, None)


sa_event.listen(Session, "after_commit", _deliver_outbox)
sa_event.listen(Session, "after_rollback", _drop_outbox)
