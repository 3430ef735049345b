"""`dicom-node reprocess STUDY_UID`: queue a stored study for analysis again, audited.

The new job runs like any other (a worker of `serve` or `work` claims it). Its SR is the same
document as before when the result is the same (idempotent at the PACS) and a new one naming
its predecessor when the result differs (`dicom_node.store.reports`).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event
from dicom_node.errors import NodeError
from dicom_node.store import jobs
from dicom_node.store.schema import Instance, Job, Study, utcnow
from dicom_node.store.uids import is_valid_uid

ACTIVE_STATES = ("queued", "running")


def request_reprocess(
    sessions: sessionmaker[Session], study_instance_uid: str, *, user_id: str | None = None
) -> int:
    """Queue a new job for the stored study and audit who asked (`user_id`: a console user;
    by default the account running the command); return the job's id.

    Raises `NodeError` (naming what to do) when the UID is invalid, the study is not stored
    here, it is still being received, or a job for it is already queued or running.
    """
    if not is_valid_uid(study_instance_uid):
        raise NodeError(f"{study_instance_uid!r} is not a valid Study Instance UID")
    with sessions.begin() as session:
        _check_reprocessable(session, study_instance_uid)
        job = Job(
            study_instance_uid=study_instance_uid,
            state="queued",
            reason="reprocess",
            attempts=0,
            created_at=utcnow(),
        )
        session.add(job)
        session.flush()
        jobs.notify_queued(session)
        audit.record(
            session,
            Event.STUDY_REPROCESS,
            study_instance_uid=study_instance_uid,
            job_id=job.id,
            detail=f"re-analysis requested; job {job.id} queued",
            user_id=user_id,
        )
        return job.id


def _check_reprocessable(session: Session, study_instance_uid: str) -> None:
    study = session.get(Study, study_instance_uid)
    stored = session.scalar(
        select(func.count()).where(Instance.study_instance_uid == study_instance_uid)
    )
    if study is None or not stored:
        raise NodeError(f"study {study_instance_uid} is not stored on this node")
    kept = session.scalar(
        select(func.count()).where(
            Instance.study_instance_uid == study_instance_uid, Instance.purged_at.is_(None)
        )
    )
    if not kept:
        raise NodeError(
            f"study {study_instance_uid}: its received instances were removed by the retention "
            "policy (spool_retention_days); send the study again to have it read"
        )
    if study.state == "receiving":
        raise NodeError(
            f"study {study_instance_uid} is still being received; it is analysed once complete"
        )
    active = session.scalar(
        select(Job.id).where(
            Job.study_instance_uid == study_instance_uid, Job.state.in_(ACTIVE_STATES)
        )
    )
    if active is not None:
        raise NodeError(f"job {active} for study {study_instance_uid} is already queued or running")
