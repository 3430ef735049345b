"""Factories shared by the tests and benchmarks: settings for a node kept in one folder, a tiny
but valid model bundle, and a small DenseNet trained on phantoms (the convergence and
localisation recipe)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dicom_node.model.bundle import Bundle, instantiate_network, write_bundle
from dicom_node.model.preprocess import InputSpec
from dicom_node.settings import Settings, load_settings
from dicom_node.synthetic.samples import PHANTOM_SHIFT, PhantomDataset, phantom_data
from dicom_node.training.fit import FitConfig
from dicom_node.training.trainer import TrainConfig, TrainOutcome, train

DEMO_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "cxr14-densenet121-demo"
TINY_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion")


def node_settings(root: Path, **overrides: Any) -> Settings:
    """Settings of a node kept in `root` (SQLite file, spool) on a free loopback port, with the
    demo model on the CPU and short waits; `overrides` replace any of them."""
    values: dict[str, Any] = {
        "port": 0,
        "http_port": 0,  # a free port: several nodes run at once in the tests
        "database_url": f"sqlite:///{root / 'node.db'}",
        "spool_dir": root / "spool",
        "model_bundle": DEMO_BUNDLE,
        "device": "cpu",
        "quiet_seconds": 0.5,
        "poll_seconds": 0.1,
        "send_backoff_seconds": 0.05,
        "min_free_disk_bytes": 64 << 20,  # a test machine's disk may be small
    }
    values.update(overrides)
    return load_settings(environ={}, overrides=values)


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


# Findings with a well-defined place that a small network sees at 96 px; the subtle ones (Nodule,
# Infiltration, Fibrosis) need the demo bundle's 11 minutes (bench/RESULTS.md, all 14 findings).
CONVERGENCE_LABELS = ("Cardiomegaly", "Effusion", "Mass", "Consolidation", "Pneumothorax")
# A small DenseNet (two blocks: 8-pixel Grad-CAM cells, against DenseNet121's 32): half a
# minute on two cores at 96 px (15 epochs).
SMALL_DENSENET = {"init_features": 16, "growth_rate": 8, "bn_size": 2, "block_config": [4, 6]}
HELD_OUT_SEED = 424_242  # neither a training nor a validation seed of the recipe
PREVALENCE = 0.25


def train_small_on_phantoms(
    out: Path,
    *,
    labels: Sequence[str] = CONVERGENCE_LABELS,
    input_size: int = 96,
    n_train: int = 1200,
    epochs: int = 15,
    seed: int = 0,
    shift: float = PHANTOM_SHIFT,
) -> TrainOutcome:
    """The small DenseNet trained by the project's training loop on phantoms drawn at the input
    size (validation on a quarter as many; training images shifted by up to `shift` of the
    side), written as a bundle to `out`."""
    spec = InputSpec(size=input_size, mean=0.5, std=0.25)
    data = phantom_data(
        seed=seed,
        n_train=n_train,
        n_val=n_train // 4,
        spec=spec,
        labels=tuple(labels),
        phantom_size=input_size,
        prevalence=PREVALENCE,
        shift=shift,
    )
    config = TrainConfig(
        name="phantom-convergence",
        version="0.0.1",
        labels=tuple(labels),
        spec=spec,
        fit=FitConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=seed, progress=False),
        network="DenseNet",
        network_kwargs=dict(SMALL_DENSENET),
        mlflow="off",
    )
    return train(out, data, config)


def held_out_phantoms(
    bundle: Bundle,
    *,
    n: int = 200,
    phantom_size: int | None = None,
    prevalence: float | None = None,
) -> PhantomDataset:
    """`n` phantoms of the bundle's labels from a seed that no recipe trains or validates on."""
    return PhantomDataset(
        seed=HELD_OUT_SEED,
        n=n,
        spec=bundle.input_spec,
        phantom_size=phantom_size or bundle.input_spec.size,
        prevalence=PREVALENCE if prevalence is None else prevalence,
        labels=bundle.labels,
    )
