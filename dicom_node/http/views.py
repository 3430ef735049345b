"""What the console's pages show, read from the database and the spool: the overview, the list
of recent studies, one study's page (instances, analysis, findings, objects, deliveries, audit
trail, feedback) and the SR's content as text. Plain data; the templates lay it out."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.http.api.queries import first_header
from dicom_node.settings import Settings
from dicom_node.store.schema import (
    AuditEvent,
    Delivery,
    Feedback,
    Instance,
    Job,
    Result,
    ResultObject,
    Skip,
    Study,
    utcnow,
)

RECENT = 100


@dataclass(frozen=True, kw_only=True, slots=True)
class Overview:
    """The last 24 hours, the queue, the destinations, the disk and the model."""

    received: int
    analysed: int
    skipped: int
    failed: int
    queued: int
    oldest_queued_seconds: float
    destinations: list[tuple[str, dict[str, int]]]
    disk_free: int
    disk_minimum: int


def overview(session: Session, settings: Settings) -> Overview:
    """The overview page's figures."""
    since = utcnow() - dt.timedelta(hours=24)
    received = session.scalar(select(func.count()).where(Instance.received_at >= since)) or 0
    finished = dict(
        session.execute(
            select(Job.state, func.count())
            .where(Job.finished_at >= since, Job.reason != "retract")
            .group_by(Job.state)
        ).all()
    )
    queued = session.scalar(select(func.count()).where(Job.state == "queued")) or 0
    oldest = session.scalar(select(func.min(Job.created_at)).where(Job.state == "queued"))
    by_destination: dict[str, dict[str, int]] = {}
    for ae, host, port, state, count in session.execute(
        select(
            Delivery.destination_ae,
            Delivery.destination_host,
            Delivery.destination_port,
            Delivery.state,
            func.count(),
        ).group_by(
            Delivery.destination_ae,
            Delivery.destination_host,
            Delivery.destination_port,
            Delivery.state,
        )
    ).all():
        by_destination.setdefault(f"{ae}@{host}:{port}", {})[state] = count
    for d in settings.destinations:
        by_destination.setdefault(str(d), {})
    try:
        free = shutil.disk_usage(settings.spool_dir).free
    except OSError:
        free = 0
    return Overview(
        received=received,
        analysed=finished.get("done", 0),
        skipped=finished.get("skipped", 0),
        failed=finished.get("failed", 0),
        queued=queued,
        oldest_queued_seconds=(utcnow() - oldest).total_seconds() if oldest else 0.0,
        destinations=sorted(by_destination.items()),
        disk_free=free,
        disk_minimum=settings.min_free_disk_bytes,
    )


@dataclass(kw_only=True, slots=True)
class StudyPage:
    """Everything the study page shows."""

    study: Study
    patient_name: str
    patient_id: str
    accession_number: str
    instances: list[Instance]
    jobs: list[Job]
    results: dict[str, list[Result]]
    skips: list[Skip]
    objects: list[ResultObject]
    sr_text: list[str]
    deliveries: list[Delivery]
    audit: list[AuditEvent]
    feedback: list[Feedback]
    labels: list[str] = field(default_factory=list)


def _of_study(session: Session, entity: Any, study_instance_uid: str, order: Any) -> list[Any]:
    """The study's rows of one table, in `order`."""
    where = entity.study_instance_uid == study_instance_uid
    return list(session.scalars(select(entity).where(where).order_by(order)).all())


def study_page(session: Session, study_instance_uid: str) -> StudyPage | None:
    """The study page's content; None when the study is not stored here."""
    study = session.get(Study, study_instance_uid)
    if study is None:
        return None
    header = first_header(session, study_instance_uid)
    jobs = _of_study(session, Job, study_instance_uid, Job.id)
    ended = [j for j in jobs if j.state in {"done", "skipped", "failed"} and j.reason != "retract"]
    results: dict[str, list[Result]] = {}
    skips: list[Skip] = []
    if ended:
        last = ended[-1].id
        query = select(Result).where(Result.job_id == last).order_by(Result.id)
        for result in session.scalars(query).all():
            results.setdefault(result.sop_instance_uid, []).append(result)
        skips = list(session.scalars(select(Skip).where(Skip.job_id == last)).all())
    objects = [
        o
        for o in _of_study(session, ResultObject, study_instance_uid, ResultObject.id)
        if o.retracted_by is None
    ]
    srs = [o for o in objects if o.kind == "sr"]
    return StudyPage(
        study=study,
        patient_name=str(header.get("PatientName", "")),
        patient_id=str(header.get("PatientID", "")),
        accession_number=str(header.get("AccessionNumber", "")),
        instances=_of_study(session, Instance, study_instance_uid, Instance.received_at),
        jobs=jobs,
        results=results,
        skips=skips,
        objects=objects,
        sr_text=sr_lines(Path(srs[-1].path)) if srs else [],
        deliveries=_of_study(session, Delivery, study_instance_uid, Delivery.id),
        audit=_of_study(session, AuditEvent, study_instance_uid, AuditEvent.seq),
        feedback=_of_study(session, Feedback, study_instance_uid, Feedback.id),
        labels=sorted({r.label for rows in results.values() for r in rows}),
    )


def sr_lines(path: Path) -> list[str]:
    """The SR's content tree as indented text: concept name, then its value."""
    try:
        sr = dcmread(path)
    except (OSError, ValueError, EOFError):
        return ["(the SR file cannot be read)"]
    root = sr.get("ConceptNameCodeSequence")
    lines: list[str] = [str(root[0].CodeMeaning)] if root else []
    _walk(sr, 1, lines)
    return lines


def _walk(item: Dataset, depth: int, lines: list[str]) -> None:
    for child in item.get("ContentSequence", []):
        name = (
            child.ConceptNameCodeSequence[0].CodeMeaning
            if "ConceptNameCodeSequence" in child
            else ""
        )
        lines.append("  " * depth + f"{name}: {_value(child)}".rstrip(": "))
        _walk(child, depth + 1, lines)


def _value(item: Dataset) -> str:
    kind = str(item.get("ValueType", ""))
    if kind == "TEXT":
        return str(item.TextValue)
    if kind == "CODE":
        return str(item.ConceptCodeSequence[0].CodeMeaning)
    if kind == "NUM":
        measured = item.MeasuredValueSequence[0]
        return f"{measured.NumericValue} {measured.MeasurementUnitsCodeSequence[0].CodeValue}"
    if kind == "UIDREF":
        return str(item.UID)
    if kind == "IMAGE":
        return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    return ""


def object_png(path: Path, max_side: int = 1024) -> bytes:
    """A result object's pixels (the Grad-CAM SC) as PNG."""
    ds = dcmread(path)
    pixels: Any = ds.pixel_array
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    image.thumbnail((max_side, max_side))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
