"""The Grad-CAM explanation of one radiograph as an RGB Secondary Capture, annotations burned in.

Layout (text scales with the image; nothing is drawn over the radiograph except the heatmap):

    +--------------------------------------------+--------+
    | banner: AI result - not for diagnostic use          |
    +--------------------------------------------+--------+
    | radiograph (grey) + union of the Grad-CAM  | legend |
    | maps as a jet heatmap where the map is     | 1 .. 0 |
    | strong                                     |        |
    +--------------------------------------------+--------+
    | findings above threshold with probabilities; model   |
    +-----------------------------------------------------+
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from structured_reports.equipment import (
    apply_general_equipment,
    contributing_equipment,
    disclaimer,
)
from structured_reports.results import ImageResult, ModelIdentity, derive_uid

SERIES_DESCRIPTION = "AI Grad-CAM (not for diagnostic use)"
NO_FINDING_TEXT = "No finding above threshold"
# The heatmap shows from MAP_LOW, is fully weighted from MAP_HIGH, and never hides the radiograph.
MAP_LOW, MAP_HIGH, MAX_ALPHA = 0.2, 0.6, 0.6
BANNER_RGB = (170, 0, 0)
TEXT_RGB = (255, 255, 255)
_ORIENTATIONS = frozenset("APRLHF")

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
RGBArray = npt.NDArray[np.uint8]


def build_gradcam_sc(
    image: ImageResult,
    model: ModelIdentity,
    *,
    series_number: int = 9902,
    instance_number: int = 1,
) -> Dataset:
    """Encode the Grad-CAM overlay of `image` as a Secondary Capture of the source's study.

    Patient and study attributes are copied by highdicom from the source header.
    """
    source = image.source
    orientation = _patient_orientation(source)
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=render_overlay(image, model),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=sc_series_uid(image, model),
        series_number=series_number,
        sop_instance_uid=sc_instance_uid(image, model),
        instance_number=instance_number,
        manufacturer=model.manufacturer,
        # highdicom wants an orientation for the PATIENT coordinate system; see below if unknown
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(model)],
    )
    if orientation is None:  # Type 2C: present but empty when the source does not say
        del sc.PatientOrientation
        sc.add_new("PatientOrientation", "CS", None)
    # A chest is not paired: with the body part stated, Laterality (Type 2C) is rightly absent.
    sc.BodyPartExamined = image.source.get("BodyPartExamined") or "CHEST"
    _describe_derivation(sc, image, model)
    apply_general_equipment(sc, model)
    return sc


def sc_series_uid(image: ImageResult, model: ModelIdentity) -> str:
    """One Grad-CAM series per study and model version."""
    return derive_uid("sc-series", str(image.source.StudyInstanceUID), model.device_uid)


def sc_instance_uid(image: ImageResult, model: ModelIdentity) -> str:
    """Changes with the source image, the model version and anything drawn."""
    return derive_uid("sc", image.sop_instance_uid, model.device_uid, overlay_digest(image))


def overlay_digest(image: ImageResult) -> str:
    """SHA-256 of the inputs of the rendering: findings, display pixels and (quantised) maps."""
    digest = hashlib.sha256()
    for finding in image.findings:
        digest.update(f"{finding.label}|{finding.probability:.6f}|{finding.threshold:g};".encode())
    digest.update(repr(image.display.shape).encode())
    digest.update(image.display.tobytes())
    for label in sorted(image.maps):
        digest.update(label.encode())
        digest.update(_quantise(image.maps[label]).tobytes())
    return digest.hexdigest()


def render_overlay(image: ImageResult, model: ModelIdentity) -> RGBArray:
    """The annotated RGB picture (uint8, rows x columns x 3) that the SC stores."""
    height, width = image.display.shape
    size = font_size(height, width)
    font = ImageFont.load_default(size=size)
    pad = max(2, size // 2)
    canvas_width = width + round(font.getlength("1.0")) + size + 3 * pad  # + legend column
    banner = _wrap([disclaimer(model)], font, canvas_width - 2 * pad)
    footer = _wrap(annotation_lines(image, model), font, canvas_width - 2 * pad)
    line_height = _line_height(font)
    top = len(banner) * line_height + 2 * pad
    bottom = top + height
    canvas = Image.new("RGB", (canvas_width, bottom + len(footer) * line_height + 2 * pad))
    canvas.paste(Image.fromarray(blend_heatmap(image)), (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, canvas_width, top - 1), fill=BANNER_RGB)
    _draw_lines(draw, font, banner, (pad, pad), line_height)
    _draw_legend(canvas, draw, font, (width, top, size, height), pad)
    _draw_lines(draw, font, footer, (pad, bottom + pad), line_height)
    return np.asarray(canvas, dtype=np.uint8)


def blend_heatmap(image: ImageResult) -> RGBArray:
    """The grey radiograph with the union (maximum) of its maps alpha-blended as a jet heatmap."""
    grey = np.repeat(image.display[..., None].astype(np.float32), 3, axis=2)
    cam = union_of_maps(image)
    alpha = MAX_ALPHA * np.clip((cam - MAP_LOW) / (MAP_HIGH - MAP_LOW), 0.0, 1.0)[..., None]
    blended = grey * (1.0 - alpha) + jet(cam).astype(np.float32) * alpha
    out: RGBArray = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def union_of_maps(image: ImageResult) -> npt.NDArray[np.float32]:
    """Pixel-wise maximum of all maps of the image, in [0, 1]; zeros when it has none."""
    if not image.maps:
        return np.zeros(image.display.shape, dtype=np.float32)
    stacked = np.stack([np.asarray(cam, dtype=np.float32) for cam in image.maps.values()])
    cam: npt.NDArray[np.float32] = np.clip(np.nan_to_num(stacked.max(axis=0)), 0.0, 1.0)
    return cam


def jet(values: npt.NDArray[np.float32]) -> RGBArray:
    """The 'jet' colour map (blue at 0, green at 0.5, red at 1) of values in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # red, green, blue
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)
    out: RGBArray = np.rint(rgb * 255.0).astype(np.uint8)
    return out


def _quantise(cam: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    out: npt.NDArray[np.uint8] = np.rint(np.clip(np.nan_to_num(cam), 0.0, 1.0) * 255.0).astype(
        np.uint8
    )
    return out


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    values = [str(v) for v in (source.get("PatientOrientation") or [])]
    if len(values) == 2 and all(v in _ORIENTATIONS for v in values):
        return values[0], values[1]
    return None


def _describe_derivation(sc: Dataset, image: ImageResult, model: ModelIdentity) -> None:
    """The attributes that say what this picture is and where it came from."""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.DerivationDescription = (
        f"Grad-CAM heatmap of {model.label} blended over the radiograph; findings, model and "
        f"'{disclaimer(model)}' burned in"
    )
    sc.ImageComments = disclaimer(model)
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.source.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.sop_instance_uid
    sc.SourceImageSequence = [reference]


def annotation_lines(image: ImageResult, model: ModelIdentity) -> list[str]:
    """The text under the picture: present findings by probability (or none), model, legend."""
    present = sorted(image.present, key=lambda f: (-f.probability, f.label))
    if present:
        findings = ", ".join(f"{f.label.replace('_', ' ')} {f.probability:.2f}" for f in present)
        first = f"Findings above threshold: {findings}"
    else:
        first = NO_FINDING_TEXT
    heatmap = f"Heatmap: Grad-CAM, shown from {MAP_LOW:g} (0 = blue, 1 = red)"
    return [first, f"Model: {model.label}", heatmap]


def font_size(height: int, width: int) -> int:
    """Text height in pixels: about 1/40 of the image's longer side, at least 10.

    Pillow's built-in font (`load_default(size=...)`, Pillow >= 10.1) needs no font files.
    """
    return max(10, round(max(height, width) / 40))


def _line_height(font: Font) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return int(bottom) + max(2, round((bottom - top) / 4))


def _draw_legend(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    font: Font,
    box: tuple[int, int, int, int],
    pad: int,
) -> None:
    """A vertical colour bar from 1 (top) to 0 (bottom) with its values.

    `box` is (left, top, bar width, height) of the legend column.
    """
    left, top, bar_width, height = box
    bar_height = max(2, height - 2 * pad)
    ramp = np.linspace(1.0, 0.0, bar_height, dtype=np.float32)[:, None]
    bar = jet(np.repeat(ramp, bar_width, axis=1))
    canvas.paste(Image.fromarray(bar), (left + pad, top + pad))
    text_x = left + 2 * pad + bar_width
    for value, fraction in (("1.0", 0.0), ("0.5", 0.5), ("0.0", 1.0)):
        y = top + pad + round(fraction * (bar_height - _line_height(font)))
        draw.text((text_x, y), value, fill=TEXT_RGB, font=font)


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    font: Font,
    lines: list[str],
    origin: tuple[int, int],
    line_height: int,
) -> None:
    x, y = origin
    for number, line in enumerate(lines):
        draw.text((x, y + number * line_height), line, fill=TEXT_RGB, font=font)


def _wrap(lines: list[str], font: Font, max_width: int) -> list[str]:
    """Greedy word wrap of each line to `max_width` pixels."""
    wrapped: list[str] = []
    for line in lines:
        current = ""
        for word in line.split(" "):
            candidate = f"{current} {word}".strip()
            if current and font.getlength(candidate) > max_width:
                wrapped.append(current)
                current = word
            else:
                current = candidate
        wrapped.append(current)
    return wrapped
