"""Evaluation of a bundle on labelled data: per-label AUROC with its bootstrap interval,
sensitivity and specificity at the bundle's thresholds, the report as JSON and the ROC curves as
a PNG (`dicom-node evaluate`)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from dicom_node.model.bundle import Bundle
from dicom_node.model.bundle_metadata import json_safe
from dicom_node.model.infer import Classifier
from dicom_node.training.classification_metrics import (
    Floats,
    bootstrap_auroc,
    known,
    label_metrics,
    roc_curve,
)
from dicom_node.training.roc_plot import write_roc_png

log = logging.getLogger(__name__)

BOOTSTRAP_REPLICATES = 1000


@dataclass(frozen=True, kw_only=True, slots=True)
class Predictions:
    """Probabilities and targets (N, labels) of a data set, and what the data set was."""

    probs: Floats
    truth: Floats
    description: str


def predict_dataset(
    classifier: Classifier,
    dataset: Dataset[Any],
    *,
    description: str,
    batch_size: int = 32,
    workers: int = 0,
) -> Predictions:
    """The classifier's probabilities for every sample of `dataset`."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    probs, truth = [], []
    for x, y in loader:
        probs.append(classifier.predict(x).astype(np.float64))
        truth.append(y.numpy().astype(np.float64))
    return Predictions(
        probs=np.concatenate(probs), truth=np.concatenate(truth), description=description
    )


def evaluate(
    bundle: Bundle,
    predictions: Predictions,
    *,
    thresholds: Sequence[float] | None = None,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics at the bundle's thresholds (or `thresholds`), each AUROC with its 95% bootstrap
    interval (`replicates` resamplings of the images, seeded; 0: none), with the bundle's
    identity and the data described."""
    chosen = bundle.thresholds if thresholds is None else tuple(thresholds)
    metrics = label_metrics(predictions.probs, predictions.truth, bundle.labels, chosen)
    intervals = bootstrap_auroc(
        predictions.probs, predictions.truth, replicates=replicates, seed=seed
    )
    for label, interval in zip(bundle.labels, intervals, strict=True):
        metrics["labels"][label]["auroc_ci95"] = list(interval)
    return {
        "bundle": {"name": bundle.identity.name, "version": bundle.identity.version},
        "weights_sha256": bundle.identity.weights_sha256,
        "data": predictions.description,
        "bootstrap": {
            "replicates": replicates,
            "seed": seed,
            "interval": "95% percentile bootstrap of the AUROC, images resampled",
        },
        **metrics,
    }


def _cell(value: float | None, width: int = 6) -> str:
    return (
        " " * (width - 3) + "n/a" if value is None or math.isnan(value) else f"{value:{width}.3f}"
    )


def format_table(report: Mapping[str, Any]) -> str:
    """The per-label metrics as an aligned text table."""
    lines = [
        f"{'label':<26} {'AUROC':>6} {'95% CI':>13} {'thresh':>6} {'sens':>6} {'spec':>6} "
        f"{'pos':>6}"
    ]
    for label, m in report["labels"].items():
        low, high = m.get("auroc_ci95") or (None, None)
        interval = f"{_cell(low, 5)}-{_cell(high, 5)}" if low is not None else " " * 11 + "--"
        cells = [_cell(m[k]) for k in ("auroc", "threshold", "sensitivity", "specificity")]
        auc, thr, sens, spec = cells
        lines.append(f"{label:<26} {auc} {interval:>13} {thr} {sens} {spec} {m['positives']:>6}")
    lines.append(f"{'mean AUROC':<26} {report['mean_auroc']:6.3f}  ({report['n_images']} images)")
    return "\n".join(lines)


def write_outputs(
    report: Mapping[str, Any], predictions: Predictions, out: Path
) -> tuple[Path, Path]:
    """evaluation.json and roc.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "evaluation.json"
    json_path.write_text(json.dumps(json_safe(dict(report)), indent=2, allow_nan=False) + "\n")
    labels = list(report["labels"])
    probs, truth = predictions.probs, predictions.truth
    curves = {k: roc_curve(*known(probs[:, i], truth[:, i])) for i, k in enumerate(labels)}
    aurocs = {k: report["labels"][k]["auroc"] for k in labels}
    points = {k: (1 - m["specificity"], m["sensitivity"]) for k, m in report["labels"].items()}
    title = f"{report['bundle']['name']} {report['bundle']['version']}: {report['n_images']} images"
    png = write_roc_png(out / "roc.png", curves, aurocs, title=title, operating_points=points)
    return json_path, png
