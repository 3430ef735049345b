"""Torch datasets of (model input, target) pairs through the one preprocessing path."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, TensorDataset

from dicom_node.model.preprocess import InputSpec, prepare, read_display
from dicom_node.training.records import Record

Sample = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, kw_only=True, slots=True)
class Augment:
    """Mild geometric and intensity changes; never a flip (laterality is anatomy)."""

    degrees: float = 7.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05  # fraction of the side
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: tuple[float, float] = (0.9, 1.1)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def augment(x: torch.Tensor, spec: InputSpec, aug: Augment) -> torch.Tensor:
    """A randomly rotated, scaled, shifted, gamma- and contrast-changed copy of a model input.

    Works in display units (x * std + mean, in [0, 1]); what comes into view is black, like the
    letterbox padding. Uses torch's global generator (seeded per DataLoader worker).
    """
    mean, std = spec.scale()
    display = (x * std + mean)[None]
    angle = math.radians(_uniform(-aug.degrees, aug.degrees))
    zoom = _uniform(*aug.scale)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    tx, ty = (_uniform(-2 * aug.shift, 2 * aug.shift) for _ in range(2))  # [-1, 1] units
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=x.dtype)
    grid = torch.nn.functional.affine_grid(theta[None], list(display.shape), align_corners=False)
    moved = torch.nn.functional.grid_sample(display, grid, align_corners=False)[0]
    moved = moved.clamp(0.0, 1.0) ** _uniform(*aug.gamma)
    moved = ((moved - 0.5) * _uniform(*aug.contrast) + 0.5).clamp(0.0, 1.0)
    return (moved - mean) / std


def shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """An image (C, H, W) moved down by dy and right by dx whole pixels, its edges replicated."""
    m = max(abs(dy), abs(dx))
    if m == 0:
        return x
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x[None], (m, m, m, m), mode="replicate")[0]
    return padded[:, m - dy : m - dy + h, m - dx : m - dx + w]


class Shifted(Dataset[Sample]):
    """A dataset whose images move by a fresh random whole-pixel offset, up to `max_pixels` each
    way, on every read (torch's global generator), their edges replicated.

    Phantoms barely move in the frame, so a network trained on them can tell position from the
    image border (zero padding gives convolutions a sense of absolute position) and put its
    evidence anywhere; with the shifts, the Grad-CAM peaks inside the true box rose from 76% to
    90% (bench/RESULTS.md). Whole pixels, so nothing is resampled and a pneumothorax's thin
    pleural line stays sharp (rotation and scaling blur it away at small input sizes).
    """

    def __init__(self, base: TensorDataset, max_pixels: int) -> None:
        self.base = base
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Sample:
        x, y = self.base[index]
        dy, dx = (int(v) for v in torch.randint(-self.max_pixels, self.max_pixels + 1, (2,)))
        return shift(x, dy, dx), y


class RecordDataset(Dataset[Sample]):
    """Image files (PNG/JPEG or DICOM) with their targets, prepared as the node prepares them."""

    def __init__(
        self,
        records: Sequence[Record],
        *,
        labels: Sequence[str],
        spec: InputSpec,
        aug: Augment | None = None,
    ) -> None:
        self.records, self.labels, self.spec, self.aug = tuple(records), tuple(labels), spec, aug

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        x, _ = prepare(read_display(record.path), self.spec)
        if self.aug is not None:
            x = augment(x, self.spec, self.aug)
        return x, torch.tensor(record.target(self.labels))

    def targets(self) -> torch.Tensor:
        """All targets (N, labels) without reading an image."""
        return torch.tensor([r.target(self.labels) for r in self.records]).reshape(
            len(self.records), len(self.labels)
        )


def materialise(dataset: Dataset[Sample], n: int) -> TensorDataset:
    """All samples in memory once (generating a phantom costs more than reading a tensor)."""
    xs, ys = zip(*(dataset[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(xs), torch.stack(ys))
