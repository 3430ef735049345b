"""The result objects of one analysis: which SR and SCs it sends, written once and sent again byte
for byte, numbered across versions, and the rejection note for what a new version replaces.

- **SR.** A re-run of the same job (after a crash) sends that job's SR again. Otherwise, when the
  newest live SR of the study states the same (same model, same content digest) and the job is
  not an operator's reprocess, that SR is sent again; else a new SR names the newest live one as
  its predecessor and takes the next Instance Number of the series. A job that failed never
  replaces a result: its SR ("could not be analysed") stands beside the earlier ones.
- **SCs.** Each picture's UID states what it shows (`structured_reports.sc.sc_instance_uid`); an
  existing live encoding of that UID is sent again, unchanged (its heatmap may have differed in a
  grey level with the batch it was computed in); a new one takes the series' next number.
- **Withdrawal.** When a new SR replaces an earlier one, every live object of the study that the
  new result does not include (the old SR, SCs of changed images) is listed in one IOCM rejection
  note (`structured_reports.kos`), sent where the withdrawn objects went (`pipeline.deliver`).
  A re-run of the job sends its note again.

A UID that was withdrawn is never used again: the new object's UID is salted with the note.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.uid import KeyObjectSelectionDocumentStorage
from sqlalchemy.orm import Session

import dicom_node
from dicom_node.domain import ImageResult, StudyResult
from dicom_node.store import result_objects as objects
from dicom_node.store.schema import ResultObject
from dicom_node.store.spool import Spool
from structured_reports.kos import build_rejection_kos, rejection_uids
from structured_reports.results import NODE_MANUFACTURER, ScFindings
from structured_reports.sc import (
    ScView,
    build_gradcam_sc,
    sc_instance_uid,
    sc_series_uid,
    sc_views,
)
from structured_reports.sr import build_classification_sr, content_digest, sr_series_uid

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBERS: dict[ScFindings, int] = {"present": 9902, "all": 9903, "per_finding": 9904}


@dataclass(frozen=True, kw_only=True, slots=True)
class ResultFile:
    """A result object ready to send: what it is, where its bytes are, whether this job wrote it
    (`new`) or sends an earlier encoding again; for an SC the `sc_findings` it was made for; for
    a rejection note the UIDs it withdraws."""

    kind: str  # sr, sc or kos
    sop_instance_uid: str
    sop_class_uid: str
    path: Path
    new: bool
    sc_findings: ScFindings | None = None
    content_digest: str | None = None
    predecessor: str | None = None
    withdraws: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class JobContext:
    """What the choice of result objects depends on besides the study's result."""

    job_id: int
    reprocess: bool  # an operator asked for a new reading: always a new SR version
    replaces: bool  # False for a failed analysis: its SR replaces nothing


def write_result(spool: Spool, ds: Dataset) -> Path:
    """Encode `ds` as a Part 10 file in the spool's results area."""
    path = spool.result_path(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    spool.store(path, buffer.getvalue())
    return path


def choose_sr(session: Session, spool: Spool, study: StudyResult, job: JobContext) -> ResultFile:
    """The SR this analysis sends: this job's earlier one, the newest one when it states the
    same, or a new version (see the module docstring)."""
    history = objects.of_study(
        session, study.study_instance_uid, kind="sr", model_name=study.model.name
    )
    own = objects.live(r for r in history if r.job_id == job.job_id)
    if own:
        return _reused(own[-1])
    current = objects.live(history)
    newest = current[-1] if current else None
    digest = content_digest(study)
    if newest is not None and not job.reprocess and _states(newest, study, digest):
        return _reused(newest)
    predecessor = newest if job.replaces else None
    withdrawn = [r.retracted_by for r in history if r.retracted_by]
    sr = build_classification_sr(
        study,
        previous_versions=[objects.header(predecessor)] if predecessor else (),
        series_number=SR_SERIES_NUMBER,
        instance_number=objects.next_instance_number(session, sr_series_uid(study)),
        salt=withdrawn[-1] if withdrawn else "",
    )
    return ResultFile(
        kind="sr",
        sop_instance_uid=str(sr.SOPInstanceUID),
        sop_class_uid=str(sr.SOPClassUID),
        path=write_result(spool, sr),
        new=True,
        content_digest=digest,
        predecessor=predecessor.sop_instance_uid if predecessor else None,
    )


def choose_scs(
    session: Session, spool: Spool, study: StudyResult, choices: tuple[ScFindings, ...]
) -> list[ResultFile]:
    """Every SC of every analysed image for each `sc_findings` choice: the earlier encoding of
    each UID where there is one, else a new picture numbered after the series' last."""
    files: list[ResultFile] = []
    numbers: dict[str, int] = {}
    for findings in choices:
        for image in study.images:
            for view in sc_views(image, findings):
                files.append(_sc(session, spool, study, image, view, numbers=numbers))
    return files


def _sc(
    session: Session,
    spool: Spool,
    study: StudyResult,
    image: ImageResult,
    view: ScView,
    *,
    numbers: dict[str, int],
) -> ResultFile:
    uid = sc_instance_uid(image, study.model, view)
    existing = objects.find(session, uid)
    while existing is not None and existing.retracted_by:
        uid = sc_instance_uid(image, study.model, view, salt=existing.retracted_by)
        existing = objects.find(session, uid)
    if existing is not None and objects.live([existing]):
        return _reused(existing, sc_findings=view.findings)
    series = sc_series_uid(image, study.model, view.findings)
    if series not in numbers:
        numbers[series] = objects.next_instance_number(session, series)
    sc = build_gradcam_sc(
        image,
        study.model,
        view=view,
        series_number=SC_SERIES_NUMBERS[view.findings],
        instance_number=numbers[series],
        uid=uid,
    )
    numbers[series] += 1
    return ResultFile(
        kind="sc",
        sop_instance_uid=uid,
        sop_class_uid=str(sc.SOPClassUID),
        path=write_result(spool, sc),
        new=True,
        sc_findings=view.findings,
    )


def rejection_note(
    session: Session, spool: Spool, study_instance_uid: str, withdrawn: list[ResultObject]
) -> ResultFile:
    """The note withdrawing `withdrawn` (written once; the same set gives the same note)."""
    uids = [row.sop_instance_uid for row in withdrawn]
    series_uid, sop_uid = rejection_uids(study_instance_uid, uids)
    existing = objects.find(session, sop_uid)
    if existing is not None and objects.live([existing]):
        path, new = existing.path, False
    else:
        kos = build_rejection_kos(
            [read_header(row) for row in withdrawn],
            manufacturer=NODE_MANUFACTURER,
            model_name="dicom-node",
            software_versions=dicom_node.__version__,
            instance_number=objects.next_instance_number(session, series_uid),
        )
        path, new = str(write_result(spool, kos)), True
    return ResultFile(
        kind="kos",
        sop_instance_uid=sop_uid,
        sop_class_uid=str(KeyObjectSelectionDocumentStorage),
        path=Path(path),
        new=new,
        withdraws=tuple(uids),
    )


def choose_results(
    session: Session,
    spool: Spool,
    study: StudyResult,
    job: JobContext,
    sc_choices: tuple[ScFindings, ...],
) -> list[ResultFile]:
    """The SR, the SCs, and when the SR is a new version the rejection note of what it leaves
    out: every object this analysis sends."""
    sr = choose_sr(session, spool, study, job)
    files = [sr, *choose_scs(session, spool, study, sc_choices)]
    if sr.new and sr.predecessor:
        replaced = superseded(session, study, files)
        if replaced:
            files.append(rejection_note(session, spool, study.study_instance_uid, replaced))
    else:
        files += _own_notes(session, study, job.job_id)
    return files


def _own_notes(session: Session, study: StudyResult, job_id: int) -> list[ResultFile]:
    """The rejection notes an earlier attempt of this job made for this model's results (a
    re-run sends them again)."""
    rows = objects.of_study(session, study.study_instance_uid, model_name=study.model.name)
    withdrawing = {r.retracted_by for r in rows if r.kind != "kos"}
    return [
        ResultFile(
            kind="kos",
            sop_instance_uid=note.sop_instance_uid,
            sop_class_uid=note.sop_class_uid,
            path=Path(note.path),
            new=False,
            withdraws=tuple(
                r.sop_instance_uid for r in rows if r.retracted_by == note.sop_instance_uid
            ),
        )
        for note in objects.live(
            r
            for r in rows
            if r.kind == "kos" and r.job_id == job_id and r.sop_instance_uid in withdrawing
        )
    ]


def superseded(session: Session, study: StudyResult, keep: list[ResultFile]) -> list[ResultObject]:
    """The live SRs and SCs of the study's results by the same model that a new version leaves
    out (to be withdrawn); other models' results stand."""
    kept = {f.sop_instance_uid for f in keep}
    rows = objects.of_study(session, study.study_instance_uid, model_name=study.model.name)
    return [
        row
        for row in objects.live(rows)
        if row.kind in ("sr", "sc") and row.sop_instance_uid not in kept
    ]


def read_header(row: ResultObject) -> Dataset:
    """The emitted object's header as it was sent (for a rejection note's evidence)."""
    return dcmread(row.path, stop_before_pixels=True)


def _states(row: ResultObject, study: StudyResult, digest: str) -> bool:
    return row.series_instance_uid == sr_series_uid(study) and row.content_digest == digest


def _reused(row: ResultObject, *, sc_findings: ScFindings | None = None) -> ResultFile:
    return ResultFile(
        kind=row.kind,
        sop_instance_uid=row.sop_instance_uid,
        sop_class_uid=row.sop_class_uid,
        path=Path(row.path),
        new=False,
        sc_findings=sc_findings,
        content_digest=row.content_digest,
        predecessor=row.predecessor_sop_instance_uid,
    )
