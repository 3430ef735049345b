"""Deliveries: result objects owed to destinations, planned, sent and recorded (sent or failed,
never silently lost). A failed one is due again after a backoff that doubles with the time it
has been failing (`retry_initial_seconds` up to `retry_max_interval_seconds`); once it has
failed for `retry_window_seconds` it is dead-lettered (state `dead`, audited, alerted).
`dicom-node retry` sends failed and dead ones again at once.

Which object goes where: the SR to every destination with `send_sr`, an SC to every destination
with `send_sc` whose `sc_findings` it was made for, and a rejection note to every destination
that was sent one of the objects it withdraws (wherever that destination is configured now).
A withdrawn object that was not yet delivered is not sent any more (state `withdrawn`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit, metrics
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.dimse.scu import Sender, SendOutcome
from dicom_node.pipeline.results import ResultFile
from dicom_node.settings import Destination
from dicom_node.store.schema import Delivery, Job, utcnow

log = logging.getLogger(__name__)
Address = tuple[str, str, int]  # (AE title, host, port): a destination as deliveries name it


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrySchedule:
    """When a failed delivery is due again, and when it is given up (dead-lettered)."""

    initial_seconds: float = 30.0
    max_interval_seconds: float = 900.0
    window_seconds: float = 86400.0
    commitment_timeout_seconds: float = 600.0  # a commitment report not come by then: resend

    def next_delay(self, failing_for: float) -> float:
        """The wait before the next round: doubles as the failure lasts (30, 30, 60, 120 ...)."""
        return min(self.max_interval_seconds, max(self.initial_seconds, failing_for))

    def gives_up(self, failing_for: float) -> bool:
        return failing_for >= self.window_seconds


def address_of(row: Delivery) -> Address:
    return (row.destination_ae, row.destination_host, row.destination_port)


def resolve(address: Address, destinations: Sequence[Destination]) -> Destination:
    """The destination as configured now (its TLS setting included), or plain DICOM to the
    address where it is no longer configured."""
    for destination in destinations:
        if (destination.ae_title, destination.host, destination.port) == address:
            return destination
    ae_title, host, port = address
    return Destination(ae_title=ae_title, host=host, port=port)


def deliver(
    sessions: sessionmaker[Session],
    sender: Sender,
    delivery_ids: Sequence[int],
    *,
    model: str | None,
    destinations: Sequence[Destination] = (),
    schedule: RetrySchedule | None = None,
) -> tuple[int, int]:
    """Send the given deliveries, record each outcome; return (sent, failed) counts. A delivery
    goes to its destination as `resolve` finds it; a failure is due again on `schedule`."""
    with sessions() as session:
        rows = session.scalars(select(Delivery).where(Delivery.id.in_(delivery_ids))).all()
    groups: dict[Destination, list[Delivery]] = defaultdict(list)
    for row in rows:
        groups[resolve(address_of(row), destinations)].append(row)
    sent = failed = 0
    for destination, group in groups.items():
        started = dt.datetime.now(dt.UTC)
        outcomes = sender.send(destination, [Path(row.path) for row in group])
        metrics.STAGE_SECONDS.labels(stage="send").observe(
            (dt.datetime.now(dt.UTC) - started).total_seconds()
        )
        by_uid = {outcome.sop_instance_uid: outcome for outcome in outcomes}
        ok = _record(sessions, destination, group, by_uid, model, schedule or RetrySchedule())
        sent, failed = sent + ok, failed + len(group) - ok
    return sent, failed


def _record(  # noqa: PLR0917
    sessions: sessionmaker[Session],
    destination: Destination,
    group: list[Delivery],
    outcomes: dict[str, SendOutcome],
    model: str | None,
    schedule: RetrySchedule,
) -> int:
    peer = Peer(called_ae=destination.ae_title, address=f"{destination.host}:{destination.port}")
    ok = 0
    with sessions.begin() as session:
        for row in group:
            outcome = outcomes.get(row.sop_instance_uid)
            current = session.get_one(Delivery, row.id)
            event = _apply(current, outcome, schedule)
            ok += current.state in {"sent", "committing"}
            metrics.DELIVERIES.labels(destination=str(destination), outcome=current.state).inc()
            audit.record(
                session,
                event,
                Outcome.SUCCESS if current.state in {"sent", "committing"} else Outcome.FAILURE,
                peer=peer,
                study_instance_uid=row.study_instance_uid,
                sop_instance_uid=row.sop_instance_uid,
                sop_class_uid=row.sop_class_uid,
                job_id=row.job_id,
                model=model,
                detail=_detail(current, schedule),
            )
    if ok < len(group):
        log.error("%d of %d result(s) failed to reach %s", len(group) - ok, len(group), destination)
    return ok


def _apply(row: Delivery, outcome: SendOutcome | None, schedule: RetrySchedule) -> Event:
    """Record one send's outcome on its row: sent, failed (due again later) or dead."""
    now = utcnow()
    row.attempts += outcome.attempts if outcome else 0
    row.last_status = outcome.status if outcome else None
    row.updated_at, row.lease_owner, row.lease_expires_at = now, None, None
    if outcome is not None and outcome.ok and outcome.commitment_uid:
        row.state, row.last_error, row.commitment_uid = "committing", None, outcome.commitment_uid
        row.due_at = now + dt.timedelta(seconds=schedule.commitment_timeout_seconds)
        return Event.RESULT_SENT
    if outcome is not None and outcome.ok:
        row.state, row.last_error, row.due_at = "sent", None, None
        return Event.RESULT_SENT
    row.last_error = outcome.error if outcome else "not sent"
    row.first_failed_at = row.first_failed_at or now
    failing_for = (now - row.first_failed_at).total_seconds()
    if schedule.gives_up(failing_for):
        row.state, row.due_at = "dead", None
        return Event.RESULT_DEAD_LETTERED
    row.state = "failed"
    row.due_at = now + dt.timedelta(seconds=schedule.next_delay(failing_for))
    return Event.RESULT_FAILED


def _detail(row: Delivery, schedule: RetrySchedule) -> str | None:
    if row.state == "sent":
        return None
    if row.state == "committing":
        return f"storage commitment requested (transaction {row.commitment_uid})"
    if row.state == "dead":
        return (
            f"{row.last_error}; given up after {schedule.window_seconds:g} s of failures "
            "(dead-lettered: dicom-node retry sends it again)"
        )
    return f"{row.last_error}; due again at {row.due_at:%Y-%m-%dT%H:%M:%SZ}"


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
                row.state, row.updated_at, row.due_at = "pending", utcnow(), utcnow()
                row.first_failed_at = None
            session.add(row)
            wanted.append(row)
    session.flush()
    return [row.id for row in wanted if row.state == "pending"]


def stop_withdrawn(session: Session, sop_instance_uids: Sequence[str]) -> None:
    """Deliveries of withdrawn objects still pending, failed or dead are not sent any more."""
    session.execute(
        update(Delivery)
        .where(
            Delivery.sop_instance_uid.in_(list(sop_instance_uids)),
            Delivery.state.in_(("pending", "failed", "dead")),
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
        due_at=utcnow(),
    )


def restart_window(sessions: sessionmaker[Session], delivery_ids: Sequence[int]) -> None:
    """An operator sends these again: their failures count from now (a dead one that fails
    again is retried on the schedule, not dead-lettered at once)."""
    with sessions.begin() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.id.in_(list(delivery_ids)), Delivery.state.in_(("failed", "dead")))
            .values(first_failed_at=None)
        )


def failed_delivery_ids(sessions: sessionmaker[Session]) -> list[int]:
    """The deliveries `dicom-node retry` sends again: those that failed or were dead-lettered,
    and those left pending by a job that is no longer running."""
    idle = select(Job.id).where(Job.state.not_in(("queued", "running")))
    with sessions() as session:
        return list(
            session.scalars(
                select(Delivery.id).where(
                    or_(
                        Delivery.state.in_(("failed", "dead")),
                        (Delivery.state == "pending") & Delivery.job_id.in_(idle),
                    )
                )
            ).all()
        )
