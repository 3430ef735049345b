"""Grad-CAM maps of requested findings (at a network's last feature maps), back on the display."""

from __future__ import annotations

import copy
import functools
import threading
import weakref
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from monai.visualize.class_activation_maps import GradCAM

from dicom_node.domain import Letterbox
from dicom_node.model.infer import Classifier
from dicom_node.model.preprocess import resize

TARGET_LAYER = "class_layers.relu"
Map = npt.NDArray[np.float32]


class _Head(torch.nn.Module):
    """A network's head alone (`networks.split`), so Grad-CAM starts from precomputed feature
    maps. Its gradients and activations at the target layer equal those of the whole network,
    so the maps are the same while each class costs only a pass through the head."""

    def __init__(self, class_layers: torch.nn.Module) -> None:
        super().__init__()
        self.class_layers = class_layers

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.class_layers(features)
        return out


class _Explainer:
    """A GradCAM over a private copy of the head: hooks never touch the inference network."""

    def __init__(self, classifier: Classifier) -> None:
        layers = classifier.parts.head
        if not isinstance(getattr(layers, "relu", None), torch.nn.ReLU):
            raise TypeError("Grad-CAM of this head needs a ReLU at its start (DenseNet layout)")
        head = _Head(copy.deepcopy(layers)).float().eval()
        head.requires_grad_(False)  # gradients flow to the features only
        # MONAI sets the hooked ReLU to inplace=False itself (full backward hooks need that).
        # Its default postprocessing (default_normalizer) maps the maximum to 0 and moves the
        # maps to the CPU on every call: we keep raw maps and normalise() them on the device.
        self.cam = GradCAM(nn_module=head, target_layers=TARGET_LAYER, postprocessing=_identity)
        self.lock = threading.Lock()  # the hooks keep per-call state


_EXPLAINERS: weakref.WeakKeyDictionary[Classifier, _Explainer] = weakref.WeakKeyDictionary()
_EXPLAINERS_LOCK = threading.Lock()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _explainer(classifier: Classifier) -> _Explainer:
    with _EXPLAINERS_LOCK:
        found = _EXPLAINERS.get(classifier)
        if found is None:
            found = _EXPLAINERS[classifier] = _Explainer(classifier)
        return found


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map of (N, 1, H, W) to [0, 1] (min to 0, max to 1); a flat map becomes 0."""
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = (hi - lo).clamp_min(1e-12)
    scaled = (flat - lo[:, None]) / span[:, None]
    scaled = torch.where((hi - lo)[:, None] > 1e-12, scaled, torch.zeros_like(scaled))
    return scaled.view_as(maps)


def gradcam(
    classifier: Classifier, batch: torch.Tensor, class_indices: Sequence[Sequence[int]]
) -> list[dict[int, Map]]:
    """Grad-CAM maps for the requested classes of each image, at model input size, in [0, 1].

    `class_indices[i]` lists the label indices wanted for image i; the answer's i-th dict maps
    each of them to a (S, S) float32 map. The features are computed once for the batch.
    """
    _check_request(classifier, batch.shape[0], class_indices)
    if not any(class_indices):
        return [{} for _ in class_indices]
    with torch.inference_mode(False):  # callers may sit in inference mode; autograd is needed
        features = classifier.features(batch.clone())
    return maps_from_features(classifier, features, class_indices, size=batch.shape[-1])


def _check_request(classifier: Classifier, n: int, class_indices: Sequence[Sequence[int]]) -> None:
    n_labels = len(classifier.labels)
    if len(class_indices) != n:
        raise ValueError(f"{len(class_indices)} lists of class indices for {n} images")
    wanted = sorted({int(c) for indices in class_indices for c in indices})
    if any(not 0 <= c < n_labels for c in wanted):
        raise ValueError(f"class indices must lie in [0, {n_labels}), got {wanted}")


def maps_from_features(
    classifier: Classifier,
    features: torch.Tensor,
    class_indices: Sequence[Sequence[int]],
    *,
    size: int,
) -> list[dict[int, Map]]:
    """Grad-CAM maps (S, S) of the requested classes from the final feature maps (N, K, h, w).

    A head of global average pooling and one linear layer (every network `networks.split`
    allows: after a ReLU in DenseNets) makes Grad-CAM the class activation map,
    ReLU(W_c . A) with A the head's input (ReLU'd for a DenseNet): all classes of the batch in
    one product on the device. Other heads go through MONAI GradCAM, one class at a time.
    """
    _check_request(classifier, features.shape[0], class_indices)
    pairs = [(i, int(c)) for i, indices in enumerate(class_indices) for c in indices]
    result: list[dict[int, Map]] = [{} for _ in class_indices]
    if not pairs:
        return result
    linear = _linear_head_weight(classifier.parts.head)
    if linear is None:
        raw = _gradcam_maps(_explainer(classifier), features, pairs)
    else:
        weight, relu_first = linear
        with torch.no_grad():
            acts = torch.relu(features.float()) if relu_first else features.float()
            cams = torch.relu(torch.einsum("ck,nkhw->nchw", weight.float(), acts))
            rows, cols = zip(*pairs, strict=True)
            raw = cams[list(rows), list(cols)][:, None]
    maps = upsample_maps(raw, size, _cell_grid_of(classifier))
    for (i, c), m in zip(pairs, maps, strict=True):
        result[i][c] = m
    return result


def _linear_head_weight(head: torch.nn.Module) -> tuple[torch.Tensor, bool] | None:
    """The class weights (labels, K), and whether a ReLU comes first, when the head is
    [ReLU], global average pooling, flatten, [dropout], linear; else None."""
    layers = list(head.children())
    relu_first = bool(layers) and isinstance(layers[0], torch.nn.ReLU)
    rest = layers[1:] if relu_first else layers
    rest = [m for m in rest if not isinstance(m, torch.nn.Dropout)]  # identity in eval mode
    if len(rest) != 3:
        return None
    pool, flat, out = rest
    simple = (
        isinstance(pool, torch.nn.AdaptiveAvgPool2d)
        and pool.output_size in (1, (1, 1))
        and isinstance(flat, torch.nn.Flatten)
        and isinstance(out, torch.nn.Linear)
    )
    return (
        (out.weight.detach(), relu_first) if simple and isinstance(out, torch.nn.Linear) else None
    )


def _gradcam_maps(
    explainer: _Explainer, features: torch.Tensor, pairs: list[tuple[int, int]]
) -> torch.Tensor:
    """MONAI GradCAM through the head, class by class: (pairs, 1, h, w)."""
    out = torch.zeros(len(pairs), 1, *features.shape[2:], device=features.device)
    with torch.inference_mode(False):
        for cls in sorted({c for _, c in pairs}):
            slots = [k for k, (_, c) in enumerate(pairs) if c == cls]
            x = features[[pairs[k][0] for k in slots]].detach().float().clone()
            with explainer.lock, torch.enable_grad():
                raw = explainer.cam(x.requires_grad_(True), class_idx=cls)
            out[slots] = raw.detach().to(out.dtype)
    return out


class CellGrid(NamedTuple):
    """Where the final feature map's cells sit on the input: cell i's receptive field is centred
    on input pixel stride * i + offset (pixel centres at integers)."""

    stride: int
    offset: float


def cell_grid(network: torch.nn.Module) -> CellGrid | None:
    """The cell grid of a network's `features` (convolutions and pools in order), or None.

    `features` must be one chain of layers, as in MONAI's DenseNets (the dense layers' 3x3 and
    1x1 convolutions keep the grid); parallel branches with strides would be counted twice.

    A layer of kernel k, stride s and padding p centres output cell o on its input at
    s * o + (k - 1) / 2 - p. For MONAI's DenseNets this puts the cells 1.5 input pixels up and
    left of where a plain resize of the map would draw them (the stem's padding and the 2x2
    average pools of the transitions), at every depth.
    """
    features = getattr(network, "features", None)
    if not isinstance(features, torch.nn.Module):
        return None
    stride, offset = 1, 0.0
    for layer in features.modules():
        if isinstance(layer, torch.nn.Conv2d | torch.nn.MaxPool2d | torch.nn.AvgPool2d):
            k, s, p = (
                _first(getattr(layer, name)) for name in ("kernel_size", "stride", "padding")
            )
            offset += stride * ((k - 1) / 2 - p)
            stride *= s
    return CellGrid(stride, offset)


_CELL_GRIDS: weakref.WeakKeyDictionary[Classifier, CellGrid | None] = weakref.WeakKeyDictionary()


def _cell_grid_of(classifier: Classifier) -> CellGrid | None:
    """cell_grid of the classifier's network, worked out once per classifier (the walk over a
    DenseNet121's modules would otherwise cost every batch about half a millisecond)."""
    if classifier not in _CELL_GRIDS:
        _CELL_GRIDS[classifier] = cell_grid(classifier.network)
    return _CELL_GRIDS[classifier]


def _first(value: int | tuple[int, ...] | str) -> int:
    if isinstance(value, str):
        raise TypeError(f"unsupported padding {value!r} in the feature extractor")
    return int(value[0] if isinstance(value, tuple) else value)


def upsample_maps(raw: torch.Tensor, size: int, grid: CellGrid | None) -> list[Map]:
    """(P, 1, h, w) maps resampled to the (size, size) input, normalised, as float32 arrays.

    Bicubic, so a peak between two cells lands between them instead of on the nearer cell's
    centre (bilinear interpolation cannot place a maximum anywhere else); each cell is put at its
    receptive field's centre when the grid is known. The negative undershoot of bicubic
    interpolation is cut off (the CAM is a ReLU).
    """
    raw = raw.float()
    if grid is None:
        up = torch.nn.functional.interpolate(
            raw, size=(size, size), mode="bicubic", align_corners=False
        )
    else:
        up = torch.nn.functional.grid_sample(
            raw,
            _sampling_grid(raw.shape[-2:], size, grid, raw.device).expand(len(raw), -1, -1, -1),
            mode="bicubic",
            padding_mode="border",
            align_corners=True,
        )
    maps: Map = normalise(up.clamp_min(0.0))[:, 0].cpu().numpy().astype(np.float32, copy=False)
    return list(maps)


@functools.lru_cache(maxsize=16)
def _sampling_grid(
    cells: torch.Size, size: int, grid: CellGrid, device: torch.device
) -> torch.Tensor:
    """grid_sample coordinates (1, size, size, 2) of every input pixel in a map of `cells`:
    with align_corners=True, -1 and +1 are the centres of the first and last cells. Cached:
    one bundle needs one grid per device; callers only read it."""
    pixel = torch.arange(size, dtype=torch.float32, device=device)
    axes = []
    for n in (cells[1], cells[0]):  # x first: grid_sample's last dimension is (x, y)
        index = (pixel - grid.offset) / grid.stride  # fractional cell index of each pixel
        axes.append(2.0 * index / max(n - 1, 1) - 1.0)
    gx, gy = axes
    return torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]


def map_to_display(cam: Map, letterbox: Letterbox, display_shape: tuple[int, int]) -> Map:
    """Undo the letterbox: crop the padding, resize to the display image's shape, keep [0, 1]."""
    if cam.shape != (letterbox.size, letterbox.size):
        raise ValueError(f"map of shape {cam.shape}, letterbox of size {letterbox.size}")
    if letterbox.transposed:
        cam = cam.T
    top, left = letterbox.pad_top, letterbox.pad_left
    crop = cam[top : top + letterbox.height, left : left + letterbox.width]
    shown = resize(crop, (int(display_shape[0]), int(display_shape[1])))
    return np.clip(shown, 0.0, 1.0).astype(np.float32)
