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
from monai.networks import nets

from dicom_node.model.preprocess import InputSpec
from structured_reports.codes import FINDING_CODES, Concept
from structured_reports.results import NODE_MANUFACTURER, ModelIdentity

METADATA = Path("configs/metadata.json")
INFERENCE = Path("configs/inference.json")
WEIGHTS = Path("models/model.pt")
LICENSE = Path("LICENSE")
SECTION = "dicom_node"  # our keys inside metadata.json, beside the MONAI schema's

# Only these network definitions are built; a bundle never runs code of its own. The generic
# DenseNet (with its block_config) serves small test and experiment models.
_NETWORKS = ("DenseNet121", "DenseNet169", "DenseNet201", "DenseNet264", "DenseNet")
_NETWORK_KWARGS = frozenset(
    {
        "block_config",
        "spatial_dims",
        "in_channels",
        "out_channels",
        "init_features",
        "growth_rate",
        "bn_size",
        "dropout_prob",
        "pretrained",
        "progress",
    }
)


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Bundle:
    """A validated classifier bundle: model card, labels with thresholds, input geometry."""

    path: Path
    identity: ModelIdentity
    labels: tuple[str, ...]
    thresholds: tuple[float, ...]
    input_size: int
    in_channels: int
    mean: float
    std: float
    network_name: str = "DenseNet121"
    network_kwargs: Mapping[str, Any] = field(default_factory=dict)
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
            size=self.input_size, mean=self.mean, std=self.std, channels=self.in_channels
        )

    @property
    def codes(self) -> tuple[Concept, ...]:
        """The coded concept of each label, in label order (validated when loading)."""
        return tuple(FINDING_CODES[label] for label in self.labels)

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
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BundleError(
                f"{self.weights_path}: weights do not fit the network: {exc}"
            ) from exc
        return net.to(device).eval()


def instantiate_network(name: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """A freshly initialised network of an allowed MONAI DenseNet class."""
    if name not in _NETWORKS:
        raise BundleError(f"network {name!r} not allowed; one of {_NETWORKS}")
    module: torch.nn.Module = getattr(nets, name)(**kwargs)
    return module


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- reading --------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BundleError(f"{path}: file missing") from exc
    except OSError as exc:
        raise BundleError(f"{path}: cannot read: {exc}") from exc
    except ValueError as exc:
        raise BundleError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level")
    return doc


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """doc[key] checked against `kind`; `where` is 'file: prefix' for the message."""
    if key not in doc:
        raise BundleError(f"{where}{key}' missing")
    value = doc[key]
    bad_bool = isinstance(value, bool) and bool not in (
        kind if isinstance(kind, tuple) else (kind,)
    )
    if not isinstance(value, kind) or bad_bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BundleError(f"{where}{key}' must be {names}, got {value!r}")
    return value


def _labels_and_thresholds(
    sec: Mapping[str, Any], where: str
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    labels = _get(sec, "labels", list, where)
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise BundleError(f"{where}labels' must be a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise BundleError(f"{where}labels' has duplicates")
    thresholds = _get(sec, "thresholds", dict, where)
    if set(thresholds) != set(labels):
        missing, extra = set(labels) - set(thresholds), set(thresholds) - set(labels)
        raise BundleError(
            f"{where}thresholds' keys differ from labels: "
            f"missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    _check_codes(sec, labels, where)
    values = []
    for label in labels:
        t = _get(thresholds, label, (int, float), f"{where}thresholds.")
        if not 0.0 < t < 1.0:
            raise BundleError(f"{where}thresholds.{label}' must lie in (0, 1), got {t}")
        values.append(float(t))
    return tuple(labels), tuple(values)


def _critical_findings(
    sec: Mapping[str, Any], labels: tuple[str, ...], where: str
) -> dict[str, float]:
    """The optional `critical_findings` {label: threshold}: labels of the bundle, thresholds in
    (0, 1). Absent: none (no study raises a critical-finding notification by the bundle)."""
    if "critical_findings" not in sec:
        return {}
    table = _get(sec, "critical_findings", dict, where)
    unknown = sorted(set(table) - set(labels))
    if unknown:
        raise BundleError(
            f"{where}critical_findings' names labels the bundle does not predict: {unknown}"
        )
    critical: dict[str, float] = {}
    for label in labels:
        if label not in table:
            continue
        t = _get(table, label, (int, float), f"{where}critical_findings.")
        if not 0.0 < t < 1.0:
            raise BundleError(f"{where}critical_findings.{label}' must lie in (0, 1), got {t}")
        critical[label] = float(t)
    return critical


def code_entry(label: str) -> dict[str, str]:
    """The `codes` entry written for a label: its curated concept (structured_reports.codes)."""
    concept = FINDING_CODES[label]
    return {"value": concept.value, "scheme": concept.scheme, "meaning": concept.meaning}


def _check_codes(sec: Mapping[str, Any], labels: list[str], where: str) -> None:
    """Every label has a curated code; a `codes` table, when present, agrees with it."""
    uncoded = [label for label in labels if label not in FINDING_CODES]
    if uncoded:
        raise BundleError(
            f"{where}labels' has labels without a coded concept: {uncoded}; add them to "
            "structured_reports/codes.py (exact NIH ChestX-ray14 spelling) first"
        )
    if "codes" not in sec:
        return
    codes = _get(sec, "codes", dict, where)
    if set(codes) != set(labels):
        raise BundleError(
            f"{where}codes' keys differ from labels: {sorted(set(codes) ^ set(labels))}"
        )
    for label in labels:
        entry = _get(codes, label, dict, f"{where}codes.")
        if entry != code_entry(label):
            raise BundleError(
                f"{where}codes.{label}' is {entry}, the curated code is {code_entry(label)}"
            )


def _check_kwarg(key: str, value: Any, where: str) -> None:
    if key not in _NETWORK_KWARGS:
        raise BundleError(f"{where}network_def.{key}' is not a supported DenseNet argument")
    if isinstance(value, str) and value[:1] in "$@%":
        raise BundleError(f"{where}network_def.{key}' must be a literal, not an expression")
    if key == "block_config" and not (
        isinstance(value, list)
        and 1 <= len(value) <= 8
        and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 64 for n in value)
    ):
        raise BundleError(f"{where}network_def.block_config' must be 1 to 8 layer counts")


def _network(path: Path, labels: int, in_channels: int) -> tuple[str, dict[str, Any]]:
    where = f"{path}: '"
    doc = _read_json(path)
    net = dict(_get(doc, "network_def", dict, where))
    target = str(_get(net, "_target_", str, f"{where}network_def."))
    name = target.removeprefix("monai.networks.nets.").removeprefix("densenet.")
    if name not in _NETWORKS:
        raise BundleError(
            f"{where}network_def._target_' must be one of {_NETWORKS}, got {target!r}"
        )
    kwargs = {k: v for k, v in net.items() if k != "_target_"}
    for key, value in kwargs.items():
        _check_kwarg(key, value, where)
    if "block_config" in kwargs and name != "DenseNet":
        raise BundleError(f"{where}network_def.block_config' is fixed by {name}; use DenseNet")
    if kwargs.get("pretrained"):
        raise BundleError(f"{where}network_def.pretrained' must be false (nothing is downloaded)")
    expected = {"spatial_dims": 2, "in_channels": in_channels, "out_channels": labels}
    for key, want in expected.items():
        if _get(net, key, int, f"{where}network_def.") != want:
            raise BundleError(f"{where}network_def.{key}' must be {want} to match metadata.json")
    return name, kwargs


def load_bundle(path: Path) -> Bundle:
    """Read and validate the bundle in `path`; raises BundleError naming the file and key."""
    path = Path(path)
    meta_path = path / METADATA
    meta = _read_json(meta_path)
    where = f"{meta_path}: '"
    name = _get(meta, "name", str, where)
    version = _get(meta, "version", str, where)
    if not name or not version:
        raise BundleError(f"{meta_path}: 'name' and 'version' must not be empty")
    sec = _get(meta, SECTION, dict, where)
    swhere = f"{where}{SECTION}."
    labels, thresholds = _labels_and_thresholds(sec, swhere)
    critical = _critical_findings(sec, labels, swhere)
    size = _get(sec, "input_size", int, swhere)
    channels = _get(sec, "in_channels", int, swhere)
    if not 32 <= size <= 4096 or channels not in (1, 3):
        raise BundleError(f"{swhere}input_size' must be 32..4096 and 'in_channels' 1 or 3")
    intensity = _get(sec, "intensity", dict, swhere)
    mean = float(_get(intensity, "mean", (int, float), f"{swhere}intensity."))
    std = float(_get(intensity, "std", (int, float), f"{swhere}intensity."))
    if std <= 0:
        raise BundleError(f"{swhere}intensity.std' must be positive, got {std}")
    synthetic = _get(sec, "synthetic_demo", bool, swhere)
    network_name, kwargs = _network(path / INFERENCE, len(labels), channels)
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
        labels=labels,
        thresholds=thresholds,
        input_size=size,
        in_channels=channels,
        mean=mean,
        std=std,
        network_name=network_name,
        network_kwargs=MappingProxyType(kwargs),
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
