"""The pipeline of one study, in one place:

load sources -> images apart from other objects -> select images (for each model, by its scope)
-> per model that reads some: preprocess -> infer -> explain (Grad-CAM) -> report: choose the SR
(reuse or new version) and SCs, withdraw what a new version replaces -> record results, objects
and deliveries -> send -> job done | skipped

A job that fails for good still reports (`report_failure`): an SR saying that the study could not
be analysed and why, for every image of it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import metrics
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
from dicom_node.errors import PreprocessError
from dicom_node.model.batching import BatchingClassifier
from dicom_node.model.bundle import Bundle
from dicom_node.model.decode_pool import DecodePool, prepare_files
from dicom_node.model.explain import map_to_display
from dicom_node.model.pixel_budget import DEFAULT_MAX_PIXELS
from dicom_node.notify import plan_notifications
from dicom_node.pipeline.deliver import deliver
from dicom_node.pipeline.dispatch import DeliveryLanes, schedule_of
from dicom_node.pipeline.record import record_results
from dicom_node.pipeline.results import JobContext, ResultFile, choose_results
from dicom_node.pipeline.routes import ModelRoute, combine, route_images, summarise
from dicom_node.pipeline.selection import is_image
from dicom_node.settings import Settings
from dicom_node.store.database import reading
from dicom_node.store.jobs import ClaimedJob
from dicom_node.store.schema import Instance
from dicom_node.store.spool import Spool
from structured_reports.results import SC_FINDINGS, ScFindings

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Services:
    """What a worker needs, built once per process and passed explicitly. `models`: every model
    the node serves, the first one first (the REST API's predictions and a failed study's SR
    are the first model's)."""

    settings: Settings
    sessions: sessionmaker[Session]
    spool: Spool
    models: tuple[ModelRoute, ...]
    sender: Sender
    decode_pool: DecodePool | None = None  # None: decode in the worker thread
    lanes: DeliveryLanes | None = None  # None: the job sends its results itself
    notify_wake: threading.Event | None = None  # set once a job has planned notifications

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a worker needs at least one model")

    @property
    def bundle(self) -> Bundle:
        return self.models[0].bundle

    @property
    def batcher(self) -> BatchingClassifier:
        return self.models[0].batcher

    @property
    def model_label(self) -> str:
        return self.models[0].label

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label some model reports, the first model's first."""
        return tuple(dict.fromkeys(label for m in self.models for label in m.bundle.labels))


def run_study(ctx: Services, job: ClaimedJob) -> JobOutcome:
    """Analyse one study with each model that reads some of its images, and deliver the
    results (one SR per model); each stage is a plain function below."""
    sources = load_sources(ctx.sessions, job.study_instance_uid)
    images, others = separate_images(sources)
    plan, skipped = route_images(images, ctx.models, ctx.settings.require_view_position)
    outcomes = []
    for k, (route, eligible) in enumerate(plan):
        with metrics.timed("decode"):
            prepared, unreadable = prepare_images(
                eligible,
                route.bundle,
                ctx.settings.sc_max_side,
                ctx.decode_pool,
                max_pixels=ctx.settings.max_decoded_pixels,
            )
        analysed = analyse(route, prepared)  # inference and gradcam: timed by the batcher
        if analysed:
            metrics.count_findings(
                [f.label for f in analysed[0].findings],
                {f.label for image in analysed for f in image.present},
            )
        outcomes.append(
            report(
                ctx,
                job,
                analysed,
                [*skipped, *unreadable],
                others if k == 0 else (),
                route=route,
                first=k == 0,
            )
        )
    return combine(plan, outcomes)


def report_failure(ctx: Services, job: ClaimedJob, reason: str) -> JobOutcome:
    """The SR of a study whose analysis failed for good (by the first model): every image not
    analysed, with why. It replaces no earlier result."""
    images, others = separate_images(load_sources(ctx.sessions, job.study_instance_uid))
    skipped = [SkippedImage(source=s.header, reason=f"analysis failed: {reason}") for s in images]
    return report(ctx, job, [], skipped, others, route=ctx.models[0], failure=reason)


def report(
    ctx: Services,
    job: ClaimedJob,
    analysed: Sequence[ImageResult],
    skipped: Sequence[SkippedImage],
    others: Sequence[SkippedImage],
    *,
    route: ModelRoute,
    first: bool = True,
    failure: str | None = None,
) -> JobOutcome:
    """Choose, write, record and send one model's result objects for the study; how that
    ended. `first`: the job's first report, which records the study's skips."""
    if not analysed and not skipped:
        return _nothing_to_report(ctx, job, others)
    study = StudyResult(
        study_instance_uid=job.study_instance_uid,
        model=route.bundle.identity,
        images=tuple(analysed),
        skipped=tuple(skipped),
        failure=failure,
        critical=route.critical,
    )
    context = JobContext(job_id=job.id, reprocess=job.reason == "reprocess", replaces=not failure)
    # Encoding takes a while: on a read-only snapshot, so that C-STORE commits go on meanwhile.
    with reading(ctx.sessions) as session, metrics.timed("encode"):
        files = choose_results(session, ctx.spool, study, context, wanted_sc_findings(ctx.settings))
    with ctx.sessions.begin() as session:
        delivery_ids = record_results(
            session,
            job_id=job.id,
            study_instance_uid=job.study_instance_uid,
            study=study,
            others=others,
            files=files,
            destinations=ctx.settings.destinations,
            model=route.label,
            first=first,
        )
        planned = plan_critical(session, ctx, job, study, files)
    if planned and ctx.notify_wake is not None:
        ctx.notify_wake.set()
    if ctx.lanes is not None:  # each destination's lane sends them once the job has ended
        return summarise(study, queued=len(delivery_ids))
    sent, failed = deliver(
        ctx.sessions,
        ctx.sender,
        delivery_ids,
        model=route.label,
        destinations=ctx.settings.destinations,
        schedule=schedule_of(ctx.settings),
    )
    return summarise(study, sent=sent, failed=failed)


def plan_critical(
    session: Session,
    ctx: Services,
    job: ClaimedJob,
    study: StudyResult,
    files: Sequence[ResultFile],
) -> list[int]:
    """The critical-finding notifications of this result version (its SR), in the job's
    transaction; none when nothing crosses a critical threshold."""
    sr = next((f for f in files if f.kind == "sr"), None)
    if sr is None or not study.images:
        return []
    return plan_notifications(
        session,
        job_id=job.id,
        study=study,
        sr_sop_instance_uid=sr.sop_instance_uid,
        header=study.images[0].source,
        critical=study.critical,
        settings=ctx.settings,
    )


def load_sources(sessions: sessionmaker[Session], study_instance_uid: str) -> list[SourceImage]:
    """The study's stored instances, oldest first, each with its header (no pixels); a file
    that cannot be read gets a header of what its row records and its reason."""
    with sessions() as session:
        rows = session.scalars(
            select(Instance)
            .where(Instance.study_instance_uid == study_instance_uid, Instance.purged_at.is_(None))
            .order_by(Instance.received_at)
        ).all()
    return [_source(row) for row in rows]


def _source(row: Instance) -> SourceImage:
    try:
        return SourceImage(path=Path(row.path), header=dcmread(row.path, stop_before_pixels=True))
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        header = Dataset()
        header.SOPClassUID, header.SOPInstanceUID = row.sop_class_uid, row.sop_instance_uid
        header.StudyInstanceUID = row.study_instance_uid
        header.SeriesInstanceUID = row.series_instance_uid
        log.warning("stored instance cannot be read: %s", type(exc).__name__)
        return SourceImage(path=Path(row.path), header=header, unreadable=f"{type(exc).__name__}")


def separate_images(
    sources: Sequence[SourceImage],
) -> tuple[list[SourceImage], list[SkippedImage]]:
    """The images of the study, and its other objects (presentation states, key object
    selections, reports, documents; files that cannot be read), each with why it is not read."""
    images: list[SourceImage] = []
    others: list[SkippedImage] = []
    for source in sources:
        if source.unreadable:
            reason = f"the stored file cannot be read ({source.unreadable})"
            others.append(SkippedImage(source=source.header, reason=reason))
        elif is_image(source.header):
            images.append(source)
        else:
            reason = "not an image: " + str(source.header.SOPClassUID.name or "unknown SOP class")
            others.append(SkippedImage(source=source.header, reason=reason))
    return images, others


def prepare_images(
    sources: list[SourceImage],
    bundle: Bundle,
    max_side: int,
    pool: DecodePool | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[list[PreparedImage], list[SkippedImage]]:
    """Decode and render each image as a viewer would (in the decode pool when there is one);
    unsupported pixels become skips."""
    outcomes = prepare_files(
        [s.path for s in sources], bundle.input_spec, max_side, pool, max_pixels=max_pixels
    )
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
                model_input=outcome.model_input,
                letterbox=outcome.letterbox,
            )
        )
    return prepared, skipped


def analyse(route: ModelRoute, prepared: list[PreparedImage]) -> list[ImageResult]:
    """Classify the images with the route's model (batched with other studies' by its batcher)
    and Grad-CAM the findings above threshold."""
    if not prepared:
        return []
    bundle = route.bundle
    batch = torch.stack([torch.from_numpy(p.model_input) for p in prepared])
    analysis = route.batcher.analyse(batch)
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
        for p, row, image_cams in zip(prepared, analysis.probabilities, analysis.maps, strict=True)
    ]


def wanted_sc_findings(settings: Settings) -> tuple[ScFindings, ...]:
    """The SC choices some destination wants; the default one when none sends SCs (the SCs are
    then only kept in the spool)."""
    wanted = {d.sc_findings for d in settings.destinations if d.send_sc}
    return tuple(f for f in SC_FINDINGS if f in wanted) or ("present",)


def _nothing_to_report(
    ctx: Services, job: ClaimedJob, others: Sequence[SkippedImage]
) -> JobOutcome:
    """A study without any image (only presentation states, key objects, reports): recorded,
    and no SR, which would have no image to name."""
    with ctx.sessions.begin() as session:
        record_results(
            session,
            job_id=job.id,
            study_instance_uid=job.study_instance_uid,
            study=None,
            others=others,
            files=(),
            destinations=(),
            model=ctx.model_label,
        )
    kinds = "; ".join(sorted({o.reason for o in others})) or "nothing stored"
    return JobOutcome(state="skipped", detail=f"no image in the study ({kinds}); no SR sent")
