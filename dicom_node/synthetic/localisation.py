"""Where Grad-CAM points on phantoms: the peak of each detected finding's map against the
finding's true box (inside it, or within the pointing game's tolerance)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from dicom_node.model.batching import analyse_batch
from dicom_node.model.explain import map_to_display
from dicom_node.model.infer import Classifier
from dicom_node.synthetic.samples import PhantomDataset

POINTING_TOLERANCE = 15 / 224  # the pointing game's 15 px at 224 px, as a fraction of the side


def _distance_outside(y: int, x: int, box: tuple[int, int, int, int]) -> int:
    """Pixels from (y, x) to the box (y0, x0, y1, x1), end exclusive; 0 inside."""
    y0, x0, y1, x1 = box
    return max(y0 - y, 0, y - (y1 - 1), x0 - x, x - (x1 - 1))


def localisation(
    classifier: Classifier,
    dataset: PhantomDataset,
    *,
    thresholds: Sequence[float],
    indices: Sequence[int] | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """For every finding that is present and detected (at its threshold), where the peak of its
    Grad-CAM map on the display image lies: inside the true box ('hits'), or within the pointing
    game's tolerance of it ('pointing_hits': 15 px at 224 px, Zhang et al. 2018). Per label."""
    chosen = list(range(len(dataset)) if indices is None else indices)
    counts = {label: [0, 0, 0] for label in dataset.labels}  # hits, pointing hits, detected
    for start in range(0, len(chosen), batch_size):
        items = [dataset.prepared(i) for i in chosen[start : start + batch_size]]
        batch = torch.stack([x for _, x, _ in items])
        result = analyse_batch(classifier, batch, thresholds, explain="present")
        for (phantom, _, box), maps in zip(items, result.maps, strict=True):
            tolerance = POINTING_TOLERANCE * max(phantom.image.shape)
            for k, cam in maps.items():
                label = dataset.labels[k]
                if label not in phantom.findings:
                    continue  # a false positive has no box
                shown = map_to_display(cam, box, phantom.image.shape)
                y, x = np.unravel_index(int(np.argmax(shown)), shown.shape)
                distance = _distance_outside(int(y), int(x), phantom.findings[label])
                counts[label][0] += int(distance == 0)
                counts[label][1] += int(distance <= tolerance)
                counts[label][2] += 1
    hits, pointing, detected = (sum(c[j] for c in counts.values()) for j in range(3))
    return {
        "hit_rate": hits / detected if detected else math.nan,
        "pointing_rate": pointing / detected if detected else math.nan,
        "hits": hits,
        "pointing_hits": pointing,
        "detected": detected,
        "labels": {
            k: {"hits": c[0], "pointing_hits": c[1], "detected": c[2]} for k, c in counts.items()
        },
    }
