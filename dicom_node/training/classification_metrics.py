"""Multi-label classification metrics: AUROC, ROC curves, thresholds, sensitivity/specificity."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]


def _ranks(scores: Floats) -> Floats:
    """1-based ranks of `scores`, ties given their average rank."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    average = (starts + ends - 1) / 2 + 1  # mean of the 1-based ranks of each tie group
    ranks = np.empty(len(scores), np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def auroc(scores: Floats, truth: Floats) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN without both classes."""
    scores, pos = np.asarray(scores, np.float64), np.asarray(truth) > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _ranks(scores)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: Floats, truth: Floats) -> tuple[Floats, Floats]:
    """(false positive rates, true positive rates) from (0, 0) to (1, 1), one point per score."""
    scores, pos = np.asarray(scores, np.float64), np.asarray(truth) > 0.5
    n_pos, n_neg = max(1, int(pos.sum())), max(1, int((~pos).sum()))
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], pos[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tps, fps = np.cumsum(p)[last_of_tie], np.cumsum(~p)[last_of_tie]
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def youden_threshold(scores: Floats, truth: Floats) -> float:
    """The threshold maximising sensitivity + specificity - 1, kept inside [0.01, 0.99]."""
    pos = np.asarray(truth) > 0.5
    if pos.all() or not pos.any():
        return 0.5
    best, best_j = 0.5, -1.0
    for t in np.unique(scores):
        j = float((scores[pos] >= t).mean() - (scores[~pos] >= t).mean())
        if j > best_j:
            best, best_j = float(t), j
    return float(np.clip(best, 0.01, 0.99))


def at_threshold(scores: Floats, truth: Floats, threshold: float) -> dict[str, float]:
    """AUROC, and sensitivity and specificity when `scores >= threshold` means present."""
    pos = np.asarray(truth) > 0.5
    return {
        "auroc": auroc(scores, truth),
        "threshold": float(threshold),
        "sensitivity": float((scores[pos] >= threshold).mean()) if pos.any() else math.nan,
        "specificity": float((scores[~pos] < threshold).mean()) if (~pos).any() else math.nan,
        "positives": int(pos.sum()),
        "negatives": int((~pos).sum()),
    }


def label_metrics(
    probs: Floats,
    truth: Floats,
    labels: Sequence[str],
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Per-label metrics at the given thresholds (Youden's on these data when None), mean AUROC."""
    per: dict[str, dict[str, float]] = {}
    for k, label in enumerate(labels):
        s, t = probs[:, k], truth[:, k]
        thr = youden_threshold(s, t) if thresholds is None else thresholds[k]
        per[label] = at_threshold(s, t, thr)
    return {"mean_auroc": mean_auroc(per), "n_images": len(probs), "labels": per}


def mean_auroc(per_label: dict[str, dict[str, float]]) -> float:
    """Mean of the defined per-label AUROCs (NaN when none is defined)."""
    values = [m["auroc"] for m in per_label.values() if not math.isnan(m["auroc"])]
    return float(np.mean(values)) if values else math.nan
