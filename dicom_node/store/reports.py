"""The SRs the node emitted per study (table `reports`): which earlier SR a new one replaces.

A re-analysis whose result differs from the newest report of the study is a new SR that names
that report in its Predecessor Documents Sequence. The same result again (a resend, or a
reprocess that changes nothing) is built with the same predecessor as before, so it is the same
document with the same SOP Instance UID and the PACS sees a duplicate, not a new version.
"""

from __future__ import annotations

from pathlib import Path

from pydicom import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.schema import Report, utcnow
from structured_reports.results import StudyResult
from structured_reports.sr import content_digest, sr_series_uid


def predecessors(sessions: sessionmaker[Session], study: StudyResult) -> list[Dataset]:
    """Headers of the SRs a new SR of `study` replaces: none, or the newest report's."""
    with sessions() as session:
        latest = newest_report(session, study.study_instance_uid)
        if latest is not None and _states_the_same(latest, study):
            predecessor = latest.predecessor_sop_instance_uid
            latest = _report(session, predecessor) if predecessor else None
    return [] if latest is None else [report_header(latest)]


def newest_report(session: Session, study_instance_uid: str) -> Report | None:
    return session.scalars(
        select(Report)
        .where(Report.study_instance_uid == study_instance_uid)
        .order_by(Report.id.desc())
        .limit(1)
    ).first()


def record_report(
    session: Session,
    *,
    job_id: int,
    sr: Dataset,
    study: StudyResult,
    path: Path,
    previous: list[Dataset],
) -> None:
    """Add the row of `sr` within the caller's unit of work, unless it was emitted before."""
    uid = str(sr.SOPInstanceUID)
    if _report(session, uid) is not None:
        return
    session.add(
        Report(
            job_id=job_id,
            study_instance_uid=study.study_instance_uid,
            sop_instance_uid=uid,
            sop_class_uid=str(sr.SOPClassUID),
            series_instance_uid=str(sr.SeriesInstanceUID),
            content_digest=content_digest(study),
            predecessor_sop_instance_uid=str(previous[0].SOPInstanceUID) if previous else None,
            path=str(path),
            created_at=utcnow(),
        )
    )


def report_header(report: Report) -> Dataset:
    """What a successor needs of its predecessor (highdicom `previous_versions`): the SOP Class,
    SOP Instance, Study and Series Instance UIDs, as the emitted SR carries them."""
    header = Dataset()
    header.SOPClassUID = report.sop_class_uid
    header.SOPInstanceUID = report.sop_instance_uid
    header.StudyInstanceUID = report.study_instance_uid
    header.SeriesInstanceUID = report.series_instance_uid
    return header


def _states_the_same(report: Report, study: StudyResult) -> bool:
    same_series = report.series_instance_uid == sr_series_uid(study)  # same model version
    return same_series and report.content_digest == content_digest(study)


def _report(session: Session, sop_instance_uid: str) -> Report | None:
    return session.scalars(
        select(Report).where(Report.sop_instance_uid == sop_instance_uid)
    ).first()
