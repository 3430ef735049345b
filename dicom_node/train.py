"""Train a DenseNet121 classifier bundle (so far on synthetic phantoms), deterministically."""

from __future__ import annotations

import argparse
import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import monai
import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dicom_node.bundle import SECTION, Bundle, instantiate_network, write_bundle
from dicom_node.phantoms import LABELS, make_phantom, random_findings
from dicom_node.preprocess import to_model_input

log = logging.getLogger(__name__)

Floats = npt.NDArray[np.float64]
DEFAULT_NAME = "cxr14-densenet121-demo"
DEFAULT_VERSION = "0.1.0"
MEAN, STD = 0.5, 0.25  # intensity normalisation of display images in [0, 1]


class PhantomDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Phantom i is a pure function of (seed, i): any order or subset gives the same samples."""

    def __init__(
        self, *, seed: int, n: int, input_size: int, phantom_size: int, prevalence: float = 0.15
    ) -> None:
        self.seed, self.n, self.input_size = seed, n, input_size
        self.phantom_size, self.prevalence = phantom_size, prevalence

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        labels = random_findings(rng, prevalence=self.prevalence)
        size = (self.phantom_size, self.phantom_size)
        phantom = make_phantom(rng, findings=labels, size=size)
        x, _ = to_model_input(phantom.image, size=self.input_size, mean=MEAN, std=STD)
        y = torch.tensor([float(label in phantom.findings) for label in LABELS])
        return x, y


def materialise(dataset: Dataset[tuple[torch.Tensor, torch.Tensor]], n: int) -> TensorDataset:
    """All samples in memory once (generation costs more than reading a tensor)."""
    xs, ys = zip(*(dataset[i] for i in range(n)), strict=True)
    return TensorDataset(torch.stack(xs), torch.stack(ys))


# ---- metrics ----------------------------------------------------------------------------------


def auroc(scores: Floats, truth: Floats) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN without both classes."""
    pos = truth > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def youden_threshold(scores: Floats, truth: Floats) -> float:
    """The threshold maximising sensitivity + specificity - 1, kept inside [0.01, 0.99]."""
    pos = truth > 0.5
    if pos.all() or not pos.any():
        return 0.5
    candidates = np.unique(scores)
    best, best_j = 0.5, -1.0
    for t in candidates:
        j = float((scores[pos] >= t).mean() - (scores[~pos] >= t).mean())
        if j > best_j:
            best, best_j = float(t), j
    return float(np.clip(best, 0.01, 0.99))


def label_metrics(probs: Floats, truth: Floats, labels: Sequence[str]) -> dict[str, Any]:
    """Per-label AUROC, Youden threshold and sensitivity/specificity there, plus mean AUROC."""
    per: dict[str, dict[str, float]] = {}
    for k, label in enumerate(labels):
        s, t = probs[:, k], truth[:, k]
        thr = youden_threshold(s, t)
        pos = t > 0.5
        per[label] = {
            "auroc": auroc(s, t),
            "threshold": thr,
            "sensitivity": float((s[pos] >= thr).mean()) if pos.any() else math.nan,
            "specificity": float((s[~pos] < thr).mean()) if (~pos).any() else math.nan,
            "positives": int(pos.sum()),
        }
    values = [m["auroc"] for m in per.values() if not math.isnan(m["auroc"])]
    return {"mean_auroc": float(np.mean(values)) if values else math.nan, "labels": per}


def _json_safe(value: Any) -> Any:
    """NaN (undefined metric) becomes null, so metadata.json stays strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ---- the loop ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class FitResult:
    """The best epoch's weights and its validation predictions."""

    state_dict: dict[str, torch.Tensor]
    epoch: int
    mean_auroc: float
    val_probs: Floats
    val_truth: Floats
    history: tuple[float, ...]


def _predict(model: torch.nn.Module, loader: DataLoader[Any]) -> tuple[Floats, Floats]:
    model.eval()
    probs, truth = [], []
    with torch.inference_mode():
        for x, y in loader:
            probs.append(torch.sigmoid(model(x)).double().numpy())
            truth.append(y.double().numpy())
    return np.concatenate(probs), np.concatenate(truth)


def positive_weights(labels: torch.Tensor, cap: float = 10.0) -> torch.Tensor:
    """BCE pos_weight per label: negatives / positives, within [1, cap]."""
    pos = labels.sum(0)
    return ((labels.shape[0] - pos) / pos.clamp_min(1.0)).clamp(1.0, cap)


def fit(
    model: torch.nn.Module,
    train: Dataset[Any],
    val: Dataset[Any],
    *,
    labels: Sequence[str],
    pos_weight: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FitResult:
    """Weighted BCE with AdamW and a cosine schedule; keeps the epoch of best mean AUROC."""
    gen = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=gen, drop_last=True
    )
    val_loader = DataLoader(val, batch_size=max(64, batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = max(1, epochs * len(train_loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    best: FitResult | None = None
    history: list[float] = []
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for x, y in train_loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(x)
        probs, truth = _predict(model, val_loader)
        mean = label_metrics(probs, truth, labels)["mean_auroc"]
        history.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, total / max(1, len(train_loader) * batch_size), mean)
        if best is None or mean > best.mean_auroc:
            state = copy.deepcopy(model.state_dict())
            best = FitResult(
                state_dict=state,
                epoch=epoch,
                mean_auroc=mean,
                val_probs=probs,
                val_truth=truth,
                history=(),
            )
    assert best is not None  # epochs >= 1
    return FitResult(
        state_dict=best.state_dict,
        epoch=best.epoch,
        mean_auroc=best.mean_auroc,
        val_probs=best.val_probs,
        val_truth=best.val_truth,
        history=tuple(history),
    )


# ---- the synthetic demo bundle ----------------------------------------------------------------

_LICENSE = """\
cxr14-densenet121-demo: weights and configuration

Copyright (c) dicom-node contributors. Licensed under the Apache License, Version 2.0
(https://www.apache.org/licenses/LICENSE-2.0). Distributed on an "AS IS" BASIS, WITHOUT
WARRANTIES OR CONDITIONS OF ANY KIND.

These weights were trained only on synthetic phantoms generated by dicom_node.phantoms; no
patient data was used. They are a demonstration and test fixture. NOT FOR CLINICAL USE.
"""


def _metadata(
    *,
    name: str,
    version: str,
    input_size: int,
    thresholds: dict[str, float],
    metrics: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    channel_def = {str(i): label for i, label in enumerate(LABELS)}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": version,
        "changelog": {version: "synthetic demo bundle trained on dicom-node chest phantoms"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "optional_packages_version": {},
        "name": name,
        "task": "Multi-label classification of frontal chest radiographs (14 ChestX-ray14 labels)",
        "description": "SYNTHETIC DEMO: DenseNet121 trained on synthetic chest phantoms only. "
        "It shows the node working end to end; it is not a diagnostic model.",
        "authors": "dicom-node contributors",
        "copyright": "Copyright (c) dicom-node contributors",
        "data_source": "dicom_node.phantoms (synthetic)",
        "data_type": "float32 display image in [0, 1], letterboxed, (x - mean) / std",
        "intended_use": "Demonstration and testing only. Not for clinical use.",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "DX",
                    "num_channels": 1,
                    "spatial_shape": [input_size, input_size],
                    "dtype": "float32",
                    "value_range": [(0 - MEAN) / STD, (1 - MEAN) / STD],
                    "is_patch_data": False,
                    "channel_def": {"0": "display image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "logits",
                    "format": "classes",
                    "num_channels": len(LABELS),
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [],
                    "is_onehot": False,
                    "channel_def": channel_def,
                }
            },
        },
        SECTION: {
            "labels": list(LABELS),
            "thresholds": thresholds,
            "threshold_method": "Youden's J on the validation set",
            "activation": "sigmoid",
            "input_size": input_size,
            "in_channels": 1,
            "intensity": {"mean": MEAN, "std": STD},
            "preprocessing": "dicom_node.preprocess.render_for_display + to_model_input",
            "synthetic_demo": True,
            "training_data": "synthetic chest phantoms (dicom_node.phantoms), independent "
            f"findings; {training['n_train']} training and {training['n_val']} validation "
            f"images, seed {training['seed']}",
            "training": training,
            "validation_metrics": _json_safe(metrics),
        },
    }


def train_synthetic(
    out: Path,
    *,
    seed: int,
    n_train: int,
    n_val: int,
    epochs: int,
    input_size: int,
    batch_size: int,
    lr: float = 1e-3,
    phantom_size: int = 256,
    prevalence: float = 0.15,
    name: str = DEFAULT_NAME,
    version: str = DEFAULT_VERSION,
) -> Path:
    """Train on phantoms and write a complete bundle to `out`; returns `out`."""
    started = time.monotonic()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    train, val = (
        materialise(
            PhantomDataset(
                seed=s, n=n, input_size=input_size, phantom_size=phantom_size, prevalence=prevalence
            ),
            n,
        )
        for s, n in ((seed, n_train), (seed + 1_000_003, n_val))
    )
    log.info("generated %d + %d phantoms in %.0f s", n_train, n_val, time.monotonic() - started)
    network_def = {
        "_target_": "monai.networks.nets.DenseNet121",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": len(LABELS),
    }
    model = instantiate_network(
        "DenseNet121", {k: v for k, v in network_def.items() if k != "_target_"}
    )

    def report(epoch: int, loss: float, mean_auroc: float) -> None:
        log.info(
            "epoch %d/%d: loss %.4f, validation mean AUROC %.4f (%.0f s)",
            epoch,
            epochs,
            loss,
            mean_auroc,
            time.monotonic() - started,
        )

    result = fit(
        model,
        train,
        val,
        labels=LABELS,
        pos_weight=positive_weights(train.tensors[1]),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        on_epoch=report,
    )
    metrics = label_metrics(result.val_probs, result.val_truth, LABELS)
    thresholds = {label: m["threshold"] for label, m in metrics["labels"].items()}
    training = {
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "epochs": epochs,
        "best_epoch": result.epoch,
        "batch_size": batch_size,
        "lr": lr,
        "phantom_size": phantom_size,
        "prevalence": prevalence,
        "history_mean_auroc": list(result.history),
        "wall_seconds": round(time.monotonic() - started),
    }
    metadata = _metadata(
        name=name,
        version=version,
        input_size=input_size,
        thresholds=thresholds,
        metrics=metrics,
        training=training,
    )
    bundle: Bundle = write_bundle(
        out,
        metadata=metadata,
        network_def=network_def,
        state_dict=result.state_dict,
        license_text=_LICENSE,
    )
    log.info(
        "bundle %s written to %s: mean AUROC %.4f (epoch %d), %.0f s",
        bundle.identity.label,
        out,
        result.mean_auroc,
        result.epoch,
        time.monotonic() - started,
    )
    return out


# ---- command line -----------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dicom-node train`."""
    parser.add_argument("--synthetic", action="store_true", help="train on generated phantoms")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=2000, help="training images")
    parser.add_argument("--n-val", type=int, default=500, help="validation images")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--input-size", type=int, default=128, help="model input side, pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--phantom-size", type=int, default=256, help="phantom side, pixels")
    parser.add_argument("--prevalence", type=float, default=0.15, help="chance of each finding")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--name", default=DEFAULT_NAME)
    parser.add_argument("--version", default=DEFAULT_VERSION)


def run(args: argparse.Namespace) -> int:
    """Run `dicom-node train`; returns the exit status."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.synthetic:
        log.error("only --synthetic training is available so far (ChestX-ray14 comes later)")
        return 2
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    train_synthetic(
        args.out,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        epochs=args.epochs,
        input_size=args.input_size,
        batch_size=args.batch_size,
        lr=args.lr,
        phantom_size=args.phantom_size,
        prevalence=args.prevalence,
        name=args.name,
        version=args.version,
    )
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m dicom_node.train")
    configure_parser(_parser)
    raise SystemExit(run(_parser.parse_args()))
