"""Which model reads which images of a study: each model the node serves (`ModelRoute`) with
the images its scope accepts, the images none reads (with every model's reason), and one outcome
for the job from each model's (`summarise`, `combine`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dicom_node.domain import JobOutcome, ModelScope, SkippedImage, SourceImage, StudyResult
from dicom_node.model.batching import BatchingClassifier
from dicom_node.model.bundle import Bundle
from dicom_node.pipeline.selection import skip_reason


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ModelRoute:
    """One model the node serves: its bundle (with the scope of images it reads), its batching
    classifier and the critical findings in force for it."""

    bundle: Bundle
    batcher: BatchingClassifier
    critical: Mapping[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return model_label(self.bundle)


def model_label(bundle: Bundle) -> str:
    """How logs and audit rows name a model: name, version, weights digest, demo flag."""
    identity = bundle.identity
    label = f"{identity.name} {identity.version} sha256:{identity.weights_sha256[:12]}"
    return f"{label} (synthetic demo model)" if identity.synthetic_demo else label


def select_images(
    sources: list[SourceImage], require_view_position: bool, scope: ModelScope
) -> tuple[list[SourceImage], list[SkippedImage]]:
    """The images a model of `scope` may read, and every other image with its reason."""
    eligible: list[SourceImage] = []
    skipped: list[SkippedImage] = []
    for source in sources:
        try:
            reason = skip_reason(source.header, scope, require_view_position=require_view_position)
        except (ValueError, TypeError) as exc:  # a malformed value: this image only
            reason = f"header: {exc}"
        if reason is None:
            eligible.append(source)
        else:
            skipped.append(SkippedImage(source=source.header, reason=reason))
    return eligible, skipped


def route_images(
    images: list[SourceImage], routes: Sequence[ModelRoute], require_view_position: bool
) -> tuple[list[tuple[ModelRoute, list[SourceImage]]], list[SkippedImage]]:
    """Each model with the images of its scope (only models that read some; the first model
    with none when no model reads any), and the images no model reads, each with why."""
    plan = []
    read: set[int] = set()
    reasons: dict[int, list[str]] = {id(s.header): [] for s in images}
    for route in routes:
        eligible, skipped = select_images(images, require_view_position, route.bundle.scope)
        if eligible:
            plan.append((route, eligible))
            read |= {id(s.header) for s in eligible}
        for item in skipped:
            reasons[id(item.source)].append(
                item.reason if len(routes) == 1 else f"{route.bundle.identity.name}: {item.reason}"
            )
    unread = [
        SkippedImage(source=s.header, reason="; ".join(reasons[id(s.header)]))
        for s in images
        if id(s.header) not in read
    ]
    return plan or [(routes[0], [])], unread


def combine(
    plan: Sequence[tuple[ModelRoute, list[SourceImage]]], outcomes: Sequence[JobOutcome]
) -> JobOutcome:
    """The job's outcome: done when some model analysed images; each model's detail named
    where there are several."""
    if len(outcomes) == 1:
        return outcomes[0]
    state = "done" if any(o.state == "done" for o in outcomes) else outcomes[0].state
    detail = " | ".join(
        f"{route.bundle.identity.name}: {o.detail}"
        for (route, _), o in zip(plan, outcomes, strict=True)
    )
    return JobOutcome(state=state, detail=detail)


def summarise(
    study: StudyResult, *, sent: int = 0, failed: int = 0, queued: int | None = None
) -> JobOutcome:
    """How the job ended, in one line (`queued`: handed to the delivery lanes)."""
    if queued is not None:
        delivery = f"{queued} result object(s) queued for delivery"
    else:
        delivery = f"{sent} result object(s) delivered" + (f", {failed} failed" if failed else "")
    if study.failure:
        return JobOutcome(state="failed", detail=f"{study.failure}; {delivery}")
    if not study.analysed:
        reasons = "; ".join(sorted({s.reason for s in study.skipped}))
        return JobOutcome(state="skipped", detail=f"no image analysed ({reasons}); {delivery}")
    present = sorted({f.label for image in study.images for f in image.present})
    found = ", ".join(present) if present else "no finding above threshold"
    return JobOutcome(state="done", detail=f"{len(study.images)} image(s): {found}; {delivery}")
