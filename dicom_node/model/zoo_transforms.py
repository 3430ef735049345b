"""A model-zoo bundle's own pre- and postprocessing, as the node applies them.

Preprocessing is applied as the bundle declares it, by MONAI's own transforms, with one stage
replaced: the loader (`LoadImage(d)`, and `EnsureChannelFirst(d)` / `AsChannelFirst(d)` /
`AddChannel(d)` after it). The node renders the DICOM image as a viewer shows it and hands it
over as MONAI's loader would hand over a PNG: channel first, in MONAI's (x, y) order (transposed
against the rows and columns of the file), scaled to `loaded_range` (default [0, 255], an 8-bit
image), grey replicated to the network's input channels. Spatial transforms must be ones whose
geometry the node can undo for the Grad-CAM maps: `Resize(d)` to a square (stretch), or to the
longest side followed by a centred `SpatialPad(d)` / `ResizeWithPadOrCrop(d)` (letterbox).

Postprocessing: `Activations(d)` with `sigmoid` (the node's rule: per-label probabilities) and
`AsDiscrete(d)` with a `threshold` (every label's default threshold). A softmax, an argmax or any
other step is refused: the node reports independent per-finding probabilities.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.data.meta_tensor import MetaTensor

from dicom_node.domain import Letterbox
from dicom_node.errors import PreprocessError
from dicom_node.model.zoo import (
    CHANNEL_FIRST,
    IGNORED_KEYS,
    LOADERS,
    PAD,
    RESIZE,
    ZooError,
    instantiate,
    keys_of,
    steps,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Pipeline:
    """A bundle's own preprocessing, as the node applies it after its DICOM rendering: the
    transforms after the loader (checked components), the dict key they read (None for array
    transforms), and how the rendered image is handed over."""

    transforms: tuple[dict[str, Any], ...]
    key: str | None
    size: int
    channels: int  # channels handed over by the loader
    channels_out: int  # the network's input channels
    transpose: bool  # MONAI's (x, y) order, as its loaders give 2-D images
    loaded_range: tuple[float, float]
    letterbox: bool  # aspect kept and padded; else stretched to the square

    def describe(self) -> str:
        names = ", ".join(t["_target_"] for t in self.transforms)
        return f"the bundle's preprocessing after its loader: {names or 'none'}"


def pipeline_of(
    preprocessing: Mapping[str, Any],
    *,
    network_channels: int,
    where: str,
    loaded_range: tuple[float, float] = (0.0, 255.0),
    transpose: bool = True,
) -> Pipeline:
    """The pipeline of a checked `preprocessing` component; ZooError where the node would not
    apply it faithfully (see the module docstring)."""
    all_steps = steps(preprocessing)
    if not all_steps or all_steps[0]["_target_"] not in LOADERS:
        raise ZooError(f"{where}: 'preprocessing' must begin with LoadImage(d)")
    loader = all_steps.pop(0)
    key = _key(loader, where)
    while all_steps and all_steps[0]["_target_"] in CHANNEL_FIRST:
        all_steps.pop(0)
    for step in all_steps:
        _check_step(step, key, where)
    size, letterbox = _geometry(all_steps, where)
    repeats = [s for s in all_steps if s["_target_"].startswith("RepeatChannel")]
    handed = 1 if repeats else network_channels
    return Pipeline(
        transforms=tuple(all_steps),
        key=key,
        size=size,
        channels=handed,
        channels_out=network_channels,
        transpose=transpose,
        loaded_range=loaded_range,
        letterbox=letterbox,
    )


def _key(loader: Mapping[str, Any], where: str) -> str | None:
    if not loader["_target_"].endswith("d"):
        return None
    keys = keys_of(loader)
    if len(keys) != 1:
        raise ZooError(f"{where}: the loader must read one key (the image), not {keys}")
    return keys[0]


def _check_step(step: Mapping[str, Any], key: str | None, where: str) -> None:
    target = step["_target_"]
    if target in LOADERS or target in CHANNEL_FIRST:
        raise ZooError(f"{where}: {target} may only follow the loader")
    dict_form = target.endswith("d") and target != "Compose"
    if (key is None) == dict_form:
        raise ZooError(f"{where}: {target} mixes dict and array transforms")
    if key is not None and keys_of(step) != [key]:
        raise ZooError(f"{where}: {target} reads {keys_of(step)}; only the image key {key!r}")


def _square(value: Any, where: str, target: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    raise ZooError(f"{where}: {target} spatial_size {value!r}: the node needs a square input")


def _geometry(transforms: Sequence[Mapping[str, Any]], where: str) -> tuple[int, bool]:
    """The input side and whether the aspect is kept, from the one Resize and its pad."""
    resizes = [t for t in transforms if t["_target_"] in RESIZE]
    pads = [t for t in transforms if t["_target_"] in PAD]
    if len(resizes) != 1:
        raise ZooError(f"{where}: the preprocessing needs exactly one Resize(d)")
    resize = resizes[0]
    size = _square(resize.get("spatial_size"), where, resize["_target_"])
    longest = resize.get("size_mode", "all") == "longest"
    if not longest:
        if pads:
            raise ZooError(f"{where}: a pad after a Resize to the full square is not supported")
        return size, False
    if len(pads) != 1 or _square(pads[0].get("spatial_size"), where, "pad") != size:
        raise ZooError(f"{where}: Resize(d) to the longest side needs one pad to {size}x{size}")
    pad = pads[0]
    if pad.get("method", "symmetric") != "symmetric" or pad.get("mode", "constant") != "constant":
        raise ZooError(f"{where}: {pad['_target_']} must pad symmetrically with zeros")
    order = list(transforms)
    if order.index(pad) < order.index(resize):
        raise ZooError(f"{where}: the pad must follow the Resize(d)")
    return size, True


@functools.lru_cache(maxsize=8)
def _compose(transforms_json: str) -> Any:
    """The MONAI Compose of a pipeline's transforms, built once per process."""
    return instantiate({"_target_": "Compose", "transforms": json.loads(transforms_json)})


def apply(pipeline: Pipeline, display: npt.NDArray[np.float32]) -> tuple[torch.Tensor, Letterbox]:
    """The model input (channels, size, size) float32 of a display image (H, W) in [0, 1], and
    where the image lies in it (for the Grad-CAM maps). A transform that fails on this image
    raises PreprocessError (the image is skipped with the reason, the study goes on)."""
    lo, hi = pipeline.loaded_range
    image = display.T if pipeline.transpose else display
    loaded = np.repeat((lo + image.astype(np.float32) * (hi - lo))[None], pipeline.channels, 0)
    compose = _compose(json.dumps(list(pipeline.transforms), sort_keys=True))
    data = MetaTensor(torch.from_numpy(np.ascontiguousarray(loaded, np.float32)))
    try:
        out = compose({pipeline.key: data})[pipeline.key] if pipeline.key else compose(data)
    except Exception as exc:  # MONAI wraps a transform's failure in RuntimeError, or not
        raise PreprocessError(f"the bundle's preprocessing failed: {exc}") from exc
    tensor = torch.as_tensor(out.as_tensor() if isinstance(out, MetaTensor) else out)
    if tuple(tensor.shape) != (pipeline.channels_out, pipeline.size, pipeline.size):
        raise PreprocessError(
            f"the bundle's preprocessing gave shape {tuple(tensor.shape)}, not "
            f"({pipeline.channels_out}, {pipeline.size}, {pipeline.size})"
        )
    return tensor.float().contiguous(), _letterbox(pipeline, display.shape)


def _letterbox(pipeline: Pipeline, shape: tuple[int, ...]) -> Letterbox:
    """Where the display image (H, W) lies in the model input, in the display's orientation."""
    h, w = int(shape[0]), int(shape[1])
    size = pipeline.size
    scale = size / max(h, w)
    if pipeline.letterbox:  # as MONAI's Resize(size_mode=longest), then a centred pad
        h, w = round(h * scale), round(w * scale)
    else:  # stretched to the whole square
        h = w = size
    return Letterbox.centred(
        size=size, height=h, width=w, scale=scale, transposed=pipeline.transpose
    )


# ---- postprocessing ---------------------------------------------------------------------------


def default_threshold(postprocessing: Mapping[str, Any] | None, where: str) -> float | None:
    """The threshold a bundle's postprocessing applies to every label, if any; ZooError for a
    postprocessing the node will not apply (anything but a sigmoid and a threshold)."""
    threshold = None
    for step in steps(postprocessing):
        target = step["_target_"]
        options = {k: v for k, v in step.items() if k not in ("_target_", "keys", *IGNORED_KEYS)}
        if target.startswith("Activations"):
            if options != {"sigmoid": True}:
                raise ZooError(
                    f"{where}: postprocessing {target} {options}: the node applies a sigmoid "
                    "per label only (no softmax, no other function)"
                )
        elif target.startswith("AsDiscrete"):
            t = options.pop("threshold", None)
            if options or not isinstance(t, int | float) or not 0 < t < 1:
                raise ZooError(
                    f"{where}: postprocessing {target} {step}: the node applies only a "
                    "threshold in (0, 1) (no argmax, no one-hot)"
                )
            threshold = float(t)
        else:
            raise ZooError(f"{where}: postprocessing {target} is not applied by the node")
    return threshold
