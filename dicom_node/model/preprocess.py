"""One preprocessing path for training and inference: stored pixels -> display -> model input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID

from dicom_node.domain import Letterbox
from dicom_node.errors import PreprocessError
from dicom_node.model import gdcm12, zoo_transforms

gdcm12.register()  # 12-bit JPEG Extended without the GPL decoder

Image32 = npt.NDArray[np.float32]
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True, kw_only=True, slots=True)
class InputSpec:
    """The model input a bundle expects: square side, channels, intensity normalisation (one
    mean and std for every channel, or one per channel, as ImageNet-trained networks have); or
    the bundle's own preprocessing (`pipeline`), which then decides everything after rendering."""

    size: int
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]
    channels: int = 1
    pipeline: zoo_transforms.Pipeline | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != self.channels:
                raise ValueError(f"{len(value)} {name} values for {self.channels} channels")
        if min(per_channel(self.std, self.channels)) <= 0:
            raise ValueError(f"std must be positive, not {self.std}")

    def scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std as (C, 1, 1) tensors: x_model = (x_display - mean) / std."""
        return (
            torch.tensor(per_channel(self.mean, self.channels)).view(-1, 1, 1),
            torch.tensor(per_channel(self.std, self.channels)).view(-1, 1, 1),
        )


def per_channel(value: float | tuple[float, ...], channels: int) -> tuple[float, ...]:
    """One value per channel (a single value repeated)."""
    return tuple(value) if isinstance(value, tuple) else (float(value),) * channels


# ---- DICOM to display ---------------------------------------------------------------------


def _check_supported(ds: Dataset) -> None:
    if "PixelData" not in ds:
        kind = "Float Pixel Data" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else ""
        raise PreprocessError(f"unsupported {kind}" if kind else "no Pixel Data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if int(ds.get("SamplesPerPixel", 1)) != 1 or photometric not in _MONOCHROME:
        raise PreprocessError(
            f"colour image ({photometric or 'unknown photometric'}) not supported"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise PreprocessError(f"multi-frame image ({frames} frames) not supported")


def _decode(ds: Dataset) -> npt.NDArray[Any]:
    try:
        arr: npt.NDArray[Any] = ds.pixel_array
    except Exception as exc:  # decoders raise many types; the reason travels on
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = UID(str(syntax)).name if syntax else "unknown transfer syntax"
        raise PreprocessError(f"cannot decode Pixel Data ({name}): {exc}") from exc
    if arr.ndim != 2:
        raise PreprocessError(f"unexpected pixel array shape {arr.shape}")
    return arr


def modality_range(ds: Dataset) -> tuple[float, float]:
    """Output range of the Modality LUT stage (PS3.3 C.11.1) for all storable values.

    A Modality LUT Sequence gives 0 .. 2^n - 1 (n from its LUT Descriptor); otherwise the range
    of BitsStored-bit values (signed per PixelRepresentation) through Rescale Slope/Intercept.
    """
    if ds.get("ModalityLUTSequence"):
        bits = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    bits = int(ds.BitsStored)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _has_voi_lut(ds: Dataset) -> bool:
    seq = ds.get("VOILUTSequence")
    return bool(seq) and None not in (seq[0].get("LUTDescriptor"), seq[0].get("LUTData"))


def _apply_voi(values: npt.NDArray[Any], ds: Dataset) -> tuple[npt.NDArray[Any], float, float]:
    """The first VOI LUT or window (PS3.3 C.11.2) and its output range; else the stored range."""
    if _has_voi_lut(ds):
        if not np.issubdtype(values.dtype, np.integer):  # a LUT indexes integers
            values = np.rint(values).astype(np.int64)
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return apply_voi_lut(values, ds, index=0), 0.0, float(2**bits - 1)
    lo, hi = modality_range(ds)
    if ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        try:
            return apply_voi_lut(values, ds, index=0), lo, hi
        except (ValueError, IndexError, TypeError) as exc:
            raise PreprocessError(f"invalid window (0028,1050)/(0028,1051): {exc}") from exc
    return values, lo, hi


def _first(value: Any) -> Any:
    """The first of a multi-valued element, or the value itself."""
    return value[0] if isinstance(value, MultiValue | list | tuple) else value


def _linear_window(ds: Dataset) -> tuple[float, float] | None:
    """The first window's (centre, width) where the common case holds: rescale (no Modality LUT
    Sequence), no VOI LUT Sequence, a LINEAR window (PS3.3 C.11.2.1.2.1) of width above 1."""
    if ds.get("ModalityLUTSequence") or _has_voi_lut(ds):
        return None
    if str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper() != "LINEAR":
        return None
    centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if centre in (None, "") or width in (None, ""):
        return None
    try:
        c, w = float(_first(centre)), float(_first(width))
    except (TypeError, ValueError, IndexError):
        return None  # the general path reports it
    return (c, w) if w > 1 else None


def _render_linear(stored: npt.NDArray[Any], ds: Dataset, centre: float, width: float) -> Image32:
    """Rescale and LINEAR window in one float32 pass, to [0, 1]: the general path's result
    (pydicom's modality LUT and windowing in float64) without its five full-size passes."""
    slope, intercept = 1.0, 0.0
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:  # as pydicom's modality LUT
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    # y = ((slope * x + intercept) - (c - 0.5)) / (w - 1) + 0.5, as a * x + b
    a = np.float32(slope / (width - 1))
    b = np.float32((intercept - (centre - 0.5)) / (width - 1) + 0.5)
    image = stored.astype(np.float32)
    image *= a
    image += b
    out: Image32 = np.clip(image, 0.0, 1.0, out=image)
    return out


def render_for_display(ds: Dataset) -> Image32:
    """The radiograph as a viewer shows it: HxW float32 in [0, 1], dense (bone) bright.

    Stored values pass the Modality LUT (or rescale), then the first VOI LUT or window; without
    either, the whole range storable in BitsStored is shown. Then, as DCMTK renders it, the
    Presentation LUT Shape decides the polarity where it is stated (INVERSE inverts, IDENTITY
    does not, even for MONOCHROME1: PS3.3 C.11.6.1.2); where it is not, MONOCHROME1 is inverted.
    Raises PreprocessError for colour, multi-frame, missing or undecodable pixel data.
    """
    _check_supported(ds)
    stored = _decode(ds)
    window = _linear_window(ds)
    if window is not None:
        image = _render_linear(stored, ds, *window)
    else:
        shown, lo, hi = _apply_voi(apply_modality_lut(stored, ds), ds)
        image = np.clip((np.asarray(shown, np.float64) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if inverted(ds):
        image = 1.0 - image
    return image.astype(np.float32)


def inverted(ds: Dataset) -> bool:
    """Whether the VOI output is shown inverted: by the Presentation LUT Shape where stated,
    else for MONOCHROME1."""
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if shape in ("INVERSE", "IDENTITY"):
        return shape == "INVERSE"
    return str(ds.PhotometricInterpretation) == "MONOCHROME1"


# ---- resizing -------------------------------------------------------------------------------


def resize(image: npt.NDArray[np.floating[Any]], shape: tuple[int, int]) -> Image32:
    """Bilinear resize of a 2-D image, antialiased when shrinking."""
    if image.shape == shape:
        return np.asarray(image, np.float32)
    t = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    out = torch.nn.functional.interpolate(
        t, size=shape, mode="bilinear", align_corners=False, antialias=True
    )
    result: Image32 = out[0, 0].numpy()
    return result


def display_uint8(image: Image32, max_side: int = 1024) -> npt.NDArray[np.uint8]:
    """The display image as uint8, shrunk (aspect kept) so its longer side is at most max_side."""
    h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = resize(image, shape)
    out: npt.NDArray[np.uint8] = np.rint(np.clip(small, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


def to_model_input(
    image: Image32,
    *,
    size: int,
    mean: float | tuple[float, ...],
    std: float | tuple[float, ...],
    channels: int = 1,
) -> tuple[torch.Tensor, Letterbox]:
    """Letterbox a display image into a normalised (channels, size, size) float32 tensor.

    The image is resized (aspect kept, antialiased) so its longer side is `size`, centred on a
    black (0) canvas, copied into each channel and normalised as (x - mean) / std (per channel
    where mean and std are given per channel). No flips.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    spec = InputSpec(size=size, mean=mean, std=std, channels=channels)
    h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    box = Letterbox.centred(size=size, height=nh, width=nw, scale=scale)
    canvas = np.zeros((size, size), np.float32)
    canvas[box.pad_top : box.pad_top + nh, box.pad_left : box.pad_left + nw] = resize(
        image, (nh, nw)
    )
    if not isinstance(mean, tuple) and not isinstance(std, tuple):
        tensor = (torch.from_numpy(canvas) - mean) / std
        return tensor.unsqueeze(0).expand(channels, size, size).contiguous(), box
    m, s = spec.scale()
    return ((torch.from_numpy(canvas)[None] - m) / s).contiguous(), box


# ---- image files (public data sets) ------------------------------------------------------------


def load_image_file(path: Path) -> Image32:
    """A PNG or JPEG radiograph as float32 HxW in [0, 1] (8- or 16-bit grey; colour made grey)."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, np.float64) / 65535.0
            elif img.mode == "F":
                arr = np.asarray(img, np.float64)
            else:
                arr = np.asarray(img.convert("L"), np.float64) / 255.0
    except OSError as exc:
        raise PreprocessError(f"cannot read image file {path}: {exc}") from exc
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def read_display(path: Path) -> Image32:
    """Any supported radiograph file as displayed: PNG/JPEG by suffix, otherwise DICOM."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return load_image_file(path)
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError) as exc:
        raise PreprocessError(f"cannot read DICOM file {path}: {exc}") from exc
    return render_for_display(ds)


def prepare(image: Image32, spec: InputSpec) -> tuple[torch.Tensor, Letterbox]:
    """The one path from a display image to the model input, for training and inference."""
    if spec.pipeline is not None:
        return zoo_transforms.apply(spec.pipeline, image)
    return to_model_input(
        image, size=spec.size, mean=spec.mean, std=spec.std, channels=spec.channels
    )
