"""Recording an analysis in one transaction: its findings and skips (replacing those of an
earlier attempt of the same job), the result objects it wrote, what a new version withdraws,
and the pending deliveries of everything it sends."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom import dcmread
from sqlalchemy import delete
from sqlalchemy.orm import Session

from dicom_node import audit
from dicom_node.audit import Event, Outcome
from dicom_node.domain import SkippedImage, StudyResult
from dicom_node.pipeline.deliver import plan_deliveries
from dicom_node.pipeline.results import ResultFile
from dicom_node.pipeline.retract import record_withdrawal
from dicom_node.settings import Destination
from dicom_node.store import result_objects as objects
from dicom_node.store.schema import Result, Skip


def record_results(
    session: Session,
    *,
    job_id: int,
    study_instance_uid: str,
    study: StudyResult | None,
    others: Sequence[SkippedImage],
    files: Sequence[ResultFile],
    destinations: Sequence[Destination],
    model: str,
    first: bool = True,
) -> list[int]:
    """Write the rows of one model's analysis within the caller's unit of work; return the ids
    of the deliveries to make. `first`: the job's first model, which records the study's skips
    (a later model's SR names the same ones); an earlier attempt's rows are replaced."""
    if study is not None:
        session.execute(
            delete(Result).where(Result.job_id == job_id, Result.model_name == study.model.name)
        )
        _add_findings(session, job_id, study)
    skipped = list(study.skipped) if study else []
    if first:
        session.execute(delete(Skip).where(Skip.job_id == job_id))
        _add_skips(session, job_id, study_instance_uid, [*skipped, *others], model)
    for file in files:
        if file.kind == "kos":
            record_withdrawal(session, job_id, file)
        elif file.new:
            objects.add(
                session,
                job_id=job_id,
                kind=file.kind,
                ds=dcmread(file.path, stop_before_pixels=True),
                path=file.path,
                content_digest=file.content_digest,
                predecessor=file.predecessor,
                model_name=study.model.name if study is not None else None,
            )
    return plan_deliveries(session, job_id, study_instance_uid, files, destinations)


def _add_findings(session: Session, job_id: int, study: StudyResult) -> None:
    model = study.model
    session.add_all(
        Result(
            job_id=job_id,
            study_instance_uid=study.study_instance_uid,
            sop_instance_uid=image.sop_instance_uid,
            label=finding.label,
            probability=finding.probability,
            threshold=finding.threshold,
            present=finding.present,
            model_name=model.name,
            model_version=model.version,
            model_sha256=model.weights_sha256,
        )
        for image in study.images
        for finding in image.findings
    )


def _add_skips(
    session: Session, job_id: int, study_uid: str, skipped: Sequence[SkippedImage], model: str
) -> None:
    for item in skipped:
        session.add(Skip(job_id=job_id, sop_instance_uid=item.sop_instance_uid, reason=item.reason))
        audit.record(
            session,
            Event.IMAGE_SKIPPED,
            Outcome.SKIPPED,
            study_instance_uid=study_uid,
            sop_instance_uid=item.sop_instance_uid,
            sop_class_uid=str(item.source.get("SOPClassUID", "")) or None,
            job_id=job_id,
            model=model,
            detail=item.reason,
        )
