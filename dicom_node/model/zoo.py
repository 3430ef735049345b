"""A bundle's `inference.json` read with monai.bundle, under an allow-list: no bundle runs code.

The node takes three components of the config: `network_def` (an allowed MONAI network,
`networks.ALLOWED`), and where declared `preprocessing` and `postprocessing`. Before monai's
`ConfigParser` instantiates anything, each component is copied with its `@` references resolved
and checked:

- every `_target_` must be on the allow-list below (short or `monai.` dotted names);
- no `$` expression is evaluated: the few dtype literals bundles write (`$torch.float32`) become
  their names, and any other expression is refused, as are `%` macros, `_requires_` and `_mode_`;
- `pretrained` must not be true (nothing is downloaded).

What the node does with the preprocessing and postprocessing: `zoo_transforms`.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle.config_parser import ConfigParser
from monai.networks import nets

from dicom_node.model.networks import ALLOWED as NETWORKS

LOADERS = frozenset({"LoadImage", "LoadImaged"})
CHANNEL_FIRST = frozenset(
    {
        "EnsureChannelFirst",
        "EnsureChannelFirstd",
        "AsChannelFirst",
        "AsChannelFirstd",
        "AddChannel",
        "AddChanneld",
    }
)
RESIZE = frozenset({"Resize", "Resized"})
PAD = frozenset({"SpatialPad", "SpatialPadd", "ResizeWithPadOrCrop", "ResizeWithPadOrCropd"})
INTENSITY = frozenset(
    {
        "ScaleIntensity",
        "ScaleIntensityd",
        "ScaleIntensityRange",
        "ScaleIntensityRanged",
        "NormalizeIntensity",
        "NormalizeIntensityd",
        "RepeatChannel",
        "RepeatChanneld",
        "CastToType",
        "CastToTyped",
        "EnsureType",
        "EnsureTyped",
        "ToTensor",
        "ToTensord",
    }
)
PREPROCESSING = frozenset({"Compose", *LOADERS, *CHANNEL_FIRST, *RESIZE, *PAD, *INTENSITY})
POSTPROCESSING = frozenset({"Compose", "Activations", "Activationsd", "AsDiscrete", "AsDiscreted"})
_PREFIXES = ("monai.networks.nets.", "monai.transforms.", "monai.transforms.compose.")
# The only `$` expressions a bundle may hold: dtype literals (CastToType(d) takes names too).
_LITERALS = {
    f"${module}.{dtype}": dtype
    for module in ("torch", "np", "numpy")
    for dtype in ("float32", "float16", "float64")
}
IGNORED_KEYS = frozenset({"_desc_", "_disabled_"})


class ZooError(ValueError):
    """A config the node will not instantiate or apply; the message names the file and id."""


def short_name(target: str) -> str:
    """`monai.networks.nets.DenseNet121` and `DenseNet121` alike: the class name."""
    for prefix in _PREFIXES:
        if target.startswith(prefix):
            return target[len(prefix) :]
    return target


class _Resolver:
    """Copies of config components, references resolved and every value checked."""

    def __init__(self, config: Mapping[str, Any], where: str) -> None:
        self.config = config
        self.where = where

    def lookup(self, ref: str) -> Any:
        node: Any = self.config
        for part in ref.replace("#", "::").split("::"):
            if isinstance(node, Mapping) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise ZooError(f"{self.where}: reference '@{ref}' names nothing in the config")
        return node

    def resolve(self, value: Any, at: str, allowed: frozenset[str], depth: int = 0) -> Any:
        """`value` with references replaced by what they name, checked against `allowed`."""
        if depth > 32:
            raise ZooError(f"{self.where}: '{at}' references nest too deep (a cycle?)")
        if isinstance(value, str):
            return self._string(value, at, allowed, depth)
        if isinstance(value, list):
            return [self.resolve(v, f"{at}.{i}", allowed, depth) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            return self._component(value, at, allowed, depth)
        return copy.deepcopy(value)

    def _string(self, value: str, at: str, allowed: frozenset[str], depth: int) -> Any:
        if value.startswith("@"):
            return self.resolve(self.lookup(value[1:]), value[1:], allowed, depth + 1)
        if value.startswith("$"):
            if value.replace(" ", "") in _LITERALS:
                return _LITERALS[value.replace(" ", "")]
            raise ZooError(
                f"{self.where}: '{at}' is an expression ({value!r}); the node evaluates none "
                "(a bundle may not run code): write the value as a literal"
            )
        if value.startswith("%"):
            raise ZooError(f"{self.where}: '{at}' is a macro ({value!r}); write it out")
        return value

    def _component(
        self, value: Mapping[str, Any], at: str, allowed: frozenset[str], depth: int
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in ("_requires_", "_mode_"):
                raise ZooError(f"{self.where}: '{at}.{key}' is not supported")
            if key == "_target_":
                target = short_name(str(item))
                if target not in allowed:
                    raise ZooError(
                        f"{self.where}: '{at}._target_' {item!r} is not allowed; a bundle may "
                        f"instantiate only {sorted(allowed)}"
                    )
                out[key] = target
            elif key == "pretrained" and item:
                raise ZooError(f"{self.where}: '{at}.pretrained' must be false")
            else:
                out[key] = self.resolve(item, f"{at}.{key}", allowed, depth)
        if out.get("_target_") in NETWORKS and _takes_pretrained(out["_target_"]):
            out.setdefault("pretrained", False)  # EfficientNetBN defaults to downloading
        return out


def _takes_pretrained(name: str) -> bool:
    return "pretrained" in inspect.signature(getattr(nets, name)).parameters


@dataclass(frozen=True, kw_only=True, slots=True)
class ZooConfig:
    """The checked components of an inference config (plain JSON values, references resolved)."""

    network_def: dict[str, Any]
    preprocessing: dict[str, Any] | None
    postprocessing: dict[str, Any] | None


def read_config(path: Path) -> ZooConfig:
    """`inference.json` (or .yaml) read by monai.bundle, its three components checked."""
    where = str(path)
    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except FileNotFoundError as exc:
        raise ZooError(f"{where}: file missing") from exc
    except (OSError, ValueError) as exc:
        raise ZooError(f"{where}: cannot read: {exc}") from exc
    config = parser.get()
    if not isinstance(config, Mapping):
        raise ZooError(f"{where}: expected a mapping at the top level")
    resolver = _Resolver(config, where)
    if "network_def" not in config:
        raise ZooError(f"{where}: 'network_def' missing")
    network = resolver.resolve(config["network_def"], "network_def", frozenset(NETWORKS))
    if not isinstance(network, dict) or "_target_" not in network:
        raise ZooError(f"{where}: 'network_def' must be a component with a _target_")
    return ZooConfig(
        network_def=network,
        preprocessing=_optional(resolver, config, "preprocessing", PREPROCESSING),
        postprocessing=_optional(resolver, config, "postprocessing", POSTPROCESSING),
    )


def check_component(
    component: Mapping[str, Any], at: str, allowed: Sequence[str] = NETWORKS
) -> dict[str, Any]:
    """A component given outside a config file (a training run's network) checked as a
    bundle's would be."""
    checked: dict[str, Any] = _Resolver({}, at).resolve(component, at, frozenset(allowed))
    return checked


def _optional(
    resolver: _Resolver, config: Mapping[str, Any], key: str, allowed: frozenset[str]
) -> dict[str, Any] | None:
    if key not in config:
        return None
    value = resolver.resolve(config[key], key, allowed)
    if not isinstance(value, dict) or "_target_" not in value:
        raise ZooError(f"{resolver.where}: '{key}' must be a component with a _target_")
    return value


def instantiate(component: Mapping[str, Any]) -> Any:
    """A checked component (no references, no expressions) instantiated by monai.bundle."""
    parser = ConfigParser({"component": json.loads(json.dumps(component))})
    return parser.get_parsed_content("component", instantiate=True)


def steps(component: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The transforms of a checked component in order (a Compose's list, flattened), without
    the disabled ones."""
    if component is None:
        return []
    if component.get("_disabled_") is True:
        return []
    if component["_target_"] == "Compose":
        found: list[dict[str, Any]] = []
        for item in component.get("transforms", []):
            if not isinstance(item, Mapping) or "_target_" not in item:
                raise ZooError(f"a Compose lists {item!r}, not a transform component")
            found += steps(item)
        return found
    return [dict(component)]


def keys_of(step: Mapping[str, Any]) -> Sequence[str]:
    keys = step.get("keys", ())
    return [keys] if isinstance(keys, str) else list(keys)
