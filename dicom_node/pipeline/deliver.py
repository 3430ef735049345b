"""Deliveries: result objects owed to destinations, planned, sent and recorded (sent or failed,
never silently lost); failed ones stay visible and can be sent again (`dicom-node retry`).

Which object goes where: the SR to every destination with `send_sr`, an SC to every destination
with `send_sc` whose `sc_findings` it was made for, and a rejection note to every destination
that was sent one of the objects it withdraws (wherever that destination is configured now).
A withdrawn object that was not yet delivered is not sent any more (state `withdrawn`).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.dimse.scu import Sender, SendOutcome
from dicom_node.pipeline.results import ResultFile
from dicom_node.settings import Destination
from dicom_node.store.schema import Delivery, Job, utcnow

log = logging.getLogger(__name__)


def deliver(
    sessions: sessionmaker[Session],
    sender: Sender,
    delivery_ids: Sequence[int],
    *,
    model: str | None,
    destinations: Sequence[Destination] = (),
) -> tuple[int, int]:
    """Send the given deliveries, record each outcome; return (sent, failed) counts. A delivery
    goes to its destination as configured in `destinations` (its TLS setting included), or by
    plain DICOM where the destination is no longer configured."""
    configured = {(d.ae_title, d.host, d.port): d for d in destinations}
    with sessions() as session:
        rows = session.scalars(select(Delivery).where(Delivery.id.in_(delivery_ids))).all()
    groups: dict[Destination, list[Delivery]] = defaultdict(list)
    for row in rows:
        address = (row.destination_ae, row.destination_host, row.destination_port)
        key = configured.get(address) or Destination(
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


def plan_deliveries(
    session: Session,
    job_id: int,
    study_instance_uid: str,
    files: Sequence[ResultFile],
    destinations: Sequence[Destination],
) -> list[int]:
    """The pending deliveries of `files` (within the caller's unit of work); a re-run of the job
    takes up its own earlier rows instead of adding new ones. Returns their ids."""
    earlier = {
        (row.sop_instance_uid, row.destination_ae, row.destination_host, row.destination_port): row
        for row in session.scalars(select(Delivery).where(Delivery.job_id == job_id)).all()
    }
    wanted: list[Delivery] = []
    for file in files:
        for destination in _destinations_of(session, file, destinations):
            key = (file.sop_instance_uid, destination.ae_title, destination.host, destination.port)
            row = earlier.get(key) or _delivery(job_id, study_instance_uid, file, destination)
            if row.state != "sent":
                row.state, row.updated_at = "pending", utcnow()
            session.add(row)
            wanted.append(row)
    session.flush()
    return [row.id for row in wanted if row.state == "pending"]


def stop_withdrawn(session: Session, sop_instance_uids: Sequence[str]) -> None:
    """Deliveries of withdrawn objects still pending or failed are not sent any more."""
    session.execute(
        update(Delivery)
        .where(
            Delivery.sop_instance_uid.in_(list(sop_instance_uids)),
            Delivery.state.in_(("pending", "failed")),
        )
        .values(state="withdrawn", updated_at=utcnow())
    )


def _destinations_of(
    session: Session, file: ResultFile, destinations: Sequence[Destination]
) -> list[Destination]:
    if file.kind == "kos":
        return _recipients(session, file.withdraws)
    if file.kind == "sr":
        return [d for d in destinations if d.send_sr]
    return [d for d in destinations if d.send_sc and d.sc_findings == file.sc_findings]


def _recipients(session: Session, sop_instance_uids: Sequence[str]) -> list[Destination]:
    """Every destination that was sent one of the objects."""
    rows = session.execute(
        select(Delivery.destination_ae, Delivery.destination_host, Delivery.destination_port)
        .where(Delivery.sop_instance_uid.in_(list(sop_instance_uids)), Delivery.state == "sent")
        .distinct()
    ).all()
    return [Destination(ae_title=ae, host=host, port=port) for ae, host, port in sorted(rows)]


def _delivery(
    job_id: int, study_instance_uid: str, file: ResultFile, destination: Destination
) -> Delivery:
    return Delivery(
        job_id=job_id,
        study_instance_uid=study_instance_uid,
        sop_instance_uid=file.sop_instance_uid,
        sop_class_uid=file.sop_class_uid,
        path=str(file.path),
        destination_ae=destination.ae_title,
        destination_host=destination.host,
        destination_port=destination.port,
        state="pending",
        attempts=0,
        updated_at=utcnow(),
    )


def failed_delivery_ids(sessions: sessionmaker[Session]) -> list[int]:
    """The deliveries `dicom-node retry` sends again: those that failed, and those left pending
    by a job that is no longer running (its process died between recording and sending)."""
    idle = select(Job.id).where(Job.state.not_in(("queued", "running")))
    with sessions() as session:
        return list(
            session.scalars(
                select(Delivery.id).where(
                    or_(
                        Delivery.state == "failed",
                        (Delivery.state == "pending") & Delivery.job_id.in_(idle),
                    )
                )
            ).all()
        )
