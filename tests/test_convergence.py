"""The model learns and explains: training on phantoms converges and its Grad-CAM points at the
lesions; the committed demo bundle holds up on fresh phantoms it never saw."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dicom_node.model.bundle import load_bundle
from dicom_node.model.infer import Classifier
from dicom_node.synthetic.localisation import localisation
from dicom_node.testing import DEMO_BUNDLE, held_out_phantoms, train_small_on_phantoms
from dicom_node.training.evaluate import evaluate, predict_dataset


@pytest.mark.timeout(900)  # about half a minute alone on two cores; far longer beside other work
def test_training_on_phantoms_converges_and_localises(tmp_path: Path) -> None:
    """The training loop reaches a mean AUROC >= 0.9 on 200 held-out phantoms, and the Grad-CAM
    peak of >= 80% of the correctly detected findings lies inside the finding's true box (86%
    measured; 83 to 98% over five training seeds, bench/RESULTS.md); all but a few are within
    the pointing game's tolerance (15 px at 224 px)."""
    outcome = train_small_on_phantoms(tmp_path / "bundle")
    classifier = Classifier(outcome.bundle, torch.device("cpu"))
    held_out = held_out_phantoms(outcome.bundle)
    report = evaluate(outcome.bundle, predict_dataset(classifier, held_out, description="held out"))
    assert report["mean_auroc"] >= 0.9, report
    loc = localisation(classifier, held_out, thresholds=outcome.bundle.thresholds)
    assert loc["detected"] >= 150, loc
    assert loc["hit_rate"] >= 0.8, loc
    assert loc["pointing_rate"] >= 0.9, loc


def test_demo_bundle_on_fresh_phantoms() -> None:
    """The demo bundle (DenseNet121, 128 px) keeps a mean AUROC >= 0.9 on 150 phantoms from a
    seed it never saw, and its Grad-CAM points at the findings: 71% of the detected ones peak
    inside the true box and 89% within the pointing tolerance (measured), guarded at 60% and
    80%. Its cells are 32 px at 128 px, so small findings (Nodule, Pleural_Thickening) miss."""
    bundle = load_bundle(DEMO_BUNDLE)
    classifier = Classifier(bundle, torch.device("cpu"))
    held_out = held_out_phantoms(bundle, n=150, phantom_size=256, prevalence=0.15)
    report = evaluate(bundle, predict_dataset(classifier, held_out, description="held out"))
    assert report["mean_auroc"] >= 0.9, report
    loc = localisation(classifier, held_out, thresholds=bundle.thresholds)
    assert loc["hit_rate"] >= 0.6 and loc["pointing_rate"] >= 0.8, loc
