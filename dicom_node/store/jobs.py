"""Jobs: rows with states and leases. A worker claims a queued job (or one whose lease expired
because its worker died), renews the lease while it works, and records how it ended."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.schema import Delivery, Job, utcnow


@dataclass(frozen=True, kw_only=True, slots=True)
class ClaimedJob:
    """A job this worker holds the lease of; `attempt` counts this claim (1 for the first)."""

    id: int
    study_instance_uid: str
    attempt: int
    reason: str = "received"


CHANNEL = "dicom_node_jobs"  # PostgreSQL notification channel: a job was queued


def notify_queued(session: Session) -> None:
    """Within the transaction that queues a job: on PostgreSQL, NOTIFY the work processes (it is
    delivered when the transaction commits; `dicom_node.pipeline.wakeup` listens); elsewhere
    nothing (work processes on SQLite poll)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {CHANNEL}"))


def _claimable(now: dt.datetime) -> object:
    expired = and_(Job.state == "running", Job.lease_expires_at < now)
    return or_(Job.state == "queued", expired)


def claim(
    sessions: sessionmaker[Session], worker: str, *, lease_seconds: float
) -> ClaimedJob | None:
    """Take the oldest claimable job with a lease, or None. The claim counts as an attempt; the
    caller decides what a job past its last attempt gets (`ClaimedJob.attempt`)."""
    now = utcnow()
    with sessions() as session:
        ids = session.scalars(
            select(Job.id).where(_claimable(now)).order_by(Job.id).limit(8)  # type: ignore[arg-type]
        ).all()
    for job_id in ids:
        claimed = _try_claim(sessions, job_id, worker, now=now, lease_seconds=lease_seconds)
        if claimed is not None:
            return claimed
    return None


def _try_claim(
    sessions: sessionmaker[Session],
    job_id: int,
    worker: str,
    *,
    now: dt.datetime,
    lease_seconds: float,
) -> ClaimedJob | None:
    with sessions.begin() as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        attempt, study, reason = job.attempts + 1, job.study_instance_uid, job.reason
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, _claimable(now))  # type: ignore[arg-type]
            .values(
                state="running",
                lease_owner=worker,
                lease_expires_at=now + dt.timedelta(seconds=lease_seconds),
                attempts=Job.attempts + 1,
                started_at=now,
            )
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None  # another worker was faster
        return ClaimedJob(id=job_id, study_instance_uid=study, attempt=attempt, reason=reason)


def renew(sessions: sessionmaker[Session], job_id: int, worker: str, lease_seconds: float) -> bool:
    """Extend the lease; False when the job is no longer ours."""
    with sessions.begin() as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == worker, Job.state == "running")
            .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease_seconds))
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def finish(session: Session, job_id: int, state: str, detail: str | None = None) -> None:
    """Record how a job ended (done, skipped, failed), within the caller's unit of work."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(state=state, finished_at=utcnow(), lease_expires_at=None, detail=detail)
    )


FINISHED = frozenset({"done", "skipped", "failed"})


def wait_finished(
    sessions: sessionmaker[Session],
    study_instance_uid: str,
    *,
    after: int = 0,
    timeout: float = 60.0,
) -> Job:
    """Wait until the newest job of the study with an id above `after` has finished and each
    of its deliveries was tried once (none is still pending); return the job.

    For the demo and the tests, which watch the node from outside. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:
            job = session.scalars(
                select(Job)
                .where(Job.study_instance_uid == study_instance_uid, Job.id > after)
                .order_by(Job.id.desc())
            ).first()
            pending = job is not None and session.scalar(
                select(Delivery.id).where(Delivery.job_id == job.id, Delivery.state == "pending")
            )
        if job is not None and job.state in FINISHED and not pending:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"no finished job of the study within {timeout:.0f} s")
