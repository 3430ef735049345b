"""Factories shared by the tests and benchmarks: a tiny but valid model bundle."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from dicom_node.bundle import Bundle, instantiate_network, write_bundle

TINY_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")


def tiny_bundle(
    path: Path, *, labels: Sequence[str] = TINY_LABELS, input_size: int = 64, seed: int = 0
) -> Bundle:
    """A valid bundle of a very small DenseNet121 (8 initial features, growth 4), random weights:
    the real loader, network class and Grad-CAM path, fast on a CPU."""
    torch.manual_seed(seed)
    kwargs = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": len(labels),
        "init_features": 8,
        "growth_rate": 4,
        "bn_size": 2,
    }
    net = instantiate_network("DenseNet121", kwargs)
    section = {
        "labels": list(labels),
        "thresholds": dict.fromkeys(labels, 0.5),
        "input_size": input_size,
        "in_channels": 1,
        "intensity": {"mean": 0.5, "std": 0.25},
        "synthetic_demo": True,
        "training_data": "none (random weights)",
    }
    return write_bundle(
        path,
        metadata={"name": "tiny", "version": "0.0.1", "description": "test", "dicom_node": section},
        network_def={"_target_": "monai.networks.nets.DenseNet121", **kwargs},
        state_dict=net.state_dict(),
        license_text="test only\n",
    )
