"""`dicom-node evaluate`: metrics at the bundle's thresholds, the JSON, the ROC PNG, and the
metric functions behind them."""

from __future__ import annotations

import argparse
import json
import math
from itertools import product
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_node.cli import models
from dicom_node.model.bundle import Bundle
from dicom_node.training.classification_metrics import (
    at_threshold,
    auroc,
    roc_curve,
    youden_threshold,
)
from tests.fake_data import write_dicom_folder
from tests.test_infer import LABELS, tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    models.configure_evaluate(parser)
    return models.run_evaluate(parser.parse_args(list(argv)))


def test_auroc_is_the_probability_a_positive_outranks_a_negative() -> None:
    """AUROC equals the pairwise definition (ties count half) and the area under roc_curve."""
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(40), 1)  # many ties
    truth = (rng.random(40) < 0.4).astype(float)
    pos, neg = scores[truth > 0.5], scores[truth < 0.5]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)]
    assert auroc(scores, truth) == pytest.approx(np.mean(pairs))
    fpr, tpr = roc_curve(scores, truth)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(np.mean(pairs))
    assert math.isnan(auroc(scores, np.zeros(40)))


def test_threshold_metrics() -> None:
    """Sensitivity and specificity count scores at or above the threshold as positive."""
    scores = np.array([0.1, 0.4, 0.6, 0.8, 0.3, 0.9])
    truth = np.array([0, 0, 0, 1, 1, 1.0])
    m = at_threshold(scores, truth, 0.5)
    assert (m["sensitivity"], m["specificity"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert youden_threshold(scores, truth) in (0.8, 0.3)


def test_evaluate_synthetic_writes_json_and_roc_png(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--synthetic N --seed S prints a table, writes evaluation.json (every bundle label, its
    threshold, AUROC, sensitivity, specificity; strict JSON) and a ROC curve PNG."""
    out = tmp_path / "eval"
    status = _run(
        str(bundle.path),
        "--synthetic",
        "24",
        "--seed",
        "3",
        "--phantom-size",
        "64",
        "--prevalence",
        "0.4",
        "--out",
        str(out),
        "--localisation",
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "mean AUROC" in printed and all(label in printed for label in LABELS)
    report = json.loads((out / "evaluation.json").read_text())
    assert list(report["labels"]) == list(LABELS) and report["n_images"] == 24
    for label, threshold in zip(LABELS, bundle.thresholds, strict=True):
        entry = report["labels"][label]
        assert entry["threshold"] == threshold
        assert {"auroc", "sensitivity", "specificity", "positives"} <= set(entry)
    assert report["weights_sha256"] == bundle.identity.weights_sha256
    assert "localisation" in report
    with Image.open(out / "roc.png") as png:
        assert png.size == (1000, 700) and png.mode == "RGB"


def test_evaluate_a_dicom_folder(bundle: Bundle, tmp_path: Path) -> None:
    """A DICOM folder without a split column is evaluated whole; the JSON says so."""
    write_dicom_folder(tmp_path / "dcm", patients=3, per_patient=2, size=64)
    assert _run(str(bundle.path), str(tmp_path / "dcm"), "--out", str(tmp_path / "e")) == 0
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["n_images"] == 6 and "no test split" in report["data"]


def test_evaluate_reports_bad_input(tmp_path: Path, bundle: Bundle) -> None:
    """A folder that is not a bundle, or no data at all, gives status 2 and a message."""
    assert _run(str(tmp_path), "--synthetic", "2") == 2
    assert _run(str(bundle.path)) == 2
