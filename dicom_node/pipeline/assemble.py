"""Assemble: a study is ready when no association holds it and no instance arrived for the quiet
period; it then gets a queued job. Safe to run in several processes at once."""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event
from dicom_node.store import jobs
from dicom_node.store.schema import Instance, Job, Study, utcnow

log = logging.getLogger(__name__)


def promote_ready_studies(sessions: sessionmaker[Session], quiet_seconds: float) -> list[str]:
    """Mark quiet, released studies ready and queue a job for each; return their UIDs."""
    now = utcnow()
    cutoff = now - dt.timedelta(seconds=quiet_seconds)
    with sessions() as session:
        candidates = session.execute(
            select(Study.study_instance_uid, Study.last_instance_at).where(
                Study.state == "receiving",
                Study.open_associations == 0,
                Study.last_instance_at <= cutoff,
            )
        ).all()
    return [uid for uid, last in candidates if _promote(sessions, uid, last, now)]


def _promote(
    sessions: sessionmaker[Session], uid: str, last: dt.datetime, now: dt.datetime
) -> bool:
    with sessions.begin() as session:
        claimed = session.execute(
            update(Study)
            .where(
                Study.study_instance_uid == uid,
                Study.state == "receiving",
                Study.open_associations == 0,
                Study.last_instance_at == last,
            )
            .values(state="ready", ready_at=now)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return False  # another process promoted it, or an instance arrived meanwhile
        job = Job(
            study_instance_uid=uid, state="queued", reason="received", attempts=0, created_at=now
        )
        session.add(job)
        session.flush()
        jobs.notify_queued(session)
        count = session.query(Instance).filter(Instance.study_instance_uid == uid).count()
        audit.record(
            session,
            Event.STUDY_READY,
            study_instance_uid=uid,
            job_id=job.id,
            detail=f"{count} instance(s); job {job.id} queued",
        )
    log.info("study ready, job queued", extra={"study": uid})
    return True
