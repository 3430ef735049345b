"""metadata.json and LICENSE of a trained classifier bundle (MONAI schema plus our section)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import monai
import numpy as np
import torch

from dicom_node.model.bundle import SECTION, code_entry
from dicom_node.model.preprocess import InputSpec, per_channel

MONAI_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
    "0.8.1/meta_schema_20220324.json"
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Card:
    """What a training run knows about the bundle it writes."""

    name: str
    version: str
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    spec: InputSpec
    network: str
    training_data: str
    synthetic: bool
    metrics: Mapping[str, Any]
    training: Mapping[str, Any]


def _data_format(card: Card) -> dict[str, Any]:
    spec = card.spec
    return {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "DX",
                "num_channels": spec.channels,
                "spatial_shape": [spec.size, spec.size],
                "dtype": "float32",
                "value_range": _value_range(spec),
                "is_patch_data": False,
                "channel_def": {str(i): "display image" for i in range(spec.channels)},
            }
        },
        "outputs": {
            "pred": {
                "type": "logits",
                "format": "classes",
                "num_channels": len(card.labels),
                "spatial_shape": [1],
                "dtype": "float32",
                "value_range": [],
                "is_onehot": False,
                "channel_def": {str(i): label for i, label in enumerate(card.labels)},
            }
        },
    }


def _value_range(spec: InputSpec) -> list[float]:
    """The model input's range for display values in [0, 1], over all channels."""
    means, stds = per_channel(spec.mean, spec.channels), per_channel(spec.std, spec.channels)
    lows = [(0 - m) / s for m, s in zip(means, stds, strict=True)]
    highs = [(1 - m) / s for m, s in zip(means, stds, strict=True)]
    return [min(lows), max(highs)]


def _intensity(value: float | tuple[float, ...]) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else value


def _section(card: Card) -> dict[str, Any]:
    return {
        "labels": list(card.labels),
        "codes": {label: code_entry(label) for label in card.labels},
        "thresholds": dict(zip(card.labels, card.thresholds, strict=True)),
        "threshold_method": "Youden's J on the validation set",
        "activation": "sigmoid",
        "input_size": card.spec.size,
        "in_channels": card.spec.channels,
        "intensity": {"mean": _intensity(card.spec.mean), "std": _intensity(card.spec.std)},
        "preprocessing": "dicom_node.model.preprocess: render_for_display (DICOM) or "
        "load_image_file (PNG/JPEG), then prepare: aspect-preserving resize, centred black "
        "padding, (x - mean) / std",
        "synthetic_demo": card.synthetic,
        "training_data": card.training_data,
        "training": json_safe(dict(card.training)),
        "validation_metrics": json_safe(dict(card.metrics)),
    }


def metadata(card: Card) -> dict[str, Any]:
    """The whole metadata.json document."""
    if card.synthetic:
        description = (
            f"SYNTHETIC DEMO: {card.network} trained on synthetic chest phantoms only. It shows "
            "the node working end to end; it is not a diagnostic model."
        )
    else:
        description = f"{card.network} trained on {card.training_data}. Not for clinical use."
    return {
        "schema": MONAI_SCHEMA,
        "version": card.version,
        "changelog": {card.version: f"trained by dicom-node: {card.training_data}"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {},
        "name": card.name,
        "task": f"Multi-label classification of frontal chest radiographs ({len(card.labels)} "
        "ChestX-ray14 labels)",
        "description": description,
        "authors": "dicom-node contributors",
        "copyright": "Copyright (c) dicom-node contributors",
        "data_source": "dicom_node.synthetic.phantoms (synthetic)"
        if card.synthetic
        else card.training_data,
        "data_type": "float32 display image in [0, 1], letterboxed, (x - mean) / std",
        "intended_use": "Demonstration and testing only. Not for clinical use.",
        "network_data_format": _data_format(card),
        SECTION: _section(card),
    }


def license_text(card: Card) -> str:
    """Apache-2.0 for the weights, with a note on the data they were trained on."""
    if card.synthetic:
        data = (
            "These weights were trained only on synthetic phantoms generated by "
            "dicom_node.synthetic.phantoms; no patient data was used."
        )
    else:
        data = (
            f"These weights were trained on: {card.training_data}. The terms of that data set "
            "apply as well (for NIH ChestX-ray14: cite Wang et al., CVPR 2017, and follow the "
            "NIH Clinical Center's terms)."
        )
    return (
        f"{card.name} {card.version}: weights and configuration\n\n"
        "Copyright (c) dicom-node contributors. Licensed under the Apache License, Version 2.0\n"
        '(https://www.apache.org/licenses/LICENSE-2.0). Distributed on an "AS IS" BASIS,\n'
        "WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND.\n\n"
        f"{data} NOT FOR CLINICAL USE.\n"
    )


def json_safe(value: Any) -> Any:
    """NaN (an undefined metric) becomes null, so the JSON stays strict."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
