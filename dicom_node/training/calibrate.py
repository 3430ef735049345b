"""Thresholds chosen on local labelled data, written as a new version of the bundle
(`dicom-node evaluate --calibrate`).

Each finding's threshold follows one rule on the calibration data's probabilities:

- Youden's J: the threshold that maximises sensitivity + specificity - 1;
- target sensitivity t: the highest threshold whose sensitivity is at least t.

A finding without both positive and negative images keeps its threshold; one whose AUROC on the
data is 0.5 or less gets a warning in the metadata (and the log): its threshold means nothing.
The new bundle has the same weights (so the same SHA-256), the new thresholds, a version that
says so (0.2.0 becomes 0.2.0+cal.<yyyymmdd> unless one is given) and a `calibration` entry
naming the data, the rule and each finding's AUROC with its bootstrap interval; the SR and the
audit trail name that version.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from dicom_node.model.bundle import METADATA, SECTION, Bundle, BundleError, load_bundle
from dicom_node.model.bundle_metadata import json_safe
from dicom_node.training.classification_metrics import (
    Floats,
    known,
    sensitivity_threshold,
    youden_threshold,
)
from dicom_node.training.evaluate import Predictions

log = logging.getLogger(__name__)
NO_SEPARATION = (
    "AUROC <= 0.5: the model does not separate this finding on the calibration data; the "
    "threshold chosen is not meaningful (validate the model for this finding before use)"
)
MAX_VERSION = 64  # Software Versions (0018,1020) is LO: 64 characters
_CALIBRATION_TAG = re.compile(r"[+.]cal\.\d{8}$")


@dataclass(frozen=True, kw_only=True, slots=True)
class ThresholdRule:
    """Youden's J, or the highest threshold reaching `target` sensitivity."""

    method: Literal["youden", "sensitivity"] = "youden"
    target: float | None = None

    def __post_init__(self) -> None:
        if self.method == "sensitivity" and not (self.target and 0.0 < self.target <= 1.0):
            raise ValueError(f"a target sensitivity must lie in (0, 1], not {self.target}")
        if self.method == "youden" and self.target is not None:
            raise ValueError("Youden's J takes no target sensitivity")

    def describe(self) -> str:
        if self.method == "youden":
            return "Youden's J (max sensitivity + specificity - 1)"
        return f"highest threshold with sensitivity >= {self.target}"

    def threshold(self, scores: Floats, truth: Floats) -> float:
        if self.method == "youden":
            return youden_threshold(scores, truth)
        return sensitivity_threshold(scores, truth, float(self.target or 0.0))


def choose_thresholds(
    bundle: Bundle, predictions: Predictions, rule: ThresholdRule
) -> tuple[tuple[float, ...], dict[str, str]]:
    """Each label's threshold by `rule`, and a note for each label that kept its old one."""
    thresholds, kept = [], {}
    for k, label in enumerate(bundle.labels):
        scores, truth = known(predictions.probs[:, k], predictions.truth[:, k])
        positives = int((truth > 0.5).sum())
        if positives == 0 or positives == len(truth):
            thresholds.append(bundle.thresholds[k])
            kept[label] = "kept: the calibration data lack positive or negative images"
        else:
            thresholds.append(rule.threshold(scores, truth))
    return tuple(thresholds), kept


def calibrated_version(version: str, day: dt.date) -> str:
    """`version` with the calibration date as its local part: 0.2.0 -> 0.2.0+cal.20260105,
    1.0.0+3f2a -> 1.0.0+3f2a.cal.20260105 (an earlier calibration's date is replaced)."""
    base = _CALIBRATION_TAG.sub("", version)
    return f"{base}{'.' if '+' in base else '+'}cal.{day:%Y%m%d}"


def _section(
    report: Mapping[str, Any],
    bundle: Bundle,
    rule: ThresholdRule,
    kept: Mapping[str, str],
    day: dt.date,
) -> dict[str, Any]:
    per_label = {}
    for label, old in zip(bundle.labels, bundle.thresholds, strict=True):
        m = report["labels"][label]
        entry = {"previous_threshold": old, **m}
        if label in kept:
            entry["note"] = kept[label]
        elif m.get("auroc") is not None and m["auroc"] <= 0.5:
            entry["warning"] = NO_SEPARATION
            log.warning(
                "calibration: %s has AUROC %.3f on these data: %s", label, m["auroc"], NO_SEPARATION
            )
        per_label[label] = entry
    identity = bundle.identity
    return {
        "rule": rule.describe(),
        "target_sensitivity": rule.target,
        "data": report["data"],
        "n_images": report["n_images"],
        "date": day.isoformat(),
        "calibrated_from": {
            "name": identity.name,
            "version": identity.version,
            "weights_sha256": identity.weights_sha256,
        },
        "bootstrap": report.get("bootstrap", {}),
        "mean_auroc": report["mean_auroc"],
        "labels": per_label,
    }


def write_calibrated_bundle(
    bundle: Bundle,
    out: Path,
    *,
    report: Mapping[str, Any],
    rule: ThresholdRule,
    thresholds: Sequence[float],
    kept: Mapping[str, str],
    version: str | None = None,
    day: dt.date | None = None,
) -> Bundle:
    """A copy of `bundle` in `out` (which must not hold anything yet) with `thresholds`, a new
    version and the calibration `report` (evaluate's, at those thresholds) in its metadata."""
    day = day or dt.datetime.now(dt.UTC).date()
    new_version = version or calibrated_version(bundle.identity.version, day)
    if len(new_version) > MAX_VERSION or new_version == bundle.identity.version:
        raise BundleError(f"version {new_version!r}: give a new one of at most 64 characters")
    if out.resolve() == bundle.path.resolve() or (out.exists() and any(out.iterdir())):
        raise BundleError(f"{out}: the calibrated bundle needs a new, empty folder")
    if out.exists():
        out.rmdir()
    shutil.copytree(bundle.path, out)
    doc = json.loads((bundle.path / METADATA).read_text(encoding="utf-8"))
    section = doc[SECTION]
    section["thresholds"] = dict(zip(bundle.labels, thresholds, strict=True))
    section["threshold_method"] = f"{rule.describe()} on {report['data']} ({day.isoformat()})"
    section["calibration"] = json_safe(_section(report, bundle, rule, kept, day))
    doc["version"] = new_version
    doc.setdefault("changelog", {})[new_version] = (
        f"thresholds calibrated by dicom-node on {report['n_images']} local images: "
        f"{rule.describe()}"
    )
    (out / METADATA).write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    calibrated = load_bundle(out)
    if calibrated.identity.weights_sha256 != bundle.identity.weights_sha256:
        raise BundleError(f"{out}: the copied weights differ from {bundle.path}'s")
    return calibrated
