"""What the console's pages show, read from the database and the spool: the overview, the list
of recent studies, one study's page (instances, analysis, findings, objects, deliveries, audit
trail, feedback) and the SR's content as text. Plain data; the templates lay it out."""

from __future__ import annotations

import datetime as dt
import io
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from dicom_node.settings import Settings
from dicom_node.store.paths import absolute
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


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyRow:
    """One line of the list of recent studies."""

    study_instance_uid: str
    accession_number: str
    state: str
    received_at: dt.datetime
    job_state: str
    job_detail: str
    seconds: float | None


def studies(session: Session, query: str = "") -> list[StudyRow]:
    """Recent studies, newest first; `query` matches the Study Instance UID or the Accession
    Number (read from each study's first instance header)."""
    statement = select(Study).order_by(Study.first_received_at.desc()).limit(RECENT)
    if query and query.replace(".", "").isdigit():
        statement = statement.where(or_(Study.study_instance_uid == query))
    rows = []
    for study in session.scalars(statement).all():
        job = session.scalars(
            select(Job)
            .where(Job.study_instance_uid == study.study_instance_uid, Job.reason != "retract")
            .order_by(Job.id.desc())
        ).first()
        accession = str(_first_header(session, study.study_instance_uid).get("AccessionNumber", ""))
        if query and query not in (study.study_instance_uid, accession):
            continue
        seconds = None
        if job is not None and job.finished_at is not None:
            seconds = (job.finished_at - study.last_instance_at).total_seconds()
        rows.append(
            StudyRow(
                study_instance_uid=study.study_instance_uid,
                accession_number=accession,
                state=study.state,
                received_at=study.first_received_at,
                job_state=job.state if job else "-",
                job_detail=(job.detail or "") if job else "",
                seconds=seconds,
            )
        )
    return rows


def _first_header(session: Session, study_instance_uid: str) -> Dataset:
    path = absolute(
        session,
        session.scalar(
            select(Instance.path)
            .where(Instance.study_instance_uid == study_instance_uid, Instance.purged_at.is_(None))
            .order_by(Instance.received_at)
        ),
    )
    if not path:
        return Dataset()
    try:
        return dcmread(path, stop_before_pixels=True)
    except (OSError, ValueError, EOFError):
        return Dataset()


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


def study_page(session: Session, study_instance_uid: str) -> StudyPage | None:
    """The study page's content; None when the study is not stored here."""
    study = session.get(Study, study_instance_uid)
    if study is None:
        return None
    header = _first_header(session, study_instance_uid)
    jobs = list(
        session.scalars(
            select(Job).where(Job.study_instance_uid == study_instance_uid).order_by(Job.id)
        ).all()
    )
    analysis = [
        j for j in jobs if j.state in {"done", "skipped", "failed"} and j.reason != "retract"
    ]
    last = analysis[-1] if analysis else None
    results: dict[str, list[Result]] = {}
    skips: list[Skip] = []
    if last is not None:
        for result in session.scalars(
            select(Result).where(Result.job_id == last.id).order_by(Result.id)
        ).all():
            results.setdefault(result.sop_instance_uid, []).append(result)
        skips = list(session.scalars(select(Skip).where(Skip.job_id == last.id)).all())
    objects = list(
        session.scalars(
            select(ResultObject)
            .where(
                ResultObject.study_instance_uid == study_instance_uid,
                ResultObject.retracted_by.is_(None),
            )
            .order_by(ResultObject.id)
        ).all()
    )
    srs = [o for o in objects if o.kind == "sr"]
    return StudyPage(
        study=study,
        patient_name=str(header.get("PatientName", "")),
        patient_id=str(header.get("PatientID", "")),
        accession_number=str(header.get("AccessionNumber", "")),
        instances=list(
            session.scalars(
                select(Instance)
                .where(Instance.study_instance_uid == study_instance_uid)
                .order_by(Instance.received_at)
            ).all()
        ),
        jobs=jobs,
        results=results,
        skips=skips,
        objects=objects,
        sr_text=sr_lines(Path(srs[-1].path)) if srs else [],
        deliveries=list(
            session.scalars(
                select(Delivery)
                .where(Delivery.study_instance_uid == study_instance_uid)
                .order_by(Delivery.id)
            ).all()
        ),
        audit=list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.study_instance_uid == study_instance_uid)
                .order_by(AuditEvent.seq)
            ).all()
        ),
        feedback=list(
            session.scalars(
                select(Feedback)
                .where(Feedback.study_instance_uid == study_instance_uid)
                .order_by(Feedback.id)
            ).all()
        ),
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


def audit_counts(session: Session) -> Counter[str]:
    """Audit rows by type (the auditor's page)."""
    return Counter(
        dict(
            session.execute(
                select(AuditEvent.event_type, func.count()).group_by(AuditEvent.event_type)
            ).all()
        )
    )
