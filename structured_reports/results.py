"""Typed values the encoders take: the model's identity and what it found in each image."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

ScFindings = Literal["present", "all", "per_finding"]
"""What the Grad-CAM SCs of a destination show (see `structured_reports.sc`)."""
SC_FINDINGS: tuple[ScFindings, ...] = get_args(ScFindings)

# Prefix under which the node derives its own UIDs (2.25 = UUID-derived, PS3.5 B.2).
UID_PREFIX = "2.25."
# The Manufacturer of every object the node makes (its models' results, its rejection notes).
NODE_MANUFACTURER = "dicom-node"
# Namespace of the name-based (version 5) UUIDs the node derives its UIDs from.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-node:derived-uid")


def derive_uid(*parts: str) -> str:
    """A UID that is a pure function of `parts` (PS3.5 B.2, UUID-derived), so it is reproducible.

    A name-based UUID (RFC 9562 version 5) of the JSON list of `parts`, so ("a.b", "c") and
    ("a", "b.c") differ. (pydicom's `generate_uid(prefix=None, ...)` ignores its entropy sources
    and returns a random UUID, so it cannot be used here.)
    """
    name = json.dumps([str(p) for p in parts])
    return f"{UID_PREFIX}{uuid.uuid5(_UID_NAMESPACE, name).int}"


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelIdentity:
    """Who read the images: bundle name, version and the SHA-256 of its weights (the model card)."""

    name: str
    version: str
    weights_sha256: str
    manufacturer: str = NODE_MANUFACTURER
    synthetic_demo: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("a model identity needs a name and a version")
        if len(self.weights_sha256) != 64:
            raise ValueError("weights_sha256 must be a hex SHA-256 digest (64 characters)")

    @property
    def device_uid(self) -> str:
        """Device UID of the algorithm: changes whenever the weights change."""
        return derive_uid("model", self.name, self.version, self.weights_sha256)

    @property
    def label(self) -> str:
        """Short human-readable form, e.g. 'cxr14-densenet121-demo 0.1.0'."""
        return f"{self.name} {self.version}"


@dataclass(frozen=True, kw_only=True, slots=True)
class FindingResult:
    """One finding of one image: the model's probability and the bundle's threshold for it."""

    label: str
    probability: float
    threshold: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability of {self.label!r} out of [0, 1]: {self.probability}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold of {self.label!r} out of (0, 1): {self.threshold}")

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class ImageResult:
    """The analysis of one radiograph.

    `source` is the source instance's header (pixel data not needed). `display` is the radiograph
    as a viewer shows it (modality LUT, VOI LUT or window, MONOCHROME1 inverted), uint8, HxW,
    possibly downscaled. `maps` holds a Grad-CAM map in [0, 1] at `display`'s size for each
    finding label that has one (normally those present).
    """

    source: Dataset
    findings: tuple[FindingResult, ...]
    display: npt.NDArray[np.uint8]
    maps: Mapping[str, npt.NDArray[np.float32]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.display.ndim != 2 or self.display.dtype != np.uint8:
            raise ValueError("display must be a 2-D uint8 image")
        for label, cam in self.maps.items():
            if cam.shape != self.display.shape:
                raise ValueError(
                    f"map of {label!r} has shape {cam.shape}, display {self.display.shape}"
                )

    @property
    def sop_instance_uid(self) -> str:
        return str(self.source.SOPInstanceUID)

    @property
    def present(self) -> tuple[FindingResult, ...]:
        return tuple(f for f in self.findings if f.present)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class SkippedImage:
    """An image of the study that was not analysed, and why (never dropped silently)."""

    source: Dataset
    reason: str

    @property
    def sop_instance_uid(self) -> str:
        return str(self.source.SOPInstanceUID)


def critical_hits(
    images: Sequence[ImageResult], critical: Mapping[str, float]
) -> tuple[tuple[ImageResult, FindingResult], ...]:
    """The findings that cross a critical threshold: per label of `critical`, the image on which
    the label has its highest probability, when that probability is at or above the label's
    critical threshold. In the order the model reads its labels; on a tie, the first image."""
    best: dict[str, tuple[ImageResult, FindingResult]] = {}
    for image in images:
        for finding in image.findings:
            limit = critical.get(finding.label)
            if limit is None or finding.probability < limit:
                continue
            held = best.get(finding.label)
            if held is None or finding.probability > held[1].probability:
                best[finding.label] = (image, finding)
    return tuple(best.values())


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class StudyResult:
    """Everything the encoders need for one study.

    `critical` holds the critical thresholds in force, {label: threshold in (0, 1)}: a study
    with a finding at or above one is flagged in its SR (`structured_reports.evaluations`);
    empty, nothing is flagged.
    """

    study_instance_uid: str
    model: ModelIdentity
    images: tuple[ImageResult, ...]
    skipped: tuple[SkippedImage, ...] = ()
    failure: str | None = None  # why the analysis could not be completed, if it could not
    critical: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.images and not self.skipped:
            raise ValueError("a study result needs at least one analysed or skipped image")
        for source in self.sources:
            if str(source.StudyInstanceUID) != self.study_instance_uid:
                raise ValueError("every image of a study result must belong to its study")
        for label, threshold in self.critical.items():
            if not 0.0 < threshold < 1.0:
                raise ValueError(f"critical threshold of {label!r} out of (0, 1): {threshold}")
        object.__setattr__(self, "critical", MappingProxyType(dict(self.critical)))

    @property
    def critical_hits(self) -> tuple[tuple[ImageResult, FindingResult], ...]:
        """(image, finding) of each label at or above its critical threshold (`critical_hits`)."""
        return critical_hits(self.images, self.critical)

    @property
    def analysed(self) -> bool:
        return bool(self.images)

    @property
    def sources(self) -> tuple[Dataset, ...]:
        """Headers of every image of the result: the analysed ones, then the skipped ones."""
        return tuple(image.source for image in self.images) + tuple(
            item.source for item in self.skipped
        )
