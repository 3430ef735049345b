"""The training loop: imbalance-aware loss, bf16 autocast on CUDA, best epoch by mean AUROC."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dicom_node.training.classification_metrics import Floats, label_metrics

log = logging.getLogger(__name__)

LossKind = Literal["weighted-bce", "focal"]
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class FitConfig:
    """How to train: schedule, loss, data loading and device."""

    epochs: int
    batch_size: int
    lr: float
    seed: int
    loss: LossKind = "weighted-bce"
    focal_gamma: float = 2.0
    weight_cap: float = 10.0
    workers: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True


@dataclass(frozen=True, kw_only=True, slots=True)
class EpochReport:
    """One epoch: mean training loss, validation metrics (per label and mean AUROC), time."""

    epoch: int
    loss: float
    mean_auroc: float
    metrics: dict[str, Any]
    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class FitResult:
    """The best epoch's weights (on the CPU) and its validation predictions."""

    state_dict: dict[str, torch.Tensor]
    epoch: int
    mean_auroc: float
    val_probs: Floats
    val_truth: Floats
    history: tuple[float, ...]


# ---- loss -------------------------------------------------------------------------------------


def positive_weights(targets: torch.Tensor, cap: float = 10.0) -> torch.Tensor:
    """BCE pos_weight per label: negatives / positives among the known (not NaN) targets,
    within [1, cap]."""
    known = ~torch.isnan(targets)
    pos = torch.where(known, targets, 0.0).sum(0)
    return ((known.sum(0) - pos) / pos.clamp_min(1.0)).clamp(1.0, cap)


class FocalLoss(torch.nn.Module):
    """Binary focal loss per label on logits, positives weighted; gamma 0 is weighted BCE."""

    def __init__(
        self, pos_weight: torch.Tensor, gamma: float = 2.0, *, reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.pos_weight: torch.Tensor
        self.register_buffer("pos_weight", pos_weight)
        self.gamma = gamma
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.pos_weight
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=weight, reduction="none"
        )
        p = torch.sigmoid(logits)
        p_true = p * target + (1 - p) * (1 - target)
        loss = (1 - p_true) ** self.gamma * bce
        return loss.mean() if self.reduction == "mean" else loss


class MaskedLoss(torch.nn.Module):
    """The mean of an element-wise loss over the known targets: a NaN target (an uncertain
    CheXpert label under U-Ignore) adds nothing to the loss or its gradient."""

    def __init__(self, elementwise: torch.nn.Module) -> None:
        super().__init__()
        self.elementwise = elementwise

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        known = ~torch.isnan(target)
        loss: torch.Tensor = self.elementwise(logits, torch.where(known, target, 0.0))
        return (loss * known).sum() / known.sum().clamp_min(1)


def make_loss(
    kind: LossKind, pos_weight: torch.Tensor, gamma: float, *, masked: bool = False
) -> torch.nn.Module:
    """The loss; `masked` leaves NaN targets out (MaskedLoss)."""
    reduction = "none" if masked else "mean"
    loss: torch.nn.Module
    if kind == "weighted-bce":
        loss = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction=reduction)
    elif kind == "focal":
        loss = FocalLoss(pos_weight, gamma, reduction=reduction)
    else:
        raise ValueError(f"loss must be 'weighted-bce' or 'focal', not {kind!r}")
    return MaskedLoss(loss) if masked else loss


# ---- progress ---------------------------------------------------------------------------------


def progress(items: Iterable[T], *, total: int, desc: str, enabled: bool = True) -> Iterator[T]:
    """tqdm when installed; otherwise a log line at every tenth of the way."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        step = max(1, total // 10)
        for i, item in enumerate(items, start=1):
            yield item
            if i % step == 0 or i == total:
                log.info("%s: %d/%d batches", desc, i, total)
        return
    yield from tqdm(items, total=total, desc=desc, leave=False)


# ---- the loop ---------------------------------------------------------------------------------


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def predict(
    model: torch.nn.Module, loader: DataLoader[Any], device: torch.device
) -> tuple[Floats, Floats]:
    """Sigmoid probabilities and targets over a loader, in eval mode."""
    model.eval()
    probs, truth = [], []
    with torch.inference_mode(), _autocast(device):
        for x, y in loader:
            probs.append(torch.sigmoid(model(_to(x, device)).float()).double().cpu().numpy())
            truth.append(y.double().numpy())
    return np.concatenate(probs), np.concatenate(truth)


def _loaders(
    train: Dataset[Any], val: Dataset[Any], config: FitConfig
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    common: dict[str, Any] = {
        "num_workers": config.workers,
        "pin_memory": config.device.type == "cuda",
        "persistent_workers": config.workers > 0,
    }
    gen = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train, batch_size=config.batch_size, shuffle=True, generator=gen, drop_last=True, **common
    )
    val_loader = DataLoader(val, batch_size=max(64, config.batch_size), **common)
    if len(train_loader) == 0:
        raise ValueError(f"fewer training images than one batch of {config.batch_size}")
    return train_loader, val_loader


def _train_epoch(
    model: torch.nn.Module,
    loader: DataLoader[Any],
    parts: tuple[torch.nn.Module, torch.optim.Optimizer, Any],
    config: FitConfig,
    desc: str,
) -> float:
    loss_fn, opt, sched = parts
    model.train()
    total, count = 0.0, 0
    for x, y in progress(loader, total=len(loader), desc=desc, enabled=config.progress):
        opt.zero_grad(set_to_none=True)
        with _autocast(config.device):
            logits = model(_to(x, config.device))
        loss = loss_fn(logits.float(), y.to(config.device))
        loss.backward()
        opt.step()
        sched.step()
        total, count = total + loss.item() * len(x), count + len(x)
    return total / max(1, count)


def fit(
    model: torch.nn.Module,
    train: Dataset[Any],
    val: Dataset[Any],
    *,
    labels: Sequence[str],
    pos_weight: torch.Tensor,
    config: FitConfig,
    on_epoch: Callable[[EpochReport], None] | None = None,
    masked: bool = False,
) -> FitResult:
    """AdamW with a one-cycle schedule; keeps the epoch of best validation mean AUROC.
    `masked`: some targets are NaN (unknown) and stay out of the loss."""
    device = config.device
    if device.type == "cuda":
        model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    model = model.to(device)
    train_loader, val_loader = _loaders(train, val, config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    steps = max(1, config.epochs * len(train_loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=steps, pct_start=0.15
    )
    loss_fn = make_loss(config.loss, pos_weight.to(device), config.focal_gamma, masked=masked)
    best: FitResult | None = None
    history: list[float] = []
    for epoch in range(1, config.epochs + 1):
        started = time.monotonic()
        desc = f"epoch {epoch}/{config.epochs}"
        loss = _train_epoch(model, train_loader, (loss_fn, opt, sched), config, desc)
        probs, truth = predict(model, val_loader, device)
        metrics = label_metrics(probs, truth, labels)
        history.append(metrics["mean_auroc"])
        if on_epoch is not None:
            seconds = time.monotonic() - started
            report = EpochReport(
                epoch=epoch, loss=loss, mean_auroc=history[-1], metrics=metrics, seconds=seconds
            )
            on_epoch(report)
        if best is None or history[-1] > best.mean_auroc:
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best = FitResult(
                state_dict=state,
                epoch=epoch,
                mean_auroc=history[-1],
                val_probs=probs,
                val_truth=truth,
                history=(),
            )
    if best is None:
        raise ValueError("epochs must be at least 1")
    return FitResult(
        state_dict=best.state_dict,
        epoch=best.epoch,
        mean_auroc=best.mean_auroc,
        val_probs=best.val_probs,
        val_truth=best.val_truth,
        history=tuple(history),
    )
