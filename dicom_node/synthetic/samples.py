"""Phantom data sets for training and evaluation: phantom i of a seed is a pure function of
(seed, i), so any order or subset gives the same samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dicom_node.domain import Letterbox
from dicom_node.model.preprocess import InputSpec, prepare
from dicom_node.synthetic.phantoms import LABELS, Phantom, make_phantom, random_findings
from dicom_node.training.samples import Sample, Shifted, materialise
from dicom_node.training.trainer import TrainingData

# Phantoms move by up to this fraction of the input side while training (Shifted): positioning
# and collimation vary about this much in clinical films, and the phantoms barely move by
# themselves. A sixth of the side gave the best-placed Grad-CAM peaks (bench/RESULTS.md).
PHANTOM_SHIFT = 1 / 6
# Evaluation phantoms (`dicom-node evaluate --synthetic`): far from the training (seed) and
# validation (seed + 1000003) seeds.
SYNTHETIC_SEED_OFFSET = 7_000_001


class PhantomDataset(Dataset[Sample]):
    """Phantom i is a pure function of (seed, i): any order or subset gives the same samples."""

    def __init__(
        self,
        *,
        seed: int,
        n: int,
        spec: InputSpec,
        phantom_size: int,
        prevalence: float = 0.15,
        labels: Sequence[str] = LABELS,
    ) -> None:
        self.seed, self.n, self.spec = seed, n, spec
        self.phantom_size, self.prevalence, self.labels = phantom_size, prevalence, tuple(labels)

    def __len__(self) -> int:
        return self.n

    def phantom(self, index: int) -> Phantom:
        """The phantom behind sample `index` (with its findings' boxes)."""
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        findings = random_findings(rng, prevalence=self.prevalence, labels=self.labels)
        size = (self.phantom_size, self.phantom_size)
        return make_phantom(rng, findings=findings, size=size)

    def prepared(self, index: int) -> tuple[Phantom, torch.Tensor, Letterbox]:
        phantom = self.phantom(index)
        x, box = prepare(phantom.image, self.spec)
        return phantom, x, box

    def __getitem__(self, index: int) -> Sample:
        phantom, x, _ = self.prepared(index)
        return x, torch.tensor([float(label in phantom.findings) for label in self.labels])


def phantom_data(
    *,
    seed: int,
    n_train: int,
    n_val: int,
    spec: InputSpec,
    labels: tuple[str, ...],
    phantom_size: int = 256,
    prevalence: float = 0.15,
    shift: float = PHANTOM_SHIFT,
) -> TrainingData:
    """Phantoms from seed (training) and seed + 1000003 (validation), generated in memory; the
    training images move by up to `shift` of the input side (Shifted), validation ones do not."""
    train, val = (
        materialise(
            PhantomDataset(
                seed=s,
                n=n,
                spec=spec,
                phantom_size=phantom_size,
                prevalence=prevalence,
                labels=labels,
            ),
            n,
        )
        for s, n in ((seed, n_train), (seed + 1_000_003, n_val))
    )
    shift_pixels = round(shift * spec.size)
    moved = f"; training images shifted by up to {shift_pixels} px" if shift_pixels else ""
    description = (
        "synthetic chest phantoms (dicom_node.synthetic.phantoms), independent findings; "
        f"{n_train} training and {n_val} validation images, seed {seed}{moved}"
    )
    params = {"n_train": n_train, "n_val": n_val, "phantom_size": phantom_size}
    return TrainingData(
        train=Shifted(train, shift_pixels) if shift_pixels else train,
        val=val,
        targets=train.tensors[1],
        description=description,
        synthetic=True,
        params={**params, "prevalence": prevalence, "shift_pixels": shift_pixels},
    )
