"""The node's reading of a bundle's metadata.json section and inference network: labels,
codes, thresholds, critical findings, the network definition and the model input. Every error
is a BundleError naming the file and the key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.domain import ModelScope
from dicom_node.model import networks, zoo, zoo_transforms
from structured_reports.codes import FINDING_CODES, Concept

SECTION = "dicom_node"  # our keys inside metadata.json, beside the MONAI schema's
DEFAULT_THRESHOLD = 0.5  # a label's threshold when neither the section nor postprocessing has one
# Only the networks of `networks.ALLOWED` are built; a bundle never runs code of its own. The
# generic DenseNet (with its block_config) serves small test and experiment models.
_DENSENET_KWARGS = frozenset(
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


def read_json(path: Path) -> dict[str, Any]:
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


def get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
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


def labels_of(meta: Mapping[str, Any], sec: Mapping[str, Any], where: str) -> list[str]:
    """The section's `labels`, else the names of MONAI's `network_data_format.outputs.pred.
    channel_def` in channel order."""
    if "labels" in sec:
        labels = get(sec, "labels", list, f"{where}{SECTION}.")
    else:
        pred = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {})
        channels = pred.get("channel_def") if isinstance(pred, Mapping) else None
        if not isinstance(channels, Mapping) or not channels:
            raise BundleError(
                f"{where}{SECTION}.labels' missing, and no network_data_format.outputs.pred."
                "channel_def to take the labels from"
            )
        try:
            labels = [channels[k] for k in sorted(channels, key=int)]
        except ValueError as exc:
            raise BundleError(f"{where}network_data_format...channel_def' keys: {exc}") from exc
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise BundleError(f"{where}{SECTION}.labels' must be a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise BundleError(f"{where}{SECTION}.labels' has duplicates")
    return list(labels)


def thresholds_of(
    sec: Mapping[str, Any], labels: list[str], default: float, where: str
) -> tuple[float, ...]:
    """The section's `thresholds` {label: t}, else `default` for every label."""
    if "thresholds" not in sec:
        return tuple(default for _ in labels)
    thresholds = get(sec, "thresholds", dict, where)
    if set(thresholds) != set(labels):
        missing, extra = set(labels) - set(thresholds), set(thresholds) - set(labels)
        raise BundleError(
            f"{where}thresholds' keys differ from labels: "
            f"missing {sorted(missing)}, unknown {sorted(extra)}"
        )
    values = []
    for label in labels:
        t = get(thresholds, label, (int, float), f"{where}thresholds.")
        if not 0.0 < t < 1.0:
            raise BundleError(f"{where}thresholds.{label}' must lie in (0, 1), got {t}")
        values.append(float(t))
    return tuple(values)


def critical_of(sec: Mapping[str, Any], labels: tuple[str, ...], where: str) -> dict[str, float]:
    """The optional `critical_findings` {label: threshold}: labels of the bundle, thresholds in
    (0, 1). Absent: none (no study raises a critical-finding notification by the bundle)."""
    if "critical_findings" not in sec:
        return {}
    table = get(sec, "critical_findings", dict, where)
    unknown = sorted(set(table) - set(labels))
    if unknown:
        raise BundleError(
            f"{where}critical_findings' names labels the bundle does not predict: {unknown}"
        )
    critical: dict[str, float] = {}
    for label in labels:
        if label not in table:
            continue
        t = get(table, label, (int, float), f"{where}critical_findings.")
        if not 0.0 < t < 1.0:
            raise BundleError(f"{where}critical_findings.{label}' must lie in (0, 1), got {t}")
        critical[label] = float(t)
    return critical


def code_entry(label: str) -> dict[str, str]:
    """The `codes` entry written for a label: its curated concept (structured_reports.codes)."""
    concept = FINDING_CODES[label]
    return {"value": concept.value, "scheme": concept.scheme, "meaning": concept.meaning}


def codes_of(sec: Mapping[str, Any], labels: list[str], where: str) -> dict[str, Concept]:
    """Every label coded: by its curated concept (codes.py), which a `codes` table must repeat,
    or, for a label without one, by the table's entry. Returns the table's own concepts."""
    codes = get(sec, "codes", dict, where) if "codes" in sec else {}
    uncoded = [label for label in labels if label not in FINDING_CODES and label not in codes]
    if uncoded:
        raise BundleError(
            f"{where}labels' has labels without a coded concept: {uncoded}; add them to "
            f"structured_reports/codes.py (exact NIH ChestX-ray14 spelling) or give each a "
            f"{SECTION}.codes entry {{value, scheme, meaning}}"
        )
    if codes and set(codes) != set(labels):
        raise BundleError(
            f"{where}codes' keys differ from labels: {sorted(set(codes) ^ set(labels))}"
        )
    own: dict[str, Concept] = {}
    for label in codes:
        entry = get(codes, label, dict, f"{where}codes.")
        if label in FINDING_CODES:
            if entry != code_entry(label):
                raise BundleError(
                    f"{where}codes.{label}' is {entry}, the curated code is {code_entry(label)}"
                )
            continue
        try:
            own[label] = Concept(
                value=str(entry["value"]),
                scheme=str(entry["scheme"]),
                meaning=str(entry["meaning"]),
                source=f"bundle {SECTION}.codes",
            )
        except (KeyError, ValueError) as exc:
            raise BundleError(f"{where}codes.{label}': {exc}") from exc
    return own


def _check_kwarg(key: str, value: Any, where: str) -> None:
    if key not in _DENSENET_KWARGS:
        raise BundleError(f"{where}network_def.{key}' is not a supported DenseNet argument")
    if key == "block_config" and not (
        isinstance(value, list)
        and 1 <= len(value) <= 8
        and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 64 for n in value)
    ):
        raise BundleError(f"{where}network_def.block_config' must be 1 to 8 layer counts")


_CHANNEL_KEYS = ("in_channels", "n_input_channels")  # ResNet names it n_input_channels
_OUTPUT_KEYS = ("out_channels", "num_classes")


def network_of(net: Mapping[str, Any], where: str, labels: int) -> tuple[str, dict[str, Any], int]:
    """The checked network_def: its class, its arguments and its input channels."""
    name = str(net["_target_"])
    kwargs = {k: v for k, v in net.items() if k != "_target_"}
    if name in networks.DENSENETS:
        for key, value in kwargs.items():
            _check_kwarg(key, value, where)
        if "block_config" in kwargs and name != "DenseNet":
            raise BundleError(f"{where}network_def.block_config' is fixed by {name}; use DenseNet")
    if get(net, "spatial_dims", int, f"{where}network_def.") != 2:
        raise BundleError(f"{where}network_def.spatial_dims' must be 2 (radiographs)")
    outputs = [k for k in _OUTPUT_KEYS if k in net]
    for key in outputs:
        if get(net, key, int, f"{where}network_def.") != labels:
            raise BundleError(f"{where}network_def.{key}' must be {labels}, one per label")
    channel_keys = [k for k in _CHANNEL_KEYS if k in net]
    if not channel_keys:
        raise BundleError(f"{where}network_def.in_channels' missing")
    channels = get(net, channel_keys[0], int, f"{where}network_def.")
    if channels not in (1, 3):
        raise BundleError(f"{where}network_def.{channel_keys[0]}' must be 1 or 3")
    return name, kwargs, channels


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelInput:
    size: int
    channels: int
    mean: float | tuple[float, ...] = 0.0
    std: float | tuple[float, ...] = 1.0
    pipeline: zoo_transforms.Pipeline | None = None


def own_input(sec: Mapping[str, Any], channels: int, where: str) -> ModelInput:
    """Without the bundle's preprocessing: the section's input size and intensity."""
    swhere = f"{where}{SECTION}."
    if not sec:
        raise BundleError(
            f"{where}{SECTION}' missing, and the inference config declares no preprocessing: "
            f"give {SECTION}.input_size and {SECTION}.intensity, or a preprocessing"
        )
    size = get(sec, "input_size", int, swhere)
    declared = get(sec, "in_channels", int, swhere) if "in_channels" in sec else channels
    if not 32 <= size <= 4096 or declared != channels:
        raise BundleError(
            f"{swhere}input_size' must be 32..4096 and 'in_channels' {channels} (the network's)"
        )
    intensity = get(sec, "intensity", dict, swhere)
    mean = _intensity(intensity, "mean", channels, swhere)
    std = _intensity(intensity, "std", channels, swhere)
    if (min(std) if isinstance(std, tuple) else std) <= 0:
        raise BundleError(f"{swhere}intensity.std' must be positive, got {std}")
    return ModelInput(size=size, channels=channels, mean=mean, std=std)


def _intensity(
    intensity: Mapping[str, Any], key: str, channels: int, where: str
) -> float | tuple[float, ...]:
    """One number for every channel, or a list of one per channel."""
    value = get(intensity, key, (int, float, list), f"{where}intensity.")
    if not isinstance(value, list):
        return float(value)
    if len(value) != channels or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise BundleError(f"{where}intensity.{key}' must be a number or {channels} numbers")
    return tuple(float(v) for v in value)


def input_of(
    sec: Mapping[str, Any], config: zoo.ZooConfig, channels: int, where: str, inference: Path
) -> ModelInput:
    """The model input: the bundle's own preprocessing where it declares one, else ours."""
    if config.preprocessing is None:
        return own_input(sec, channels, where)
    clashing = sorted({"input_size", "intensity"} & set(sec))
    if clashing:
        raise BundleError(
            f"{where}{SECTION}.{clashing[0]}' conflicts with the preprocessing declared in "
            f"{inference.name}: keep one of them"
        )
    loaded = sec.get("loaded_range", [0, 255])
    transpose = sec.get("loader_transposes", True)
    if not (
        isinstance(loaded, list)
        and len(loaded) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in loaded)
        and loaded[0] < loaded[1]
    ):
        raise BundleError(f"{where}{SECTION}.loaded_range' must be [low, high], got {loaded!r}")
    if not isinstance(transpose, bool):
        raise BundleError(f"{where}{SECTION}.loader_transposes' must be true or false")
    try:
        pipeline = zoo_transforms.pipeline_of(
            config.preprocessing,
            network_channels=channels,
            where=str(inference),
            loaded_range=(float(loaded[0]), float(loaded[1])),
            transpose=transpose,
        )
    except zoo.ZooError as exc:
        raise BundleError(str(exc)) from exc
    if not 32 <= pipeline.size <= 4096:
        raise BundleError(f"{inference}: the preprocessing's size must be 32..4096")
    return ModelInput(size=pipeline.size, channels=channels, pipeline=pipeline)


_SCOPE_KEYS = ("sop_classes", "modalities", "body_parts", "views")


def scope_of(sec: Mapping[str, Any], where: str) -> ModelScope:
    """The images the bundle serves (`serves`: sop_classes, modalities, body_parts, views, each
    a list of strings); what is not given keeps the chest radiograph default."""
    if "serves" not in sec:
        return ModelScope()
    serves = get(sec, "serves", dict, where)
    unknown = sorted(set(serves) - set(_SCOPE_KEYS))
    if unknown:
        raise BundleError(f"{where}serves' has unknown keys {unknown}; known: {list(_SCOPE_KEYS)}")
    values: dict[str, tuple[str, ...]] = {}
    for key in _SCOPE_KEYS:
        if key not in serves:
            continue
        items = get(serves, key, list, f"{where}serves.")
        if not all(isinstance(v, str) and v.strip() for v in items) or (
            key != "views" and not items
        ):
            raise BundleError(f"{where}serves.{key}' must be a list of non-empty strings")
        upper = key in ("modalities", "body_parts", "views")
        values[key] = tuple(v.strip().upper() if upper else v.strip() for v in items)
    return ModelScope(**values)
