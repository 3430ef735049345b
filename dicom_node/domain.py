"""Typed values passed between the stages of the pipeline (the encoders' own inputs live in
structured_reports.results and are re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset

from structured_reports.results import (
    FindingResult,
    ImageResult,
    ModelIdentity,
    SkippedImage,
    StudyResult,
)

__all__ = [
    "FindingResult",
    "ImageResult",
    "JobOutcome",
    "Letterbox",
    "ModelIdentity",
    "PreparedImage",
    "SkippedImage",
    "SourceImage",
    "StudyResult",
]


CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelScope:
    """The images a model reads: SOP classes, modalities, words of the body part (Body Part
    Examined, else the study, series and protocol descriptions) and views (View Position or the
    View Code Sequence). The defaults are the chest radiograph model's: frontal chest CR and DX
    For Presentation. An empty `views` accepts every view."""

    sop_classes: tuple[str, ...] = (CR_STORAGE, DX_PRESENTATION_STORAGE)
    modalities: tuple[str, ...] = ("CR", "DX")
    body_parts: tuple[str, ...] = ("CHEST", "THORAX", "LUNG", "TORAX")
    views: tuple[str, ...] = ("PA", "AP")

    def describe(self) -> str:
        views = "/".join(self.views) or "any view"
        return f"{'/'.join(self.modalities)} {'/'.join(self.body_parts[:1])} {views}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Letterbox:
    """How a display image was placed into the square model input.

    The image was scaled by `scale` to `height` x `width` pixels and pasted at (`pad_top`,
    `pad_left`) into a `size` x `size` canvas; the rest is padding. `transposed`: the canvas
    holds the image transposed (rows are the display's columns), as MONAI's loaders order 2-D
    images; the other fields are in the display's orientation.
    """

    scale: float
    pad_top: int
    pad_left: int
    height: int
    width: int
    size: int
    transposed: bool = False

    @classmethod
    def centred(
        cls, *, size: int, height: int, width: int, scale: float, transposed: bool = False
    ) -> Letterbox:
        """An image of `height` x `width` pixels centred in the `size` x `size` canvas."""
        return cls(
            scale=scale,
            pad_top=(size - height) // 2,
            pad_left=(size - width) // 2,
            height=height,
            width=width,
            size=size,
            transposed=transposed,
        )

    def __post_init__(self) -> None:
        inside = self.pad_top >= 0 and self.pad_top + self.height <= self.size
        inside = inside and self.pad_left >= 0 and self.pad_left + self.width <= self.size
        if not (inside and self.height > 0 and self.width > 0 and self.scale > 0):
            raise ValueError(f"inconsistent letterbox {self}")


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class SourceImage:
    """A stored instance of the study: where it is and its header (no pixels); `unreadable`
    says why its file could not be read (the header then holds only what its row records)."""

    path: Path
    header: Dataset
    unreadable: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class PreparedImage:
    """An eligible radiograph after preprocessing: as a viewer shows it and as the model sees it."""

    header: Dataset
    display: npt.NDArray[np.uint8]
    model_input: npt.NDArray[np.float32]
    letterbox: Letterbox


@dataclass(frozen=True, kw_only=True, slots=True)
class JobOutcome:
    """How a job ended: state done, skipped or failed, and a one-line explanation."""

    state: str
    detail: str
