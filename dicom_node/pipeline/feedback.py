"""Readers' verdicts on the model's findings, and the labels they make for retraining
(docs/feedback.md).

A verdict judges one finding of one analysed image: `agree` (the model's call stands),
`disagree` (the call is wrong: present becomes absent, absent becomes present) or `missed` (a
finding the model did not call is there). The newest verdict per image and finding wins.
`export_labels` writes the corrected labels as the DICOM-folder layout `dicom-node train` and
`dicom-node evaluate` read (training/datasets.py): a `labels.csv` with a `file` column relative
to the folder and a `labels` column of `|`-separated findings (`No Finding` when none), the
images beside it under `images/`.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Peer
from dicom_node.errors import NodeError
from dicom_node.store.schema import Feedback, Instance, Job, Result, utcnow

log = logging.getLogger(__name__)
VERDICTS = ("agree", "disagree", "missed")
LABELS_CSV = "labels.csv"  # training/datasets.py DICOM_LABELS_CSV
NO_FINDING = "No Finding"  # training/datasets.py NO_FINDING
IMAGES = "images"
COLUMNS = ("file", "labels", "study_instance_uid", "sop_instance_uid", "reviewed")


class FeedbackError(NodeError, ValueError):
    """A verdict that cannot be recorded, or an export that cannot be written; says why."""


class Agreement(NamedTuple):
    """Per finding and day (UTC): how many current verdicts agree with the model, how many not
    (`disagree` and `missed`)."""

    label: str
    day: dt.date
    agreed: int
    disagreed: int


@dataclass(frozen=True, kw_only=True, slots=True)
class LabelledImage:
    """One analysed image: its spooled file and the findings present after the readers'
    corrections; `reviewed`: some reader judged at least one of its findings."""

    path: Path
    study_instance_uid: str
    sop_instance_uid: str
    findings: frozenset[str]
    reviewed: bool


def record_feedback(
    session: Session,
    *,
    study_instance_uid: str,
    sop_instance_uid: str,
    label: str,
    verdict: str,
    user_name: str,
    labels: Sequence[str] | None = None,
    peer: Peer | None = None,
) -> int:
    """Store a verdict on the study's newest analysis (its newest done job) and audit it, in the
    caller's unit of work (`peer`: the reader's client address); the row's id. FeedbackError for
    an unknown verdict, a label outside `labels` (the bundle's, when given) or not reported on
    that image, or an image not analysed."""
    if verdict not in VERDICTS:
        raise FeedbackError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    if labels is not None and label not in labels:
        raise FeedbackError(f"{label!r} is not a finding of the model ({', '.join(labels)})")
    job_id = session.scalar(
        select(Job.id)
        .where(Job.study_instance_uid == study_instance_uid, Job.state == "done")
        .order_by(Job.id.desc())
        .limit(1)
    )
    if job_id is None:
        raise FeedbackError(f"study {study_instance_uid} has no analysis to judge on this node")
    reported = set(
        session.scalars(
            select(Result.label).where(
                Result.job_id == job_id, Result.sop_instance_uid == sop_instance_uid
            )
        ).all()
    )
    if not reported:
        raise FeedbackError(
            f"image {sop_instance_uid} was not analysed in job {job_id} of study "
            f"{study_instance_uid}"
        )
    if label not in reported:
        raise FeedbackError(f"{label!r} was not reported on image {sop_instance_uid}")
    row = Feedback(
        study_instance_uid=study_instance_uid,
        sop_instance_uid=sop_instance_uid,
        label=label,
        verdict=verdict,
        job_id=job_id,
        user_name=user_name,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        Event.FEEDBACK_RECORDED,
        peer=peer,
        user_id=user_name,
        study_instance_uid=study_instance_uid,
        sop_instance_uid=sop_instance_uid,
        job_id=job_id,
        detail=f"{label}: {verdict}",
    )
    return int(row.id)


def _current(rows: Iterable[Feedback]) -> dict[tuple[str, str], Feedback]:
    """The newest verdict per (image, finding)."""
    newest: dict[tuple[str, str], Feedback] = {}
    for row in sorted(rows, key=lambda r: (r.created_at, r.id)):
        newest[(row.sop_instance_uid, row.label)] = row
    return newest


def agreement(sessions: sessionmaker[Session], *, since: dt.date | None = None) -> list[Agreement]:
    """The current verdicts (newest per image and finding) by finding and day of the verdict,
    oldest day first: the console's agreement chart."""
    with sessions() as session:
        rows = session.scalars(select(Feedback)).all()
    counts: dict[tuple[str, dt.date], list[int]] = {}
    for row in _current(rows).values():
        day = row.created_at.astimezone(dt.UTC).date()
        if since is not None and day < since:
            continue
        tally = counts.setdefault((row.label, day), [0, 0])
        tally[0 if row.verdict == "agree" else 1] += 1
    return [
        Agreement(label=label, day=day, agreed=a, disagreed=d)
        for (label, day), (a, d) in sorted(counts.items(), key=lambda item: (item[0][1], item[0]))
    ]


def corrected(call: bool, verdict: str) -> bool:
    """Whether the finding is present once the verdict is applied to the model's call."""
    if verdict == "missed":
        return True
    return call if verdict == "agree" else not call


def labelled_images(session: Session, *, include_all: bool = False) -> list[LabelledImage]:
    """Every image of every study's newest analysis (its newest done job) with its corrected
    findings, each verdict applied to the call it judged; images nobody judged only with
    `include_all`. Images whose file the retention policy removed are left out."""
    newest = select(func.max(Job.id)).where(Job.state == "done").group_by(Job.study_instance_uid)
    verdicts = _current(session.scalars(select(Feedback)).all())
    judged_jobs = {v.job_id for v in verdicts.values() if v.job_id is not None}
    calls: dict[tuple[int, str, str], bool] = {}
    images: dict[tuple[str, str], dict[str, bool]] = {}
    rows = session.execute(
        select(
            Result.job_id,
            Result.study_instance_uid,
            Result.sop_instance_uid,
            Result.label,
            Result.present,
            Result.job_id.in_(newest).label("newest"),
        ).where(or_(Result.job_id.in_(newest), Result.job_id.in_(judged_jobs)))
    ).all()
    for job_id, study, sop_uid, label, present, is_newest in rows:
        calls[(job_id, sop_uid, label)] = present
        if is_newest:
            images.setdefault((study, sop_uid), {})[label] = present
    paths = {  # entities, not the path column: the session hands their paths out absolute
        i.sop_instance_uid: i.path
        for i in session.scalars(
            select(Instance).where(
                Instance.purged_at.is_(None),
                Instance.sop_instance_uid.in_(
                    select(Result.sop_instance_uid).where(Result.job_id.in_(newest))
                ),
            )
        ).all()
    }
    out = []
    for (study, sop_uid), image_calls in sorted(images.items()):
        findings, reviewed = set(), False
        for label, call in image_calls.items():
            verdict = verdicts.get((sop_uid, label))
            present = call
            if verdict is not None:
                reviewed = True
                judged = calls.get((verdict.job_id or -1, sop_uid, label), call)
                present = corrected(judged, verdict.verdict)
            if present:
                findings.add(label)
        if (reviewed or include_all) and sop_uid in paths:
            out.append(
                LabelledImage(
                    path=Path(paths[sop_uid]),
                    study_instance_uid=study,
                    sop_instance_uid=sop_uid,
                    findings=frozenset(findings),
                    reviewed=reviewed,
                )
            )
    return out


def export_labels(sessions: sessionmaker[Session], out: Path, *, include_all: bool = False) -> int:
    """Write `out/labels.csv` and copies of the images under `out/images/` (copies, not links:
    what is done to the export never touches the spool); the number of images written.
    FeedbackError when `out` is not an empty or new folder."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FeedbackError(f"{out} exists and is not an empty folder: choose a new one")
    with sessions() as session:
        images = labelled_images(session, include_all=include_all)
    (out / IMAGES).mkdir(parents=True, exist_ok=True)
    written = 0
    with (out / LABELS_CSV).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for image in images:
            if not image.path.is_file():
                log.warning("feedback export: %s is no longer in the spool", image.path)
                continue
            written += 1
            relative = Path(IMAGES) / f"{written:06d}.dcm"
            shutil.copyfile(image.path, out / relative)
            labels = "|".join(sorted(image.findings)) or NO_FINDING
            writer.writerow(
                (
                    relative.as_posix(),
                    labels,
                    image.study_instance_uid,
                    image.sop_instance_uid,
                    int(image.reviewed),
                )
            )
    log.info("feedback export: %d image(s) and %s written to %s", written, LABELS_CSV, out)
    return written
