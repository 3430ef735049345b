"""Retention of received data: patient images do not stay on the node forever. A study's received
instances leave the spool `spool_retention_days` after its results were delivered (its newest
job finished, and no job is queued or running); their rows, the study's results, deliveries and
audit trail stay. Each purged study is one audit row ("DICOM Study Deleted", 110105). Run by
`dicom-node purge-spool` and, within `serve` and `work`, once an hour.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event
from dicom_node.store.schema import Instance, Job, utcnow

log = logging.getLogger(__name__)

ACTIVE = ("queued", "running")


@dataclass(frozen=True, kw_only=True, slots=True)
class Purged:
    """What one purge removed."""

    studies: int
    files: int
    bytes: int


def purge_received(
    sessions: sessionmaker[Session], older_than_days: float, *, now: dt.datetime | None = None
) -> Purged:
    """Remove the received files of every study whose last job finished before the cutoff."""
    cutoff = (now or utcnow()) - dt.timedelta(days=older_than_days)
    studies = files = size = 0
    for study_uid in expired_studies(sessions, cutoff):
        removed, removed_bytes = _purge_study(sessions, study_uid, older_than_days)
        studies, files, size = studies + 1, files + removed, size + removed_bytes
    if studies:
        log.info("retention: %d study(ies), %d file(s), %d bytes removed", studies, files, size)
    return Purged(studies=studies, files=files, bytes=size)


def expired_studies(sessions: sessionmaker[Session], cutoff: dt.datetime) -> list[str]:
    """Studies with instances still in the spool whose newest job finished before `cutoff` and
    that have no job queued or running."""
    last_finished = (
        select(Job.study_instance_uid, func.max(Job.finished_at).label("finished"))
        .group_by(Job.study_instance_uid)
        .subquery()
    )
    active = select(Job.study_instance_uid).where(Job.state.in_(ACTIVE))
    query = (
        select(Instance.study_instance_uid)
        .join(last_finished, last_finished.c.study_instance_uid == Instance.study_instance_uid)
        .where(
            Instance.purged_at.is_(None),
            last_finished.c.finished < cutoff,
            Instance.study_instance_uid.not_in(active),
        )
        .distinct()
    )
    with sessions() as session:
        return list(session.scalars(query).all())


def _purge_study(sessions: sessionmaker[Session], study_uid: str, days: float) -> tuple[int, int]:
    with sessions.begin() as session:
        rows = session.scalars(
            select(Instance).where(
                Instance.study_instance_uid == study_uid, Instance.purged_at.is_(None)
            )
        ).all()
        removed = size = 0
        for row in rows:
            path = Path(row.path)
            for file in (path, *path.parent.glob(f"{path.stem}.replaced-*{path.suffix}")):
                if file.is_file():
                    size += file.stat().st_size
                    file.unlink()
                    removed += 1
            row.purged_at = utcnow()
        audit.record(
            session,
            Event.INSTANCES_PURGED,
            study_instance_uid=study_uid,
            detail=f"{len(rows)} received instance(s) removed from the spool "
            f"({removed} file(s), {size} bytes) {days:g} days after the results",
        )
    return removed, size
