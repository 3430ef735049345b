"""Study assembly and the job table: quiet period, re-opening, leases, crash recovery, and
concurrent claimers on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import Peer
from dicom_node.dimse.ingest import Ingest
from dicom_node.dimse.request import ReceivedInstance
from dicom_node.pipeline.assemble import promote_ready_studies
from dicom_node.store import jobs
from dicom_node.store.database import make_engine, make_session_factory, upgrade_schema
from dicom_node.store.schema import AuditEvent, Job, Study, utcnow
from dicom_node.store.spool import Spool


def _sessions(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    upgrade_schema(engine)
    return make_session_factory(engine)


@pytest.fixture
def sessions(tmp_path) -> sessionmaker[Session]:  # type: ignore[no-untyped-def]
    return _sessions(f"sqlite:///{tmp_path / 'jobs.db'}")


def _add_study(
    sessions: sessionmaker[Session], uid: str, *, age: float, open_associations: int = 0
) -> None:
    when = utcnow() - dt.timedelta(seconds=age)
    with sessions.begin() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                state="receiving",
                open_associations=open_associations,
                first_received_at=when,
                last_instance_at=when,
                calling_ae="MOD",
            )
        )


def test_study_is_ready_only_after_release_and_quiet_period(
    sessions: sessionmaker[Session],
) -> None:
    """Open associations and recent instances hold a study back; then exactly one job is queued."""
    _add_study(sessions, "1.2.1", age=10, open_associations=1)
    _add_study(sessions, "1.2.2", age=0.1)
    _add_study(sessions, "1.2.3", age=10)
    assert promote_ready_studies(sessions, quiet_seconds=3) == ["1.2.3"]
    assert promote_ready_studies(sessions, quiet_seconds=3) == []
    with sessions() as session:
        (job,) = session.scalars(select(Job)).all()
        assert (job.study_instance_uid, job.state) == ("1.2.3", "queued")
        events = session.scalars(select(AuditEvent.event_type)).all()
    assert events == ["study_ready"]


def test_late_instance_reopens_study_and_supersedes_queued_job(tmp_path, sessions) -> None:  # type: ignore[no-untyped-def]
    """An instance arriving after the study was ready re-opens it; the queued job is superseded."""
    _add_study(sessions, "1.2.9", age=10)
    assert promote_ready_studies(sessions, quiet_seconds=1) == ["1.2.9"]
    ingest = Ingest(Spool(tmp_path / "spool"), sessions)
    item = ReceivedInstance(
        sop_instance_uid="1.2.9.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        study_instance_uid="1.2.9",
        series_instance_uid="1.2.9.0",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id=None,
        data=b"DICM",
    )
    ingest.store(item, Peer(calling_ae="LATE"), association=1)
    with sessions() as session:
        assert session.get_one(Study, "1.2.9").state == "receiving"
        assert session.scalars(select(Job.state)).all() == ["superseded"]
    ingest.close_association(1)
    with sessions.begin() as session:
        session.execute(update(Study).values(last_instance_at=utcnow() - dt.timedelta(seconds=10)))
    assert promote_ready_studies(sessions, quiet_seconds=1) == ["1.2.9"]


def test_a_store_completing_after_its_association_ended_holds_no_study_open(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    """A store whose answer timed out (a silent database) may commit after its association
    ended: it must not count the association as holding the study, or the study would never
    become ready."""
    ingest = Ingest(Spool(tmp_path / "spool"), sessions)
    ingest.open_association(7)
    ingest.close_association(7)  # the sender got 0xA700 and released
    item = ReceivedInstance(
        sop_instance_uid="1.2.8.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        study_instance_uid="1.2.8",
        series_instance_uid="1.2.8.0",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_id=None,
        data=b"DICM",
    )
    ingest.store(item, Peer(calling_ae="LATE"), association=7)  # the late commit
    with sessions() as session:
        assert session.get_one(Study, "1.2.8").open_associations == 0


def test_expired_lease_is_reclaimed_and_attempts_are_bounded(
    sessions: sessionmaker[Session],
) -> None:
    """A crashed worker's job is taken up again, each claim counting as an attempt; the claim
    after the last attempt says so (the worker then fails it without analysing: test_pipeline)."""
    _add_study(sessions, "1.3.1", age=10)
    promote_ready_studies(sessions, quiet_seconds=0)
    first = jobs.claim(sessions, "worker-a", lease_seconds=60)
    assert first is not None and first.attempt == 1
    assert jobs.claim(sessions, "worker-b", lease_seconds=60) is None
    _expire(sessions)
    second = jobs.claim(sessions, "worker-b", lease_seconds=60)
    assert second is not None and (second.id, second.attempt) == (first.id, 2)
    assert not jobs.renew(sessions, first.id, "worker-a", 60)  # the dead worker lost it
    _expire(sessions)
    third = jobs.claim(sessions, "worker-c", lease_seconds=60)
    assert third is not None and (third.id, third.attempt) == (first.id, 3)


def _expire(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        session.execute(update(Job).values(lease_expires_at=utcnow() - dt.timedelta(seconds=1)))


def _claim_all(url: str, worker: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    claimed = []
    while (job := jobs.claim(sessions, worker, lease_seconds=600)) is not None:
        claimed.append(job.id)
    engine.dispose()
    queue.put(claimed)


def _concurrent_claims(url: str, n_jobs: int = 40, n_workers: int = 4) -> list[list[int]]:
    sessions = _sessions(url)
    for index in range(n_jobs):
        _add_study(sessions, f"1.4.{index}", age=10)
    promote_ready_studies(sessions, quiet_seconds=0)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=_claim_all, args=(url, f"w{i}", queue)) for i in range(n_workers)
    ]
    for process in workers:
        process.start()
    results = [queue.get(timeout=120) for _ in workers]
    for process in workers:
        process.join(timeout=30)
    sessions.kw["bind"].dispose()
    return results


def test_concurrent_worker_processes_claim_each_job_once_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Four worker processes on one SQLite file: every job claimed exactly once."""
    results = _concurrent_claims(f"sqlite:///{tmp_path / 'shared.db'}")
    claimed = sorted(job for batch in results for job in batch)
    assert claimed == list(range(1, 41))


@pytest.mark.postgres
def test_concurrent_worker_processes_claim_each_job_once_on_postgres(postgres_url: str) -> None:
    """Four worker processes on the real PostgreSQL: every job claimed exactly once."""
    results = _concurrent_claims(postgres_url)
    claimed = sorted(job for batch in results for job in batch)
    assert claimed == list(range(1, 41))
