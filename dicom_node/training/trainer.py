"""Training a classifier bundle: data sources, network, the loop, thresholds, the written bundle."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dicom_node.model.bundle import Bundle, instantiate_network, write_bundle
from dicom_node.model.bundle_metadata import Card, license_text, metadata
from dicom_node.model.preprocess import InputSpec
from dicom_node.training.classification_metrics import label_metrics
from dicom_node.training.datasets import Split
from dicom_node.training.fit import EpochReport, FitConfig, FitResult, fit, positive_weights
from dicom_node.training.samples import Augment, RecordDataset
from dicom_node.training.tracking import Mode, Tracker, open_tracker

log = logging.getLogger(__name__)

MEAN, STD = 0.5, 0.25  # intensity normalisation of display images in [0, 1]


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainingData:
    """Training and validation datasets, the training targets, and how to describe them."""

    train: Dataset[Any]
    val: Dataset[Any]
    targets: torch.Tensor
    description: str
    synthetic: bool
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """What to train: bundle name and version, labels, input, network, loop, tracking."""

    name: str
    version: str
    labels: tuple[str, ...]
    spec: InputSpec
    fit: FitConfig
    network: str = "DenseNet121"
    network_kwargs: Mapping[str, Any] = field(default_factory=dict)
    mlflow: Mode = "auto"
    experiment: str = "dicom-node"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainOutcome:
    """The written bundle, the training code's model with the best weights, and its metrics."""

    bundle: Bundle
    model: torch.nn.Module
    result: FitResult
    metrics: Mapping[str, Any]


# ---- data ---------------------------------------------------------------------------------------


def file_data(
    split: Split, *, spec: InputSpec, labels: tuple[str, ...], augment: bool = True
) -> TrainingData:
    """Image files of a split, read through the node's preprocessing on every epoch."""
    if not split.train or not split.val:
        raise ValueError(f"{split.description}: training and validation must both have images")
    train = RecordDataset(split.train, labels=labels, spec=spec, aug=Augment() if augment else None)
    val = RecordDataset(split.val, labels=labels, spec=spec)
    params = {"n_train": len(split.train), "n_val": len(split.val), "augment": augment}
    return TrainingData(
        train=train,
        val=val,
        targets=train.targets(),
        description=split.description,
        synthetic=False,
        params=params,
    )


# ---- training -----------------------------------------------------------------------------------


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic algorithms (warnings only where none exists); restored afterwards."""
    was = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn)


def network_def(config: TrainConfig) -> dict[str, Any]:
    """The inference.json network_def of the configured network."""
    return {
        "_target_": f"monai.networks.nets.{config.network}",
        "spatial_dims": 2,
        "in_channels": config.spec.channels,
        "out_channels": len(config.labels),
        **dict(config.network_kwargs),
    }


def build_model(net_def: Mapping[str, Any]) -> torch.nn.Module:
    """A freshly initialised network from a network_def (the bundle loader's rules)."""
    name = str(net_def["_target_"]).rsplit(".", 1)[-1]
    return instantiate_network(name, {k: v for k, v in net_def.items() if k != "_target_"})


def _params(config: TrainConfig, data: TrainingData) -> dict[str, Any]:
    f = config.fit
    return {
        "seed": f.seed,
        "epochs": f.epochs,
        "batch_size": f.batch_size,
        "lr": f.lr,
        "loss": f.loss,
        "focal_gamma": f.focal_gamma if f.loss == "focal" else None,
        "weight_cap": f.weight_cap,
        "device": str(f.device),
        "input_size": config.spec.size,
        "network": config.network,
        **{f"network_{k}": v for k, v in config.network_kwargs.items()},
        **data.params,
    }


def _epoch_logger(tracker: Tracker, epochs: int, started: float) -> Any:
    def report(r: EpochReport) -> None:
        log.info(
            "epoch %d/%d: loss %.4f, validation mean AUROC %.4f (%.0f s, %.0f s in all)",
            r.epoch,
            epochs,
            r.loss,
            r.mean_auroc,
            r.seconds,
            time.monotonic() - started,
        )
        per_label = {f"val_auroc_{k}": m["auroc"] for k, m in r.metrics["labels"].items()}
        tracker.metrics(
            {"train_loss": r.loss, "val_mean_auroc": r.mean_auroc, **per_label}, r.epoch
        )

    return report


def train(out: Path, data: TrainingData, config: TrainConfig) -> TrainOutcome:
    """Train, pick thresholds on validation and write a complete bundle to `out`."""
    started = time.monotonic()
    tracker = open_tracker(config.mlflow, experiment=config.experiment, run_name=config.name)
    status = "FAILED"
    try:
        params = _params(config, data)
        tracker.params(params)
        with deterministic(config.fit.seed):
            net_def = network_def(config)
            model = build_model(net_def)
            result = fit(
                model,
                data.train,
                data.val,
                labels=config.labels,
                pos_weight=positive_weights(data.targets, config.fit.weight_cap),
                config=config.fit,
                on_epoch=_epoch_logger(tracker, config.fit.epochs, started),
                masked=bool(torch.isnan(data.targets).any()),
            )
        outcome = _write(
            out,
            data=data,
            config=config,
            result=result,
            net_def=net_def,
            params=params,
            started=started,
        )
        tracker.artifacts(out, "bundle")
        status = "FINISHED"
        return outcome
    finally:
        tracker.close(status)


def _write(
    out: Path,
    *,
    data: TrainingData,
    config: TrainConfig,
    result: FitResult,
    net_def: Mapping[str, Any],
    params: Mapping[str, Any],
    started: float,
) -> TrainOutcome:
    metrics = label_metrics(result.val_probs, result.val_truth, config.labels)
    thresholds = tuple(metrics["labels"][label]["threshold"] for label in config.labels)
    training = {
        **params,
        "best_epoch": result.epoch,
        "history_mean_auroc": list(result.history),
        "wall_seconds": round(time.monotonic() - started),
    }
    card = Card(
        name=config.name,
        version=config.version,
        labels=config.labels,
        thresholds=thresholds,
        spec=config.spec,
        network=config.network,
        training_data=data.description,
        synthetic=data.synthetic,
        metrics=metrics,
        training=training,
    )
    bundle = write_bundle(
        out,
        metadata=metadata(card),
        network_def=net_def,
        state_dict=result.state_dict,
        license_text=license_text(card),
    )
    model = build_model(net_def)
    model.load_state_dict(result.state_dict)
    log.info(
        "bundle %s written to %s: validation mean AUROC %.4f (epoch %d), %.0f s",
        bundle.identity.label,
        out,
        result.mean_auroc,
        result.epoch,
        time.monotonic() - started,
    )
    return TrainOutcome(bundle=bundle, model=model.eval(), result=result, metrics=metrics)
