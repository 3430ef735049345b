"""Synthetic chest radiograph phantoms with known findings (their DICOM encoding:
`phantom_dicom`)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from dicom_node.synthetic.anatomy import ANATOMY_CHANGES, compose, heart_geometry, random_anatomy
from dicom_node.synthetic.canvas import Box, Canvas, Image32, blur, smooth_noise
from dicom_node.synthetic.lesions import PAINTERS
from dicom_node.training.datasets import CXR14_LABELS as LABELS

__all__ = ["LABELS", "Phantom", "blur", "make_phantom", "random_findings"]


@dataclass
class Phantom:
    """A synthetic radiograph as displayed (dense = bright, in [0, 1]) and its findings' boxes."""

    image: Image32
    findings: dict[str, Box] = field(default_factory=dict)


def make_phantom(
    rng: np.random.Generator, *, findings: Collection[str], size: tuple[int, int] = (512, 512)
) -> Phantom:
    """Draw a PA chest phantom showing exactly `findings` (NIH ChestX-ray14 label strings)."""
    unknown = set(findings) - set(LABELS)
    if unknown:
        raise ValueError(f"unknown finding labels {sorted(unknown)}; known: {', '.join(LABELS)}")
    if min(size) < 64:
        raise ValueError(f"phantom size {size} too small; at least 64 pixels a side")
    anatomy = random_anatomy(rng)
    wanted = [label for label in LABELS if label in findings]
    for label in wanted:
        if label in ANATOMY_CHANGES:
            anatomy = ANATOMY_CHANGES[label](anatomy, rng)
    c = Canvas(rng, size, anatomy)
    boxes: dict[str, Box] = {}
    for label in wanted:
        if label in PAINTERS:
            boxes[label] = PAINTERS[label](c)
    if "Cardiomegaly" in wanted:
        boxes["Cardiomegaly"] = c.box(c.ellipse(*heart_geometry(anatomy)), 0.5)
    img = blur(compose(c) + c.layer, 0.0015 * min(size))
    img += 0.03 * smooth_noise(rng, size, 8)
    img += rng.normal(0.0, 0.012 * max(1.0, c.scale), size).astype(np.float32)
    image = (np.clip(img, 0.0, 1.0) ** rng.uniform(0.85, 1.15)).astype(np.float32)
    return Phantom(image=image, findings={k: boxes[k] for k in wanted})


def random_findings(
    rng: np.random.Generator, *, prevalence: float = 0.12, labels: Sequence[str] = LABELS
) -> list[str]:
    """Labels drawn independently with probability `prevalence` each (may be empty: no finding)."""
    return [label for label in labels if rng.random() < prevalence]
