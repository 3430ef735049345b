"""The audit trail: one append-only row per event, written in the same transaction as the state
change it describes. Nothing in the node updates or deletes an audit row."""

from __future__ import annotations

import enum
import os
import socket
from dataclasses import dataclass

from sqlalchemy.orm import Session

from dicom_node.db import AuditEvent, utcnow

PROCESS = f"dicom-node@{socket.gethostname()}:{os.getpid()}"


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
    RESULT_SENT = "result_sent"
    RESULT_FAILED = "result_failed"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    DUPLICATE = "duplicate"
    FAILURE = "failure"
    SKIPPED = "skipped"


@dataclass(frozen=True, kw_only=True, slots=True)
class Peer:
    """The remote end of an association: who called us, from where, and whom they called."""

    calling_ae: str | None = None
    called_ae: str | None = None
    address: str | None = None


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
) -> None:
    """Add one audit row to `session`; it commits with the caller's unit of work."""
    peer = peer or Peer()
    session.add(
        AuditEvent(
            occurred_at=utcnow(),
            event_type=event.value,
            outcome=outcome.value,
            calling_ae=peer.calling_ae,
            called_ae=peer.called_ae,
            peer_address=peer.address,
            patient_id=patient_id,
            study_instance_uid=study_instance_uid,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            job_id=job_id,
            model=model,
            process=PROCESS,
            detail=detail,
        )
    )
