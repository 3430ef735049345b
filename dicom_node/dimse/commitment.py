"""Storage Commitment Push Model (PS3.4 Annex J): after sending results to a destination that
is asked to, the node requests commitment (N-ACTION, Action Type 1, a new Transaction UID) on
the same association; the destination answers later with an N-EVENT-REPORT, on a new
association to the node's SCP (as Orthanc does) or on the same one, naming the instances it
committed to keep and those it did not (with a Failure Reason)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.events import Event as PynetdicomEvent
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node import audit, metrics
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.store.schema import Delivery, utcnow

log = logging.getLogger(__name__)

StorageCommitmentPushModel = UID("1.2.840.10008.1.20.1")
# The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5)
PUSH_MODEL_INSTANCE = UID("1.2.840.10008.1.20.1.1")
REQUEST_COMMITMENT = 1  # Action Type ID (PS3.4 J.3.2)
ALL_COMMITTED, FAILURES_EXIST = 1, 2  # Event Type IDs (PS3.4 J.3.3)


@dataclass(frozen=True, kw_only=True, slots=True)
class CommitmentReport:
    """An N-EVENT-REPORT of a destination: its transaction, the instances committed, and the
    instances not committed with their Failure Reason (PS3.4 J.3.3.1.1)."""

    transaction_uid: str
    committed: tuple[str, ...]
    failed: Mapping[str, int]


def read_report(event: PynetdicomEvent) -> CommitmentReport | None:
    """The commitment report an EVT_N_EVENT_REPORT carries; None when it is no report of the
    Storage Commitment Push Model."""
    request = cast(N_EVENT_REPORT, event.request)
    if str(request.AffectedSOPClassUID or "") != StorageCommitmentPushModel:
        return None
    if request.EventTypeID not in (ALL_COMMITTED, FAILURES_EXIST):
        return None
    info = event.event_information
    committed = tuple(
        str(item.ReferencedSOPInstanceUID) for item in info.get("ReferencedSOPSequence", [])
    )
    failed = {
        str(item.ReferencedSOPInstanceUID): int(item.get("FailureReason", 0x0110))
        for item in info.get("FailedSOPSequence", [])
    }
    return CommitmentReport(
        transaction_uid=str(info.get("TransactionUID", "")), committed=committed, failed=failed
    )


def reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    """An item of Referenced SOP Sequence."""
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def record_report(session: Session, report: CommitmentReport, peer: Peer) -> int:
    """Within the caller's transaction: each delivery of the transaction committed, or failed
    (due again now: it is sent again, on the retry schedule), audited; how many were known."""
    rows = session.scalars(
        select(Delivery).where(
            Delivery.commitment_uid == report.transaction_uid, Delivery.state == "committing"
        )
    ).all()
    now = utcnow()
    for row in rows:
        reason = report.failed.get(row.sop_instance_uid)
        committed = reason is None and row.sop_instance_uid in report.committed
        row.updated_at = now
        if committed:
            row.state, row.committed_at, row.due_at = "committed", now, None
            detail = f"committed by the destination (transaction {report.transaction_uid})"
        else:
            row.state, row.due_at = "failed", now
            row.first_failed_at = row.first_failed_at or now
            why = f"failure reason 0x{reason:04X}" if reason is not None else "not in the report"
            row.last_error = detail = f"not committed by the destination ({why}): sent again"
        destination = f"{row.destination_ae}@{row.destination_host}:{row.destination_port}"
        metrics.DELIVERIES.labels(destination=destination, outcome=row.state).inc()
        audit.record(
            session,
            Event.RESULT_COMMITTED,
            Outcome.SUCCESS if committed else Outcome.FAILURE,
            peer=peer,
            study_instance_uid=row.study_instance_uid,
            sop_instance_uid=row.sop_instance_uid,
            sop_class_uid=row.sop_class_uid,
            job_id=row.job_id,
            detail=detail,
        )
    return len(rows)
