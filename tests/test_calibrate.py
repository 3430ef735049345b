"""`dicom-node evaluate --calibrate`: thresholds by Youden's J or a target sensitivity, AUROC with a
seeded 95% bootstrap interval, and a new bundle version carrying both; the metric pieces and the
masked loss that lets unknown labels stay out of training."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_node.cli import models
from dicom_node.model.bundle import METADATA, Bundle, load_bundle
from dicom_node.testing import tiny_bundle
from dicom_node.training.calibrate import calibrated_version
from dicom_node.training.classification_metrics import (
    auroc,
    bootstrap_auroc,
    bootstrap_draws,
    label_metrics,
    sensitivity_threshold,
)
from dicom_node.training.fit import LossKind, MaskedLoss, make_loss, positive_weights
from tests.fake_data import write_dicom_folder

PHANTOMS = ["--synthetic", "40", "--seed", "4", "--phantom-size", "64", "--prevalence", "0.4"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return tiny_bundle(tmp_path_factory.mktemp("bundle"))


def _evaluate(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    models.configure_evaluate(parser)
    return models.run_evaluate(parser.parse_args(list(argv)))


def test_target_sensitivity_threshold_is_the_highest_that_reaches_it() -> None:
    """With positives scored 0.9, 0.8, 0.7, 0.6, 0.2: 60% needs 0.7, 80% 0.6, 100% 0.2; a
    threshold above those loses a positive."""
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.5, 0.3, 0.1])
    truth = np.array([1, 1, 1, 1, 1, 0, 0, 0.0])
    assert sensitivity_threshold(scores, truth, 0.6) == 0.7
    assert sensitivity_threshold(scores, truth, 0.8) == 0.6
    assert sensitivity_threshold(scores, truth, 0.75) == 0.6
    assert sensitivity_threshold(scores, truth, 1.0) == 0.2
    rng = np.random.default_rng(0)
    scores, truth = rng.random(200), (rng.random(200) < 0.3).astype(float)
    for target in (0.5, 0.9, 0.95):
        t = sensitivity_threshold(scores, truth, target)
        pos = scores[truth > 0.5]
        assert (pos >= t).mean() >= target > (pos > t).mean()
    with pytest.raises(ValueError, match="target sensitivity"):
        sensitivity_threshold(scores, truth, 0.0)


def test_bootstrap_interval_is_the_percentiles_of_resampled_aurocs() -> None:
    """The vectorised interval equals AUROCs computed one replicate at a time on the same draws
    (unknown truths left out); the same seed gives the same interval, another seed another."""
    rng = np.random.default_rng(1)
    truth = (rng.random((60, 2)) < 0.4).astype(float)
    probs = np.round(np.clip(truth * 0.3 + rng.random((60, 2)) * 0.7, 0, 1), 1)  # ties
    truth[[3, 8], 1] = math.nan
    intervals = bootstrap_auroc(probs, truth, replicates=300, seed=7)
    counts = bootstrap_draws(60, 300, np.random.default_rng(7))
    for k in range(2):
        values = []
        for row in counts:
            idx = np.repeat(np.arange(60), row)
            t, s = truth[idx, k], probs[idx, k]
            keep = ~np.isnan(t)
            values.append(auroc(s[keep], t[keep]))
        low, high = np.nanpercentile(values, [2.5, 97.5])
        assert intervals[k] == (pytest.approx(low), pytest.approx(high))
        point = auroc(probs[~np.isnan(truth[:, k]), k], truth[~np.isnan(truth[:, k]), k])
        assert low < point < high
    assert bootstrap_auroc(probs, truth, replicates=300, seed=7) == intervals
    assert bootstrap_auroc(probs, truth, replicates=300, seed=8) != intervals


def test_unknown_targets_stay_out_of_metrics_loss_and_weights() -> None:
    """A NaN target counts for nothing: metrics equal those without those images, the masked
    loss equals the loss over the known elements, positive weights count known targets."""
    probs = np.array([[0.9], [0.2], [0.7], [0.4]])
    truth = np.array([[1.0], [0.0], [math.nan], [0.0]])
    m = label_metrics(probs, truth, ["A"], [0.5])["labels"]["A"]
    assert (m["positives"], m["negatives"], m["auroc"]) == (1, 2, 1.0)
    targets = torch.tensor([[1.0, math.nan], [0.0, 1.0], [0.0, 0.0], [math.nan, 0.0]])
    weights = positive_weights(targets, cap=5.0)
    assert weights.tolist() == [2.0, 2.0]
    logits = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    known = ~torch.isnan(targets)
    kinds: tuple[LossKind, ...] = ("weighted-bce", "focal")
    for kind in kinds:
        loss = make_loss(kind, weights, 2.0, masked=True)
        assert isinstance(loss, MaskedLoss)
        masked = loss(logits, targets)
        expected = loss.elementwise(logits, torch.nan_to_num(targets))[known].mean()
        assert torch.allclose(masked, expected) and torch.isfinite(masked)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.2.0", "0.2.0+cal.20260105"),
        ("1.0.0+3f2a9b", "1.0.0+3f2a9b.cal.20260105"),
        ("0.2.0+cal.20251231", "0.2.0+cal.20260105"),
        ("1.0.0+3f2a9b.cal.20251231", "1.0.0+3f2a9b.cal.20260105"),
    ],
)
def test_calibrated_version(version: str, expected: str) -> None:
    assert calibrated_version(version, dt.date(2026, 1, 5)) == expected


def test_calibrate_writes_a_new_bundle_version(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--calibrate picks Youden thresholds on the data, writes the same weights under a new
    version with the thresholds, the rule, the data and each AUROC with its interval, and
    puts evaluation.json and roc.png in the new bundle's docs/; a finding the model does not
    separate (AUROC <= 0.5) carries a warning."""
    out = tmp_path / "calibrated"
    assert _evaluate(str(bundle.path), *PHANTOMS, "--calibrate", "--out", str(out)) == 0
    new = load_bundle(out)
    today = dt.datetime.now(dt.UTC).date()
    assert new.identity.version == f"0.0.1+cal.{today:%Y%m%d}"
    assert new.identity.weights_sha256 == bundle.identity.weights_sha256
    assert new.identity.name == bundle.identity.name and new.labels == bundle.labels
    assert new.thresholds != bundle.thresholds
    section = json.loads((out / METADATA).read_text())["dicom_node"]
    calibration = section["calibration"]
    assert calibration["rule"].startswith("Youden") and "synthetic phantoms" in calibration["data"]
    assert calibration["calibrated_from"]["version"] == "0.0.1"
    assert calibration["bootstrap"]["replicates"] == 1000 and calibration["n_images"] == 40
    for label, threshold in zip(new.labels, new.thresholds, strict=True):
        entry = calibration["labels"][label]
        assert entry["threshold"] == threshold and entry["previous_threshold"] == 0.5
        low, high = entry["auroc_ci95"]
        assert low <= entry["auroc"] <= high
        assert ("warning" in entry) == (entry["auroc"] <= 0.5)  # no separation: said so
    report = json.loads((out / "docs" / "evaluation.json").read_text())
    assert report["bundle"]["version"] == new.identity.version
    assert (out / "docs" / "roc.png").is_file()
    assert "95% CI" in capsys.readouterr().out


def test_calibrate_to_a_target_sensitivity_and_a_given_version(
    bundle: Bundle, tmp_path: Path
) -> None:
    """--target-sensitivity 0.9 reaches at least 0.9 on the calibration data for every label
    with positives; --version names the new version."""
    write_dicom_folder(tmp_path / "dcm", patients=8, per_patient=3, size=64)
    out = tmp_path / "cal"
    argv = [str(bundle.path), str(tmp_path / "dcm"), "--calibrate", "--out", str(out)]
    assert _evaluate(*argv, "--target-sensitivity", "0.9", "--version", "0.0.2") == 0
    new = load_bundle(out)
    assert new.identity.version == "0.0.2"
    calibration = json.loads((out / METADATA).read_text())["dicom_node"]["calibration"]
    assert calibration["target_sensitivity"] == 0.9
    for entry in calibration["labels"].values():
        if entry["positives"] and entry["negatives"]:
            assert entry["sensitivity"] >= 0.9


def test_calibrate_refuses_what_it_cannot_do(
    bundle: Bundle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --out, a folder that is not empty, or --target-sensitivity without --calibrate: 2."""
    assert _evaluate(str(bundle.path), *PHANTOMS, "--calibrate") == 2
    assert _evaluate(str(bundle.path), *PHANTOMS, "--target-sensitivity", "0.9") == 2
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert _evaluate(str(bundle.path), *PHANTOMS, "--calibrate", "--out", str(full)) == 2
    assert "empty folder" in capsys.readouterr().out
