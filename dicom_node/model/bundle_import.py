"""A published DenseNet checkpoint in torchvision's layout (CheXNet reimplementations) as a bundle.

torchvision names a dense layer's modules `denselayerN.norm1` (`norm.1` before torchvision 0.3)
and the head `classifier` (`classifier.0` where a Sigmoid follows it, as in CheXNet
reimplementations); MONAI's DenseNet, which the node builds, mirrors that structure with the layer's
modules under `denselayerN.layers.` and the head at `class_layers.out`. Keys are renamed, the
`module.` (DataParallel) and `densenet121.` (wrapper attribute) prefixes dropped, missing BatchNorm
`num_batches_tracked` counters (checkpoints older than PyTorch 0.4.1) filled with 0.

Per-channel normalisation (ImageNet's mean and std on a grey image copied into three channels) is
written as given: `preprocess.InputSpec` normalises each channel with its own mean and std, so
the imported network sees exactly the input it was trained on, and its weights are the
checkpoint's unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dicom_node.model.bundle import (
    SECTION,
    Bundle,
    BundleError,
    instantiate_network,
    sha256_file,
    write_bundle,
)
from dicom_node.model.bundle_metadata import Card, metadata
from dicom_node.model.preprocess import InputSpec
from structured_reports.codes import FINDING_CODES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Layers per dense block of the torchvision / MONAI DenseNets (growth 32, 64 initial features).
_BLOCKS: dict[tuple[int, ...], str] = {
    (6, 12, 24, 16): "DenseNet121",
    (6, 12, 32, 32): "DenseNet169",
    (6, 12, 48, 32): "DenseNet201",
    (6, 12, 64, 48): "DenseNet264",
}
_WRAPPERS = ("module.", "model.", "densenet121.", "densenet169.", "densenet201.", "densenet.")
_OLD_LAYER_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\..+)$")
_DENSE_LAYER = re.compile(r"^(features\.denseblock\d+\.denselayer\d+)\.(?!layers\.)(.+)$")
_HEAD = re.compile(r"^classifier\.(?:0\.)?(weight|bias)$")
_COUNTER = "num_batches_tracked"


@dataclass(frozen=True, kw_only=True, slots=True)
class Normalisation:
    """The intensity normalisation the checkpoint was trained with, on images in [0, 1]: one
    value for all channels or one per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError("give one mean and one std, or one of each per channel")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    def per_channel(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if len(self.mean) == 1:
            return self.mean * channels, self.std * channels
        if len(self.mean) != channels:
            raise BundleError(
                f"{len(self.mean)} mean/std values for a network of {channels} input channels"
            )
        return self.mean, self.std


IMAGENET = Normalisation(mean=IMAGENET_MEAN, std=IMAGENET_STD)


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportRequest:
    """What the checkpoint is: its labels in output order, input side, normalisation; the bundle's
    name and version (default: after the file and its SHA-256)."""

    labels: tuple[str, ...]
    input_size: int = 224
    normalisation: Normalisation = IMAGENET
    name: str | None = None
    version: str | None = None
    threshold: float = 0.5
    manufacturer: str | None = None
    license_text: str | None = None
    description: str = ""


# ---- the checkpoint -------------------------------------------------------------------------


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in a checkpoint file: the file itself, or its `state_dict`,
    `model_state_dict` or `model` entry. Tensors only (`weights_only`): no code is unpickled."""
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise BundleError(
            f"{path}: cannot load as a state_dict ({exc}); a whole pickled model is refused: "
            "re-save it with torch.save(model.state_dict(), FILE)"
        ) from exc
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(doc, Mapping) and isinstance(doc.get(key), Mapping):
            doc = doc[key]
            break
    if not isinstance(doc, Mapping) or not doc:
        raise BundleError(f"{path}: no state_dict found (got {type(doc).__name__})")
    state = {str(k): v for k, v in doc.items() if isinstance(v, torch.Tensor)}
    if len(state) != len(doc):
        raise BundleError(f"{path}: the state_dict holds entries that are not tensors")
    return state


def _strip_wrappers(key: str) -> str:
    while not key.startswith(("features.", "classifier.", "class_layers.")):
        prefix = next((p for p in _WRAPPERS if key.startswith(p)), None)
        if prefix is None:
            return key
        key = key.removeprefix(prefix)
    return key


def monai_key(key: str) -> str:
    """A torchvision DenseNet state_dict key as MONAI's DenseNet names it."""
    key = _strip_wrappers(key)
    key = _OLD_LAYER_KEY.sub(r"\1\2", key)  # norm.1.weight -> norm1.weight
    key = _DENSE_LAYER.sub(r"\1.layers.\2", key)
    head = _HEAD.match(key)
    return f"class_layers.out.{head.group(1)}" if head else key


def to_monai_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under MONAI DenseNet names; BatchNorm counters filled where the
    checkpoint predates them."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = monai_key(key)
        if not new.startswith(("features.", "class_layers.out.")):
            raise BundleError(f"checkpoint key {key!r} is not part of a DenseNet classifier")
        if new in out:
            raise BundleError(f"checkpoint keys collide on {new!r} after renaming")
        out[new] = value
    for key in [k for k in out if k.endswith(".running_var")]:
        out.setdefault(key.replace("running_var", _COUNTER), torch.tensor(0, dtype=torch.long))
    if "class_layers.out.weight" not in out or "features.conv0.weight" not in out:
        raise BundleError("checkpoint has no features.conv0 or classifier weight: not a DenseNet")
    return out


def network_of(state: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """The MONAI network class and arguments whose state_dict has these shapes."""
    conv0, head = state["features.conv0.weight"], state["class_layers.out.weight"]
    blocks: dict[int, set[int]] = {}
    for key in state:
        found = re.match(r"features\.denseblock(\d+)\.denselayer(\d+)\.", key)
        if found:
            blocks.setdefault(int(found.group(1)), set()).add(int(found.group(2)))
    block_config = tuple(len(blocks[b]) for b in sorted(blocks))
    first = "features.denseblock1.denselayer1.layers."
    growth = int(state[f"{first}conv2.weight"].shape[0])
    bn_size = int(state[f"{first}conv1.weight"].shape[0]) // growth
    kwargs: dict[str, Any] = {
        "spatial_dims": 2,
        "in_channels": int(conv0.shape[1]),
        "out_channels": int(head.shape[0]),
    }
    shape = {"init_features": int(conv0.shape[0]), "growth_rate": growth, "bn_size": bn_size}
    name = _BLOCKS.get(block_config)
    if name and shape == {"init_features": 64, "growth_rate": 32, "bn_size": 4}:
        return name, kwargs
    return "DenseNet", {**kwargs, **shape, "block_config": list(block_config)}


# ---- the bundle -----------------------------------------------------------------------------


def _slug(path: Path) -> str:
    stem = re.sub(r"(\.pth|\.pt|\.tar|\.ckpt|\.bin)+$", "", path.name.lower())
    return re.sub(r"[^a-z0-9]+", "-", stem).strip("-") or "imported"


def _check_labels(labels: Sequence[str], outputs: int) -> None:
    if len(labels) != outputs:
        raise BundleError(
            f"the checkpoint's classifier has {outputs} outputs but {len(labels)} labels were "
            "given; name every output in order"
        )
    uncoded = [label for label in labels if label not in FINDING_CODES]
    if uncoded:
        raise BundleError(
            f"labels without a coded concept: {uncoded}; add them to structured_reports/codes.py"
        )


def _metadata(
    request: ImportRequest, card: Card, source: Mapping[str, Any], norm: Normalisation
) -> dict[str, Any]:
    doc = metadata(card)
    what = f"{card.network} weights imported from {source['file']} (SHA-256 {source['sha256']})"
    doc["description"] = f"{request.description or what}. Not for clinical use."
    doc["changelog"] = {card.version: f"imported by dicom-node: {what}"}
    n = len(card.labels)
    doc["task"] = f"Multi-label classification of frontal chest radiographs ({n} labels)"
    doc["data_source"] = "as published with the weights (not known to dicom-node)"
    section = doc[SECTION]
    for key in ("training", "validation_metrics"):
        section.pop(key, None)
    section["threshold_method"] = (
        f"none: {request.threshold} for every label as imported; choose thresholds on local data "
        "with `dicom-node evaluate --calibrate`"
    )
    section["source_checkpoint"] = dict(source)
    section["trained_intensity"] = {"mean": list(norm.mean), "std": list(norm.std)}
    if request.manufacturer:
        section["manufacturer"] = request.manufacturer
    return doc


def _license(request: ImportRequest, card: Card, source: Mapping[str, Any]) -> str:
    header = (
        f"{card.name} {card.version}: weights converted by dicom-node from {source['file']} "
        f"(SHA-256 {source['sha256']}).\n\n"
    )
    body = request.license_text or (
        "The weights' licence is their publisher's and is not stated here: check it, and the "
        "terms of the data they were trained on, before using them.\n"
    )
    return f"{header}{body.rstrip()}\n\nNOT FOR CLINICAL USE.\n"


def import_checkpoint(checkpoint: Path, out: Path, request: ImportRequest) -> Bundle:
    """Convert `checkpoint` into a bundle in `out` and return it as loaded back."""
    source_sha = sha256_file(checkpoint)
    state = to_monai_state(read_checkpoint(checkpoint))
    network, kwargs = network_of(state)
    _check_labels(request.labels, kwargs["out_channels"])
    net = instantiate_network(network, kwargs)
    try:
        net.load_state_dict(state, strict=True)  # the shapes fit before anything is written
    except RuntimeError as exc:
        raise BundleError(f"{checkpoint}: weights do not fit MONAI's {network}: {exc}") from exc
    channels = kwargs["in_channels"]
    means, stds = request.normalisation.per_channel(channels)
    mean = means[0] if len(set(means)) == 1 else means
    std = stds[0] if len(set(stds)) == 1 else stds
    card = Card(
        name=request.name or f"{_slug(checkpoint)}-{network.lower()}",
        version=request.version or f"1.0.0+{source_sha[:12]}",
        labels=request.labels,
        thresholds=(request.threshold,) * len(request.labels),
        spec=InputSpec(size=request.input_size, mean=mean, std=std, channels=channels),
        network=network,
        training_data="as published with the weights",
        synthetic=False,
        metrics={},
        training={},
    )
    source = {
        "file": checkpoint.name,
        "sha256": source_sha,
        "layout": "torchvision DenseNet state_dict",
        "tensors": len(state),
    }
    return write_bundle(
        out,
        metadata=_metadata(request, card, source, request.normalisation),
        network_def={"_target_": f"monai.networks.nets.{network}", **kwargs},
        state_dict=state,
        license_text=_license(request, card, source),
    )
