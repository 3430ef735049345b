"""Deliveries: result objects owed to destinations, sent and recorded (sent or failed, never
silently lost); failed ones stay visible and can be sent again (`dicom-node retry`)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.dimse.scu import Sender, SendOutcome
from dicom_node.settings import Destination
from dicom_node.store.schema import Delivery, utcnow

log = logging.getLogger(__name__)


def deliver(
    sessions: sessionmaker[Session],
    sender: Sender,
    delivery_ids: Sequence[int],
    *,
    model: str | None,
) -> tuple[int, int]:
    """Send the given deliveries, record each outcome; return (sent, failed) counts."""
    with sessions() as session:
        rows = session.scalars(select(Delivery).where(Delivery.id.in_(delivery_ids))).all()
    groups: dict[Destination, list[Delivery]] = defaultdict(list)
    for row in rows:
        key = Destination(
            ae_title=row.destination_ae, host=row.destination_host, port=row.destination_port
        )
        groups[key].append(row)
    sent = failed = 0
    for destination, group in groups.items():
        outcomes = sender.send(destination, [Path(row.path) for row in group])
        by_uid = {outcome.sop_instance_uid: outcome for outcome in outcomes}
        ok = _record(sessions, destination, group, by_uid, model)
        sent, failed = sent + ok, failed + len(group) - ok
    return sent, failed


def _record(
    sessions: sessionmaker[Session],
    destination: Destination,
    group: list[Delivery],
    outcomes: dict[str, SendOutcome],
    model: str | None,
) -> int:
    peer = Peer(called_ae=destination.ae_title, address=f"{destination.host}:{destination.port}")
    ok = 0
    with sessions.begin() as session:
        for row in group:
            outcome = outcomes.get(row.sop_instance_uid)
            stored = outcome is not None and outcome.ok
            ok += stored
            current = session.get_one(Delivery, row.id)
            current.state = "sent" if stored else "failed"
            current.attempts += outcome.attempts if outcome else 0
            current.last_status = outcome.status if outcome else None
            current.last_error = None if stored else (outcome.error if outcome else "not sent")
            current.updated_at = utcnow()
            audit.record(
                session,
                Event.RESULT_SENT if stored else Event.RESULT_FAILED,
                Outcome.SUCCESS if stored else Outcome.FAILURE,
                peer=peer,
                study_instance_uid=row.study_instance_uid,
                sop_instance_uid=row.sop_instance_uid,
                sop_class_uid=row.sop_class_uid,
                job_id=row.job_id,
                model=model,
                detail=None if stored else current.last_error,
            )
    if ok < len(group):
        log.error("%d of %d result(s) failed to reach %s", len(group) - ok, len(group), destination)
    return ok


def failed_delivery_ids(sessions: sessionmaker[Session]) -> list[int]:
    with sessions() as session:
        return list(session.scalars(select(Delivery.id).where(Delivery.state == "failed")).all())
