"""What the API's read routes answer, from the database and the spooled headers.

The Accession Number is not a column: it is read from each study's first stored instance
(its header only, a few tags), for the studies listed and, to find a study by it, for the
newest `ACCESSION_SCAN` studies: a search costs one small file read per study scanned.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import Dataset, dcmread
from pydicom.uid import UID
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from dicom_node.http.api.models import (
    DeliveryRow,
    FeedbackRow,
    FindingRow,
    ImageResults,
    InstanceRow,
    JobSummary,
    SkipRow,
    StudyDetail,
    StudySummary,
)
from dicom_node.store.schema import Delivery, Feedback, Instance, Job, Result, Skip, Study

ACCESSION_SCAN = 500
HEADER_TAGS = ["AccessionNumber", "PatientName", "PatientID"]
ANALYSIS = Job.reason != "retract"  # a retraction is a job of its own, not an analysis


def first_header(session: Session, study_instance_uid: str) -> Dataset:
    """A few tags of the study's first stored instance (empty when none can be read)."""
    first = session.scalars(  # the entity, not its path column: paths load absolute
        select(Instance)
        .where(Instance.study_instance_uid == study_instance_uid, Instance.purged_at.is_(None))
        .order_by(Instance.received_at)
        .limit(1)
    ).first()
    if first is None:
        return Dataset()
    try:
        return dcmread(first.path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
    except (OSError, ValueError, EOFError):
        return Dataset()


def _text(header: Dataset, keyword: str) -> str | None:
    return str(header.get(keyword, "") or "") or None


def job_summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        study_instance_uid=job.study_instance_uid,
        state=job.state,
        reason=job.reason,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        detail=job.detail,
    )


def recent_studies(session: Session, query: str, limit: int) -> list[StudySummary]:
    """The newest studies first; `query` (when given) matches the Study Instance UID or the
    Accession Number exactly."""
    newest = select(Study).order_by(Study.first_received_at.desc())
    if not query:
        return summaries(session, session.scalars(newest.limit(limit)).all())
    if session.get(Study, query) is not None:
        return summaries(session, [session.get_one(Study, query)])
    found = [
        study
        for study in session.scalars(newest.limit(ACCESSION_SCAN)).all()
        if _text(first_header(session, study.study_instance_uid), "AccessionNumber") == query
    ]
    return summaries(session, found[:limit])


def summaries(session: Session, studies: Sequence[Study]) -> list[StudySummary]:
    """Each study with its newest analysis job and the findings present in its newest done one."""
    uids = [s.study_instance_uid for s in studies]
    newest = _newest_jobs(session, uids, Job.id.is_not(None))
    done = _newest_jobs(session, uids, Job.state == "done")
    present = dict(
        session.execute(
            select(Result.study_instance_uid, func.count())
            .where(Result.job_id.in_([j.id for j in done.values()]), Result.present.is_(True))
            .group_by(Result.study_instance_uid)
        ).all()
    )
    return [
        StudySummary(
            study_instance_uid=s.study_instance_uid,
            accession_number=_text(first_header(session, s.study_instance_uid), "AccessionNumber"),
            state=s.state,
            calling_ae=s.calling_ae,
            first_received_at=s.first_received_at,
            ready_at=s.ready_at,
            job=job_summary(newest[s.study_instance_uid])
            if s.study_instance_uid in newest
            else None,
            findings_present=int(present.get(s.study_instance_uid, 0)),
        )
        for s in studies
    ]


def _newest_jobs(session: Session, uids: list[str], where: ColumnElement[bool]) -> dict[str, Job]:
    ids = (
        select(func.max(Job.id))
        .where(Job.study_instance_uid.in_(uids), ANALYSIS, where)
        .group_by(Job.study_instance_uid)
    )
    return {j.study_instance_uid: j for j in session.scalars(select(Job).where(Job.id.in_(ids)))}


def study_detail(session: Session, study_instance_uid: str) -> StudyDetail | None:
    """Everything stored about one study; None when it is not stored here."""
    study = session.get(Study, study_instance_uid)
    if study is None:
        return None
    header = first_header(session, study_instance_uid)
    of_study = Job.study_instance_uid == study_instance_uid
    jobs = session.scalars(select(Job).where(of_study).order_by(Job.id)).all()
    job_ids = [j.id for j in jobs]
    results: dict[tuple[int, str], list[FindingRow]] = {}
    for r in session.scalars(
        select(Result).where(Result.job_id.in_(job_ids)).order_by(Result.id)
    ).all():
        results.setdefault((r.job_id, r.sop_instance_uid), []).append(
            FindingRow(
                label=r.label, probability=r.probability, threshold=r.threshold, present=r.present
            )
        )
    skips = session.scalars(select(Skip).where(Skip.job_id.in_(job_ids)).order_by(Skip.id)).all()
    instances = session.scalars(
        select(Instance)
        .where(Instance.study_instance_uid == study_instance_uid)
        .order_by(Instance.received_at)
    ).all()
    feedback = session.scalars(
        select(Feedback)
        .where(Feedback.study_instance_uid == study_instance_uid)
        .order_by(Feedback.id)
    ).all()
    return StudyDetail(
        study=summaries(session, [study])[0],
        patient_name=_text(header, "PatientName"),
        patient_id=_text(header, "PatientID"),
        instances=[_instance(i) for i in instances],
        jobs=[job_summary(j) for j in jobs],
        results=[
            ImageResults(job_id=job_id, sop_instance_uid=sop, findings=rows)
            for (job_id, sop), rows in results.items()
        ],
        skips=[
            SkipRow(job_id=s.job_id, sop_instance_uid=s.sop_instance_uid, reason=s.reason)
            for s in skips
        ],
        deliveries=deliveries(session, study_instance_uid=study_instance_uid),
        feedback=[
            FeedbackRow(
                id=f.id,
                sop_instance_uid=f.sop_instance_uid,
                label=f.label,
                verdict=f.verdict,
                job_id=f.job_id,
                user_name=f.user_name,
                created_at=f.created_at,
            )
            for f in feedback
        ],
    )


def _instance(row: Instance) -> InstanceRow:
    return InstanceRow(
        sop_instance_uid=row.sop_instance_uid,
        series_instance_uid=row.series_instance_uid,
        sop_class_uid=row.sop_class_uid,
        sop_class=UID(row.sop_class_uid).name,
        calling_ae=row.calling_ae,
        received_at=row.received_at,
        purged=row.purged_at is not None,
    )


def jobs(session: Session, state: str | None, limit: int) -> list[JobSummary]:
    """The newest jobs first, of one state when given."""
    statement = select(Job).order_by(Job.id.desc()).limit(limit)
    if state:
        statement = statement.where(Job.state == state)
    return [job_summary(j) for j in session.scalars(statement).all()]


def delivery_row(row: Delivery) -> DeliveryRow:
    return DeliveryRow(
        id=row.id,
        job_id=row.job_id,
        study_instance_uid=row.study_instance_uid,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        destination=f"{row.destination_ae}@{row.destination_host}:{row.destination_port}",
        state=row.state,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error,
        updated_at=row.updated_at,
        due_at=row.due_at,
    )


def deliveries(
    session: Session,
    *,
    state: str | None = None,
    study_instance_uid: str | None = None,
    limit: int | None = None,
) -> list[DeliveryRow]:
    """Deliveries, the newest first (a study's in the order they were planned)."""
    statement = select(Delivery)
    if study_instance_uid is not None:
        statement = statement.where(Delivery.study_instance_uid == study_instance_uid)
        statement = statement.order_by(Delivery.id)
    else:
        statement = statement.order_by(Delivery.id.desc())
    if state:
        statement = statement.where(Delivery.state == state)
    if limit is not None:
        statement = statement.limit(limit)
    return [delivery_row(d) for d in session.scalars(statement).all()]
