"""Withdrawing results with an IOCM rejection note: when a new SR version replaces earlier
results (`pipeline.results`), and when an operator withdraws a study's results
(`dicom-node retract STUDY_UID`, audited). The note goes to every destination that was sent one
of the objects it withdraws; deliveries of withdrawn objects not yet made are stopped.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event
from dicom_node.dimse.scu import Sender
from dicom_node.errors import NodeError
from dicom_node.pipeline.deliver import deliver, plan_deliveries, stop_withdrawn
from dicom_node.pipeline.results import ResultFile, rejection_note
from dicom_node.settings import Destination
from dicom_node.store import result_objects as objects
from dicom_node.store.schema import Job, ResultObject, Study, utcnow
from dicom_node.store.spool import Spool
from dicom_node.store.uids import is_valid_uid


def record_withdrawal(session: Session, job_id: int, note: ResultFile) -> None:
    """The note is recorded, what it withdraws marked so, and their undelivered copies stopped."""
    if note.new:
        objects.add(session, job_id=job_id, kind="kos", ds=dcmread(note.path), path=note.path)
    objects.mark_withdrawn(session, note.withdraws, by=note.sop_instance_uid)
    stop_withdrawn(session, note.withdraws)


def retract_study(
    sessions: sessionmaker[Session],
    spool: Spool,
    sender: Sender,
    study_instance_uid: str,
    *,
    destinations: Sequence[Destination] = (),
    user_id: str | None = None,
) -> tuple[int, int, int]:
    """Withdraw every live result of the study (audited, as a job of its own, with who asked:
    `user_id`, a console user, or the account running the command); return (objects
    withdrawn, notes delivered, deliveries failed). NodeError when there is nothing to withdraw."""
    if not is_valid_uid(study_instance_uid):
        raise NodeError(f"{study_instance_uid!r} is not a valid Study Instance UID")
    with sessions.begin() as session:
        withdrawn = _live_results(session, study_instance_uid)
        job = Job(
            study_instance_uid=study_instance_uid,
            state="done",
            reason="retract",
            attempts=1,
            created_at=utcnow(),
            finished_at=utcnow(),
            detail=f"{len(withdrawn)} result object(s) withdrawn",
        )
        session.add(job)
        session.flush()
        note = rejection_note(session, spool, study_instance_uid, withdrawn)
        record_withdrawal(session, job.id, note)
        ids = plan_deliveries(session, job.id, study_instance_uid, [note], destinations=())
        audit.record(
            session,
            Event.RESULTS_RETRACTED,
            study_instance_uid=study_instance_uid,
            sop_instance_uid=note.sop_instance_uid,
            job_id=job.id,
            detail=f"withdrew {', '.join(note.withdraws)} by rejection note",
            user_id=user_id,
        )
    sent, failed = deliver(sessions, sender, ids, model=None, destinations=destinations)
    return len(withdrawn), sent, failed


def _live_results(session: Session, study_instance_uid: str) -> list[ResultObject]:
    if session.get(Study, study_instance_uid) is None:
        raise NodeError(f"study {study_instance_uid} is not stored on this node")
    withdrawn = [
        row
        for row in objects.live(objects.of_study(session, study_instance_uid))
        if row.kind in ("sr", "sc")
    ]
    if not withdrawn:
        raise NodeError(f"study {study_instance_uid} has no results left to withdraw")
    active = session.scalar(
        select(Job.id).where(
            Job.study_instance_uid == study_instance_uid, Job.state.in_(("queued", "running"))
        )
    )
    if active is not None:
        raise NodeError(f"job {active} of study {study_instance_uid} is queued or running")
    return withdrawn
