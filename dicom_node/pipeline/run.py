"""The pipeline of one study, in one place:

load sources -> select images -> preprocess -> infer -> explain (Grad-CAM)
-> encode SR (naming the report it replaces) + SCs (as each destination wants them)
-> store results, report and deliveries -> send -> job done | skipped | failed
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from pydicom import Dataset, dcmread
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Outcome
from dicom_node.dimse.scu import Sender
from dicom_node.domain import (
    FindingResult,
    ImageResult,
    JobOutcome,
    PreparedImage,
    SkippedImage,
    SourceImage,
    StudyResult,
)
from dicom_node.model.batching import BatchingClassifier
from dicom_node.model.bundle import Bundle
from dicom_node.model.decode_pool import DecodePool, prepare_files
from dicom_node.model.explain import map_to_display
from dicom_node.model.preprocess import PreprocessError
from dicom_node.pipeline.deliver import deliver
from dicom_node.pipeline.selection import skip_reason
from dicom_node.settings import Destination, Settings
from dicom_node.store.jobs import ClaimedJob
from dicom_node.store.reports import predecessors, record_report
from dicom_node.store.schema import Delivery, Instance, Result, Skip, utcnow
from dicom_node.store.spool import Spool
from structured_reports.results import SC_FINDINGS, ScFindings
from structured_reports.sc import build_gradcam_scs
from structured_reports.sr import build_classification_sr

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBERS: dict[ScFindings, int] = {"present": 9902, "all": 9903, "per_finding": 9904}


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ResultObject:
    """An encoded result: the SR (`sc_findings` None) or an SC made for that `sc_findings`."""

    dataset: Dataset
    sc_findings: ScFindings | None = None

    @property
    def is_sr(self) -> bool:
        return self.sc_findings is None


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Services:
    """What a worker needs, built once per process and passed explicitly."""

    settings: Settings
    sessions: sessionmaker[Session]
    spool: Spool
    bundle: Bundle
    sender: Sender
    batcher: BatchingClassifier
    decode_pool: DecodePool | None = None  # None: decode in the worker thread

    @property
    def model_label(self) -> str:
        identity = self.bundle.identity
        label = f"{identity.name} {identity.version} sha256:{identity.weights_sha256[:12]}"
        return f"{label} (synthetic demo model)" if identity.synthetic_demo else label


def run_study(ctx: Services, job: ClaimedJob) -> JobOutcome:
    """Analyse one study and deliver its results; each stage is a plain function below."""
    sources = load_sources(ctx.sessions, job.study_instance_uid)
    eligible, skipped = select_images(sources, ctx.settings.require_view_position)
    prepared, unreadable = prepare_images(
        eligible, ctx.bundle, ctx.settings.sc_max_side, ctx.decode_pool
    )
    images = analyse(ctx, prepared)
    study = StudyResult(
        study_instance_uid=job.study_instance_uid,
        model=ctx.bundle.identity,
        images=tuple(images),
        skipped=(*skipped, *unreadable),
    )
    previous = predecessors(ctx.sessions, study)
    objects = encode_results(
        study, previous_versions=previous, sc_findings=wanted_sc_findings(ctx.settings)
    )
    delivery_ids = store_results(ctx, job, study, objects, previous=previous)
    sent, failed = deliver(ctx.sessions, ctx.sender, delivery_ids, model=ctx.model_label)
    return summarise(study, sent, failed)


def load_sources(sessions: sessionmaker[Session], study_instance_uid: str) -> list[SourceImage]:
    with sessions() as session:
        paths = session.scalars(
            select(Instance.path)
            .where(Instance.study_instance_uid == study_instance_uid)
            .order_by(Instance.received_at)
        ).all()
    return [SourceImage(path=Path(p), header=dcmread(p, stop_before_pixels=True)) for p in paths]


def select_images(
    sources: list[SourceImage], require_view_position: bool
) -> tuple[list[SourceImage], list[SkippedImage]]:
    eligible: list[SourceImage] = []
    skipped: list[SkippedImage] = []
    for source in sources:
        reason = skip_reason(source.header, require_view_position=require_view_position)
        if reason is None:
            eligible.append(source)
        else:
            skipped.append(SkippedImage(source=source.header, reason=reason))
    return eligible, skipped


def prepare_images(
    sources: list[SourceImage], bundle: Bundle, max_side: int, pool: DecodePool | None = None
) -> tuple[list[PreparedImage], list[SkippedImage]]:
    """Decode and render each image as a viewer would (in the decode pool when there is one);
    unsupported pixels become skips."""
    outcomes = prepare_files([s.path for s in sources], bundle.input_spec, max_side, pool)
    prepared: list[PreparedImage] = []
    skipped: list[SkippedImage] = []
    for source, outcome in zip(sources, outcomes, strict=True):
        if isinstance(outcome, PreprocessError):
            skipped.append(SkippedImage(source=source.header, reason=f"pixel data: {outcome}"))
            continue
        prepared.append(
            PreparedImage(
                header=source.header,
                display=outcome.display,
                model_input=torch.from_numpy(outcome.model_input),
                letterbox=outcome.letterbox,
            )
        )
    return prepared, skipped


def analyse(ctx: Services, prepared: list[PreparedImage]) -> list[ImageResult]:
    """Classify the images (batched with other studies' by the batcher) and Grad-CAM the
    findings above threshold."""
    if not prepared:
        return []
    bundle = ctx.bundle
    analysis = ctx.batcher.analyse(torch.stack([p.model_input for p in prepared]))
    probabilities, cams = analysis.probabilities, analysis.maps
    return [
        ImageResult(
            source=p.header,
            findings=tuple(
                FindingResult(label=label, probability=float(prob), threshold=float(threshold))
                for label, prob, threshold in zip(
                    bundle.labels, row, bundle.thresholds, strict=True
                )
            ),
            display=p.display,
            maps={
                bundle.labels[index]: map_to_display(cam, p.letterbox, p.display.shape)
                for index, cam in image_cams.items()
            },
        )
        for p, row, image_cams in zip(prepared, probabilities, cams, strict=True)
    ]


def encode_results(
    study: StudyResult,
    *,
    previous_versions: list[Dataset] | None = None,
    sc_findings: tuple[ScFindings, ...] = ("present",),
) -> list[ResultObject]:
    """The SR for the study (also when nothing could be analysed), naming the reports it
    replaces, and the SCs of every analysed image for each choice in `sc_findings`."""
    sr = build_classification_sr(
        study, previous_versions=previous_versions or (), series_number=SR_SERIES_NUMBER
    )
    objects = [ResultObject(dataset=sr)]
    for findings in sc_findings:
        objects += [
            ResultObject(dataset=ds, sc_findings=findings) for ds in _numbered_scs(study, findings)
        ]
    return objects


def wanted_sc_findings(settings: Settings) -> tuple[ScFindings, ...]:
    """The SC choices some destination wants; the default one when none sends SCs (the SCs are
    then only kept in the spool)."""
    wanted = {d.sc_findings for d in settings.destinations if d.send_sc}
    return tuple(f for f in SC_FINDINGS if f in wanted) or ("present",)


def _numbered_scs(study: StudyResult, findings: ScFindings) -> list[Dataset]:
    scs: list[Dataset] = []
    for image in study.images:
        scs += build_gradcam_scs(
            image,
            study.model,
            findings=findings,
            series_number=SC_SERIES_NUMBERS[findings],
            first_instance_number=len(scs) + 1,
        )
    return scs


def store_results(
    ctx: Services,
    job: ClaimedJob,
    study: StudyResult,
    objects: list[ResultObject],
    *,
    previous: list[Dataset] | None = None,
) -> list[int]:
    """Write result files, then results, skips, the report and pending deliveries in one
    transaction."""
    paths = [_write_result(ctx.spool, obj.dataset) for obj in objects]
    with ctx.sessions.begin() as session:
        _add_findings(session, job.id, study)
        _add_skips(session, job.id, study, ctx.model_label)
        [(sr, sr_path)] = [(o.dataset, p) for o, p in zip(objects, paths, strict=True) if o.is_sr]
        record_report(
            session, job_id=job.id, sr=sr, study=study, path=sr_path, previous=previous or []
        )
        deliveries = [
            _delivery(job, obj.dataset, path, destination)
            for obj, path in zip(objects, paths, strict=True)
            for destination in ctx.settings.destinations
            if _wants(destination, obj)
        ]
        session.add_all(deliveries)
        session.flush()
        return [d.id for d in deliveries]


def summarise(study: StudyResult, sent: int, failed: int) -> JobOutcome:
    delivery = f"{sent} result object(s) delivered" + (f", {failed} failed" if failed else "")
    if not study.analysed:
        reasons = "; ".join(sorted({s.reason for s in study.skipped}))
        return JobOutcome(state="skipped", detail=f"no image analysed ({reasons}); {delivery}")
    present = sorted({f.label for image in study.images for f in image.present})
    found = ", ".join(present) if present else "no finding above threshold"
    return JobOutcome(state="done", detail=f"{len(study.images)} image(s): {found}; {delivery}")


def _write_result(spool: Spool, ds: Dataset) -> Path:
    path = spool.result_path(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    spool.store(path, buffer.getvalue())
    return path


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


def _add_skips(session: Session, job_id: int, study: StudyResult, model: str) -> None:
    for skipped in study.skipped:
        session.add(
            Skip(job_id=job_id, sop_instance_uid=skipped.sop_instance_uid, reason=skipped.reason)
        )
        audit.record(
            session,
            Event.IMAGE_SKIPPED,
            Outcome.SKIPPED,
            study_instance_uid=study.study_instance_uid,
            sop_instance_uid=skipped.sop_instance_uid,
            sop_class_uid=str(skipped.source.get("SOPClassUID", "")) or None,
            job_id=job_id,
            model=model,
            detail=skipped.reason,
        )


def _wants(destination: Destination, obj: ResultObject) -> bool:
    """The SR goes where `send_sr`; an SC where `send_sc` and it was made for the destination's
    `sc_findings`."""
    if obj.is_sr:
        return destination.send_sr
    return destination.send_sc and destination.sc_findings == obj.sc_findings


def _delivery(job: ClaimedJob, ds: Dataset, path: Path, destination: Destination) -> Delivery:
    return Delivery(
        job_id=job.id,
        study_instance_uid=job.study_instance_uid,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        path=str(path),
        destination_ae=destination.ae_title,
        destination_host=destination.host,
        destination_port=destination.port,
        state="pending",
        attempts=0,
        updated_at=utcnow(),
    )
