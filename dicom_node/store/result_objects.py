"""The objects the node emitted per study (table `result_objects`): SRs with what they state and
the SR they replace, Grad-CAM SCs, rejection notes (KOS); their numbering within each series, and
which were withdrawn. Which SR a new analysis reuses or replaces is decided by the pipeline
(`dicom_node.pipeline.results`); this module only reads and writes the rows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydicom import Dataset
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dicom_node.store.schema import ResultObject, utcnow


def of_study(
    session: Session,
    study_instance_uid: str,
    kind: str | None = None,
    *,
    model_name: str | None = None,
) -> list[ResultObject]:
    """The study's result objects (of one `kind`: sr, sc or kos; of one model's results, with
    the rows that name no model), oldest first."""
    query = select(ResultObject).where(ResultObject.study_instance_uid == study_instance_uid)
    if kind is not None:
        query = query.where(ResultObject.kind == kind)
    if model_name is not None:
        query = query.where(
            (ResultObject.model_name == model_name) | ResultObject.model_name.is_(None)
        )
    return list(session.scalars(query.order_by(ResultObject.id)).all())


def live(objects: Iterable[ResultObject]) -> list[ResultObject]:
    """Those not withdrawn, whose file is still in the spool (they can be sent again)."""
    return [o for o in objects if o.retracted_by is None and Path(o.path).is_file()]


def find(session: Session, sop_instance_uid: str) -> ResultObject | None:
    """The row of an object the node emitted, or None (also: is this one of ours?)."""
    return session.scalars(
        select(ResultObject).where(ResultObject.sop_instance_uid == sop_instance_uid)
    ).first()


def next_instance_number(session: Session, series_instance_uid: str) -> int:
    """1 + the highest Instance Number the node gave in the series (1 for a new series)."""
    highest = session.scalar(
        select(func.max(ResultObject.instance_number)).where(
            ResultObject.series_instance_uid == series_instance_uid
        )
    )
    return int(highest or 0) + 1


def header(row: ResultObject) -> Dataset:
    """What a successor or a rejection note needs of an emitted object: its SOP Class, SOP
    Instance, Study and Series Instance UIDs."""
    ds = Dataset()
    ds.SOPClassUID = row.sop_class_uid
    ds.SOPInstanceUID = row.sop_instance_uid
    ds.StudyInstanceUID = row.study_instance_uid
    ds.SeriesInstanceUID = row.series_instance_uid
    return ds


def add(
    session: Session,
    *,
    job_id: int,
    kind: str,
    ds: Dataset,
    path: Path,
    content_digest: str | None = None,
    predecessor: str | None = None,
    model_name: str | None = None,
) -> None:
    """Record an object written for the first time (within the caller's unit of work)."""
    if find(session, str(ds.SOPInstanceUID)) is not None:
        return
    session.add(
        ResultObject(
            job_id=job_id,
            kind=kind,
            study_instance_uid=str(ds.StudyInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            instance_number=int(ds.InstanceNumber),
            content_digest=content_digest,
            predecessor_sop_instance_uid=predecessor,
            path=str(path),
            created_at=utcnow(),
            model_name=model_name,
        )
    )
    session.flush()


def mark_withdrawn(session: Session, sop_instance_uids: Iterable[str], by: str) -> None:
    """The objects are withdrawn by the rejection note `by`."""
    session.execute(
        update(ResultObject)
        .where(ResultObject.sop_instance_uid.in_(list(sop_instance_uids)))
        .values(retracted_by=by)
    )
