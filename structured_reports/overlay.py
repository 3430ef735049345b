"""The picture a Grad-CAM Secondary Capture stores: the radiograph as a viewer shows it, a heatmap
blended over it, a colour legend and burned-in text. Pure pixels in, pixels out.

Layout (text scales with the image; nothing is drawn over the radiograph except the heatmap):

    +--------------------------------------------+--------+
    | banner: AI result - not for diagnostic use          |
    +--------------------------------------------+--------+
    | radiograph (grey) + the chosen Grad-CAM    | legend |
    | maps (maximum) as a jet heatmap where the  | 1 .. 0 |
    | map is strong                              |        |
    +--------------------------------------------+--------+
    | findings and probabilities; model; how to read it    |
    +-----------------------------------------------------+
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from structured_reports.equipment import disclaimer
from structured_reports.results import ImageResult, ModelIdentity

# The heatmap shows from MAP_LOW, is fully weighted from MAP_HIGH, and never hides the radiograph.
MAP_LOW, MAP_HIGH, MAX_ALPHA = 0.2, 0.6, 0.6
BANNER_RGB = (170, 0, 0)
TEXT_RGB = (255, 255, 255)

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
RGBArray = npt.NDArray[np.uint8]


@dataclass(frozen=True, kw_only=True, slots=True)
class OverlayLayout:
    """Where things are in the picture, in pixels: the radiograph occupies rows
    `top .. top + height - 1` and columns `0 .. width - 1`; the legend column follows it."""

    top: int
    height: int
    width: int
    canvas_width: int
    font_size: int
    pad: int
    banner: tuple[str, ...]


def overlay_layout(display_shape: tuple[int, int], model: ModelIdentity) -> OverlayLayout:
    """The geometry of the picture for a radiograph of `display_shape` (rows, columns)."""
    height, width = display_shape
    size = font_size(height, width)
    font = _font(size)
    pad = max(2, size // 2)
    canvas_width = width + round(font.getlength("1.0")) + size + 3 * pad  # + legend column
    banner = tuple(wrap([disclaimer(model)], font, canvas_width - 2 * pad))
    top = len(banner) * line_height(font) + 2 * pad
    return OverlayLayout(
        top=top,
        height=height,
        width=width,
        canvas_width=canvas_width,
        font_size=size,
        pad=pad,
        banner=banner,
    )


def render_overlay(
    image: ImageResult,
    model: ModelIdentity,
    *,
    lines: Sequence[str],
    heatmap_labels: Collection[str] | None = None,
) -> RGBArray:
    """The annotated RGB picture (uint8, rows x columns x 3): `lines` under the radiograph, the
    maps of `heatmap_labels` (every map of the image when None) blended over it."""
    layout = overlay_layout(image.display.shape, model)
    font = _font(layout.font_size)
    pad, top, height = layout.pad, layout.top, layout.height
    footer = wrap(list(lines), font, layout.canvas_width - 2 * pad)
    step = line_height(font)
    bottom = top + height
    canvas = Image.new("RGB", (layout.canvas_width, bottom + len(footer) * step + 2 * pad))
    canvas.paste(Image.fromarray(blend_heatmap(image, heatmap_labels)), (0, top))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((0, 0, layout.canvas_width, top - 1), fill=BANNER_RGB)
    _draw_lines(draw, font, list(layout.banner), (pad, pad), step)
    _draw_legend(canvas, draw, font, (layout.width, top, layout.font_size, height), pad)
    _draw_lines(draw, font, footer, (pad, bottom + pad), step)
    return np.asarray(canvas, dtype=np.uint8)


def blend_heatmap(image: ImageResult, labels: Collection[str] | None = None) -> RGBArray:
    """The grey radiograph with the maximum of the chosen maps alpha-blended as a jet heatmap.

    Only the pixels whose map value is above MAP_LOW are blended (elsewhere alpha is 0 and the
    pixel is the grey one exactly): the same image, at a fraction of the arithmetic."""
    out: RGBArray = np.repeat(image.display[..., None], 3, axis=2)
    cam = union_of_maps(image, labels)
    shown = cam > MAP_LOW
    if not shown.any():
        return out
    values = cam[shown]
    alpha = MAX_ALPHA * np.clip((values - MAP_LOW) / (MAP_HIGH - MAP_LOW), 0.0, 1.0)[..., None]
    grey = out[shown].astype(np.float32)
    blended = grey * (1.0 - alpha) + jet(values).astype(np.float32) * alpha
    out[shown] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def union_of_maps(
    image: ImageResult, labels: Collection[str] | None = None
) -> npt.NDArray[np.float32]:
    """Pixel-wise maximum of the maps of `labels` (all maps when None), in [0, 1]; zeros when
    there is none."""
    maps = [cam for label, cam in image.maps.items() if labels is None or label in labels]
    if not maps:
        return np.zeros(image.display.shape, dtype=np.float32)
    stacked = np.stack([np.asarray(cam, dtype=np.float32) for cam in maps])
    cam: npt.NDArray[np.float32] = np.clip(np.nan_to_num(stacked.max(axis=0)), 0.0, 1.0)
    return cam


def jet(values: npt.NDArray[np.float32]) -> RGBArray:
    """The 'jet' colour map (blue at 0, green at 0.5, red at 1) of values in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # red, green, blue
    rgb = np.clip(1.5 - np.abs(4.0 * v - 4.0 * centres), 0.0, 1.0)
    out: RGBArray = np.rint(rgb * 255.0).astype(np.uint8)
    return out


def font_size(height: int, width: int) -> int:
    """Text height in pixels: about 1/40 of the image's longer side, at least 10.

    Pillow's built-in font (`load_default(size=...)`, Pillow >= 10.1) needs no font files.
    """
    return max(10, round(max(height, width) / 40))


def line_height(font: Font) -> int:
    _, top, _, bottom = font.getbbox("Ag")
    return int(bottom) + max(2, round((bottom - top) / 4))


def wrap(lines: list[str], font: Font, max_width: int) -> list[str]:
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


def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


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
        y = top + pad + round(fraction * (bar_height - line_height(font)))
        draw.text((text_x, y), value, fill=TEXT_RGB, font=font)


def _draw_lines(
    draw: ImageDraw.ImageDraw,
    font: Font,
    lines: list[str],
    origin: tuple[int, int],
    step: int,
) -> None:
    x, y = origin
    for number, line in enumerate(lines):
        draw.text((x, y + number * step), line, fill=TEXT_RGB, font=font)
