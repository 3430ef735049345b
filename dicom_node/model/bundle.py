"""MONAI bundle of a chest radiograph classifier: read, validate, build its network, write one."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from dicom_node.domain import ModelScope
from dicom_node.model import networks, zoo, zoo_transforms
from dicom_node.model.bundle_section import (
    DEFAULT_THRESHOLD,
    SECTION,
    BundleError,
    code_entry,
    codes_of,
    critical_of,
    get,
    input_of,
    labels_of,
    network_of,
    read_json,
    scope_of,
    thresholds_of,
)
from dicom_node.model.preprocess import InputSpec
from structured_reports.codes import FINDING_CODES, Concept
from structured_reports.results import NODE_MANUFACTURER, ModelIdentity

__all__ = ["SECTION", "Bundle", "BundleError", "code_entry", "load_bundle", "write_bundle"]

METADATA = Path("configs/metadata.json")
INFERENCE = Path("configs/inference.json")
WEIGHTS = Path("models/model.pt")
LICENSE = Path("LICENSE")


@dataclass(frozen=True, kw_only=True, slots=True)
class Bundle:
    """A validated classifier bundle: model card, labels with thresholds, input geometry."""

    path: Path
    identity: ModelIdentity
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    input_size: int
    in_channels: int
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    network_name: str = "DenseNet121"
    network_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # the bundle's own preprocessing; None: the node's letterbox and (x - mean) / std
    pipeline: zoo_transforms.Pipeline | None = None
    # the images it reads (its `serves`; default: frontal chest CR and DX)
    scope: ModelScope = field(default_factory=ModelScope)
    # label -> its coded concept where the bundle gives one (labels outside codes.py)
    own_codes: Mapping[str, Concept] = field(default_factory=dict)
    # label -> critical threshold: a study at or above one raises a critical-finding notification
    critical_findings: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.thresholds):
            raise ValueError("a bundle needs one threshold per label")
        unknown = sorted(set(self.critical_findings) - set(self.labels))
        if unknown:
            raise ValueError(f"critical findings {unknown} are not labels of the bundle")

    @property
    def input_spec(self) -> InputSpec:
        """What `preprocess.prepare` needs to make this bundle's model input."""
        return InputSpec(
            size=self.input_size,
            mean=self.mean,
            std=self.std,
            channels=self.in_channels,
            pipeline=self.pipeline,
        )

    @property
    def codes(self) -> tuple[Concept, ...]:
        """The coded concept of each label, in label order (validated when loading)."""
        return tuple(self.own_codes.get(label) or FINDING_CODES[label] for label in self.labels)

    @property
    def weights_path(self) -> Path:
        return self.path / WEIGHTS

    def build_network(self, device: torch.device | str) -> torch.nn.Module:
        """The network with the bundle's weights (fp16 files are cast to fp32), in eval mode."""
        net = instantiate_network(self.network_name, self.network_kwargs)
        try:
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors come in many types
            raise BundleError(f"{self.weights_path}: cannot load the state_dict: {exc}") from exc
        if not isinstance(state, Mapping):
            raise BundleError(f"{self.weights_path}: expected a state_dict, got {type(state)}")
        if isinstance(state.get("model"), Mapping):  # a checkpoint saved as {"model": ...}
            state = state["model"]
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BundleError(
                f"{self.weights_path}: weights do not fit the network: {exc}"
            ) from exc
        self._check_shape(net)
        return net.to(device).eval()

    def _check_shape(self, net: torch.nn.Module) -> None:
        """The network reads the bundle's channels and gives one logit per label."""
        where = f"{inference_file(self.path)}: 'network_def'"
        try:
            out = networks.split(net).head[-1]
            channels = networks.in_channels(net)
        except TypeError as exc:
            raise BundleError(f"{where}: {exc}") from exc
        if not isinstance(out, torch.nn.Linear) or out.out_features != len(self.labels):
            raise BundleError(f"{where} must give {len(self.labels)} outputs, one per label")
        if channels != self.in_channels:
            raise BundleError(
                f"{where} reads {channels} channels, the input has {self.in_channels}"
            )


def instantiate_network(name: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """A freshly initialised network of an allowed MONAI class (`networks.ALLOWED`), its
    arguments checked as a bundle's would be."""
    try:
        component = zoo.check_component({"_target_": name, **kwargs}, "network_def")
    except zoo.ZooError as exc:
        raise BundleError(str(exc)) from exc
    module: torch.nn.Module = zoo.instantiate(component)
    return module


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inference_file(path: Path) -> Path:
    """configs/inference.json, or the YAML form some zoo bundles ship (inference.yaml)."""
    for name in ("inference.yaml", "inference.yml"):
        if not (path / INFERENCE).exists() and (path / "configs" / name).is_file():
            return path / "configs" / name
    return path / INFERENCE


def load_bundle(path: Path) -> Bundle:
    """Read and validate the bundle in `path` (ours, or a MONAI model-zoo bundle: see
    docs/models.md); raises BundleError naming the file and key."""
    path = Path(path)
    meta_path = path / METADATA
    meta = read_json(meta_path)
    where = f"{meta_path}: '"
    name = meta.get("name") or path.name
    version = get(meta, "version", str, where)
    if not isinstance(name, str) or not name or not version:
        raise BundleError(f"{meta_path}: 'name' and 'version' must not be empty")
    sec = get(meta, SECTION, dict, where) if SECTION in meta else {}
    swhere = f"{where}{SECTION}."
    try:
        config = zoo.read_config(inference_file(path))
        default = zoo_transforms.default_threshold(config.postprocessing, str(inference_file(path)))
    except zoo.ZooError as exc:
        raise BundleError(str(exc)) from exc
    labels = labels_of(meta, sec, where)
    own_codes = codes_of(sec, labels, swhere)
    thresholds = thresholds_of(sec, labels, default or DEFAULT_THRESHOLD, swhere)
    critical = critical_of(sec, tuple(labels), swhere)
    network_name, kwargs, channels = network_of(
        config.network_def, f"{inference_file(path)}: '", len(labels)
    )
    model_input = input_of(sec, config, channels, where, inference_file(path))
    synthetic = get(sec, "synthetic_demo", bool, swhere) if "synthetic_demo" in sec else False
    for required in (WEIGHTS, LICENSE):
        if not (path / required).is_file():
            raise BundleError(f"{path / required}: file missing")
    identity = ModelIdentity(
        name=name,
        version=version,
        weights_sha256=sha256_file(path / WEIGHTS),
        manufacturer=str(sec.get("manufacturer", NODE_MANUFACTURER)),
        synthetic_demo=synthetic,
        description=str(meta.get("description", "")),
    )
    return Bundle(
        path=path,
        identity=identity,
        labels=tuple(labels),
        thresholds=thresholds,
        input_size=model_input.size,
        in_channels=model_input.channels,
        mean=model_input.mean,
        std=model_input.std,
        network_name=network_name,
        network_kwargs=MappingProxyType(kwargs),
        pipeline=model_input.pipeline,
        scope=scope_of(sec, swhere),
        own_codes=MappingProxyType(own_codes),
        critical_findings=MappingProxyType(critical),
    )


# ---- writing --------------------------------------------------------------------------------


def write_bundle(
    out: Path,
    *,
    metadata: Mapping[str, Any],
    network_def: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    license_text: str,
) -> Bundle:
    """Write the bundle layout into `out` and return it as loaded back (so it is validated)."""
    (out / METADATA).parent.mkdir(parents=True, exist_ok=True)
    (out / WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    inference = {
        "imports": ["$import torch"],
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": dict(network_def),
        "network": "$@network_def.to(@device)",
    }
    (out / METADATA).write_text(
        json.dumps(metadata, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    (out / INFERENCE).write_text(json.dumps(inference, indent=2) + "\n", encoding="utf-8")
    cpu_state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    torch.save(cpu_state, out / WEIGHTS)
    (out / LICENSE).write_text(license_text, encoding="utf-8")
    return load_bundle(out)
