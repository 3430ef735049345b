"""ROC curves of every label in one PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from dicom_node.training.classification_metrics import Floats

WIDTH, HEIGHT = 1000, 700
PLOT = (70, 50, 620, 600)  # left, top, right, bottom of the unit square
COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
)  # fmt: skip

Curve = tuple[Floats, Floats]


def _xy(fpr: float, tpr: float) -> tuple[float, float]:
    left, top, right, bottom = PLOT
    return left + fpr * (right - left), bottom - tpr * (bottom - top)


def _axes(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> None:
    left, top, right, bottom = PLOT
    for k in range(6):
        v = k / 5
        x, y = _xy(v, v)
        draw.line([(x, top), (x, bottom)], fill="#e0e0e0")
        draw.line([(left, y), (right, y)], fill="#e0e0e0")
        draw.text((x, bottom + 8), f"{v:.1f}", fill="black", font=font, anchor="mt")
        draw.text((left - 8, y), f"{v:.1f}", fill="black", font=font, anchor="rm")
    for k in range(0, 40, 2):  # dashed chance line
        draw.line([_xy(k / 40, k / 40), _xy((k + 1) / 40, (k + 1) / 40)], fill="#999999")
    draw.rectangle(PLOT, outline="black")
    centre = (left + right) / 2
    draw.text((centre, bottom + 30), "1 - specificity", fill="black", font=font, anchor="mt")
    draw.text((left, top - 8), "sensitivity", fill="black", font=font, anchor="ls")


def draw_roc(
    curves: Mapping[str, Curve],
    aurocs: Mapping[str, float],
    *,
    title: str,
    operating_points: Mapping[str, tuple[float, float]] | None = None,
) -> Image.Image:
    """One panel: a curve per label (legend with AUROC), dots at the bundle's thresholds."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=14)
    _axes(draw, font)
    draw.text((WIDTH / 2, 15), title, fill="black", font=font, anchor="mt")
    for k, (label, (fpr, tpr)) in enumerate(curves.items()):
        colour = COLOURS[k % len(COLOURS)]
        points = [_xy(float(f), float(t)) for f, t in zip(fpr, tpr, strict=True)]
        draw.line(points, fill=colour, width=2)
        point = (operating_points or {}).get(label)
        if point is not None and not any(math.isnan(v) for v in point):
            x, y = _xy(*point)
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour, outline="black")
        auc = aurocs.get(label, math.nan)
        text = f"{label}  {'n/a' if math.isnan(auc) else f'{auc:.3f}'}"
        y = PLOT[1] + 10 + 22 * k
        draw.line([(650, y + 7), (680, y + 7)], fill=colour, width=3)
        draw.text((690, y), text, fill="black", font=font)
    return image


def write_roc_png(
    path: Path,
    curves: Mapping[str, Curve],
    aurocs: Mapping[str, float],
    *,
    title: str,
    operating_points: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Draw the ROC panel and save it as PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_roc(curves, aurocs, title=title, operating_points=operating_points).save(path)
    return path
