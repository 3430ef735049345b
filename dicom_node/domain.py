"""Typed values passed between the stages of the pipeline (the encoders' own inputs live in
structured_reports.results and are re-exported here)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from pydicom import Dataset

from dicom_node.model.preprocess import Letterbox
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
    "ModelIdentity",
    "PreparedImage",
    "SkippedImage",
    "SourceImage",
    "StudyResult",
]


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class SourceImage:
    """A stored instance of the study: where it is and its header (no pixels)."""

    path: Path
    header: Dataset


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class PreparedImage:
    """An eligible radiograph after preprocessing: as a viewer shows it and as the model sees it."""

    header: Dataset
    display: npt.NDArray[np.uint8]
    model_input: torch.Tensor
    letterbox: Letterbox


@dataclass(frozen=True, kw_only=True, slots=True)
class JobOutcome:
    """How a job ended: state done, skipped or failed, and a one-line explanation."""

    state: str
    detail: str
