"""Multi-label classification metrics: AUROC and its bootstrap interval, ROC curves, thresholds
(Youden's J, a target sensitivity), sensitivity/specificity. A NaN target (a label the data
leave unknown for an image) is left out of that label's metrics."""

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


def sensitivity_threshold(scores: Floats, truth: Floats, target: float) -> float:
    """The highest threshold whose sensitivity (`scores >= t` among positives) reaches `target`:
    the ceil(target * positives)-th highest positive score, kept inside [0.001, 0.999]; 0.5
    without both classes."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], not {target}")
    pos = np.asarray(truth) > 0.5
    if pos.all() or not pos.any():
        return 0.5
    ranked = np.sort(np.asarray(scores, np.float64)[pos])[::-1]
    k = math.ceil(target * len(ranked) - 1e-9)
    return float(np.clip(ranked[max(k, 1) - 1], 0.001, 0.999))


def known(scores: Floats, truth: Floats) -> tuple[Floats, Floats]:
    """The (scores, truth) pairs whose truth is known (not NaN)."""
    keep = _known(truth)
    return np.asarray(scores, np.float64)[keep], np.asarray(truth, np.float64)[keep]


def bootstrap_draws(n: int, replicates: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """(replicates, n) multiplicities of n images drawn n times with replacement."""
    idx = rng.integers(0, n, size=(replicates, n))
    flat = (idx + np.arange(replicates)[:, None] * n).ravel()
    counts: npt.NDArray[np.int64] = np.bincount(flat, minlength=replicates * n).reshape(
        replicates, n
    )
    return counts


def weighted_auroc(scores: Floats, truth: Floats, weights: npt.NDArray[Any]) -> Floats:
    """AUROC (Mann-Whitney, ties counted half) for each row of `weights` (R, N), an image
    counted as often as its weight; NaN for a row without both classes."""
    order = np.argsort(scores, kind="mergesort")
    s, pos, w = scores[order], np.asarray(truth)[order] > 0.5, weights[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w_pos = np.add.reduceat(w * pos, starts, axis=1)  # per tie group
    w_neg = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(w_neg, axis=1) - w_neg
    n_pos, n_neg = w_pos.sum(1), w_neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        area: Floats = (w_pos * (below + 0.5 * w_neg)).sum(1) / (n_pos * n_neg)
    area[(n_pos == 0) | (n_neg == 0)] = math.nan
    return area


def bootstrap_auroc(
    probs: Floats, truth: Floats, *, replicates: int = 1000, seed: int = 0, level: float = 0.95
) -> list[tuple[float, float]]:
    """Percentile bootstrap interval of each label's AUROC (columns of (N, labels) arrays).

    Images are drawn with replacement, the same draws for every label (so the intervals belong
    to one resampled data set); images whose truth is NaN for a label are left out of it. The
    interval is NaN where fewer than half the replicates hold both classes.
    """
    n = len(probs)
    if replicates < 1 or n == 0:
        return [(math.nan, math.nan)] * probs.shape[1]
    chunk = max(1, 4_000_000 // max(1, n))  # (chunk, n) arrays of a few tens of MB
    areas, rng = [], np.random.default_rng(seed)
    for first in range(0, replicates, chunk):
        counts = bootstrap_draws(n, min(chunk, replicates - first), rng)
        areas.append(
            np.stack(
                [
                    weighted_auroc(*known(probs[:, k], truth[:, k]), counts[:, _known(truth[:, k])])
                    for k in range(probs.shape[1])
                ],
                axis=1,
            )
        )
    table = np.concatenate(areas)
    tail = 100 * (1 - level) / 2
    out = []
    for column in table.T:
        valid = column[~np.isnan(column)]
        if len(valid) < replicates / 2:
            out.append((math.nan, math.nan))
        else:
            low, high = np.percentile(valid, [tail, 100 - tail])
            out.append((float(low), float(high)))
    return out


def _known(truth: Floats) -> npt.NDArray[np.bool_]:
    return ~np.isnan(np.asarray(truth, np.float64))


def label_metrics(
    probs: Floats,
    truth: Floats,
    labels: Sequence[str],
    thresholds: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Per-label metrics at the given thresholds (Youden's on these data when None), mean AUROC."""
    per: dict[str, dict[str, float]] = {}
    for k, label in enumerate(labels):
        s, t = known(probs[:, k], truth[:, k])
        thr = youden_threshold(s, t) if thresholds is None else thresholds[k]
        per[label] = at_threshold(s, t, thr)
    return {"mean_auroc": mean_auroc(per), "n_images": len(probs), "labels": per}


def mean_auroc(per_label: dict[str, dict[str, float]]) -> float:
    """Mean of the defined per-label AUROCs (NaN when none is defined)."""
    values = [m["auroc"] for m in per_label.values() if not math.isnan(m["auroc"])]
    return float(np.mean(values)) if values else math.nan
