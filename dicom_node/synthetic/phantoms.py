"""Synthetic chest radiograph phantoms with known findings (DICOM encoding: phantom_dicom)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw

from dicom_node.synthetic.phantom_dicom import (
    MANUFACTURER,
    phantom_dataset,
    stored_values,
    write_study,
)

__all__ = [
    "LABELS",
    "MANUFACTURER",
    "Phantom",
    "blur",
    "make_phantom",
    "phantom_dataset",
    "random_findings",
    "stored_values",
    "write_study",
]

Image32 = npt.NDArray[np.float32]
Array = npt.NDArray[np.floating[Any]]  # working fields (float32 in practice)
Box = tuple[int, int, int, int]

LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
_SIDES = (-1, 1)  # -1: patient's right lung (image left on a PA view), +1: patient's left
SOFT_TISSUE = 0.55  # density of the abdomen under the diaphragm, and of pleural fluid


@dataclass
class Phantom:
    """A synthetic radiograph as displayed (dense = bright, in [0, 1]) and its findings' boxes."""

    image: Image32
    findings: dict[str, Box] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Anatomy:
    """Geometry of one phantom in normalised coordinates (u across, v down, both in [0, 1])."""

    lung_u: float = 0.185  # distance of each lung centre from the midline
    lung_half_width: float = 0.165
    lung_top: float = 0.11
    dome: tuple[float, float] = (0.72, 0.74)  # diaphragm level (v) under the right and left lung
    dome_depth: float = 0.05
    heart_u: float = 0.535
    heart_half_width: float = 0.14
    heart_half_height: float = 0.11
    lung_density: float = 0.17
    marking_gain: float = 1.0
    gastric_bubble: bool = False


class _Canvas:
    """Normalised coordinate grids, the anatomy, and the additive density layer being painted."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], anatomy: _Anatomy) -> None:
        self.rng = rng
        self.height, self.width = size
        shift = rng.uniform(-0.02, 0.02, 2)  # patient positioning
        v, u = np.meshgrid(
            (np.arange(self.height, dtype=np.float32) + 0.5) / self.height - np.float32(shift[0]),
            (np.arange(self.width, dtype=np.float32) + 0.5) / self.width - np.float32(shift[1]),
            indexing="ij",
        )
        self.u, self.v = u, v
        self.anatomy = anatomy
        # Pixel sizes are set for a 256-pixel phantom and scale with it, so a phantom looks the
        # same at any resolution once resized to the model input.
        self.scale = min(size) / 256
        self.eps = max(1.5 / 256, 1.0 / min(size))  # softness of edges
        self.lungs = {side: self._lung(side) for side in _SIDES}
        self.layer: Array = np.zeros(size, np.float32)
        self.no_markings: Array = np.zeros(size, np.float32)

    def soft(self, signed: Array, eps: float | None = None) -> Array:
        """1 inside (signed < 0), 0 outside, with a smooth edge."""
        e = self.eps if eps is None else eps
        out: Array = (0.5 * (1.0 - np.tanh(signed / (2.0 * e)))).astype(np.float32)
        return out

    def ellipse(
        self, cu: float, cv: float, au: float, av: float, eps: float | None = None
    ) -> Array:
        r = np.sqrt(((self.u - cu) / au) ** 2 + ((self.v - cv) / av) ** 2)
        return self.soft((r - 1.0) * min(au, av), eps)

    def dome_v(self, side: int) -> Array:
        a = self.anatomy
        centre = 0.5 + side * a.lung_u
        level = a.dome[0 if side < 0 else 1]
        t = np.clip((self.u - centre) / (a.lung_half_width * 1.2), -1.0, 1.0)
        return (level - a.dome_depth * (1.0 - t**2)).astype(np.float32)

    def abdomen(self) -> Array:
        """1 below the hemidiaphragms (a wide edge: the domes are seen obliquely)."""
        level = self.dome_v(-1) * (self.u < 0.5) + self.dome_v(1) * (self.u >= 0.5)
        return self.soft(level - self.v, 3 * self.eps)

    def _lung(self, side: int) -> Array:
        a = self.anatomy
        centre = 0.5 + side * a.lung_u
        bottom = max(a.dome) + 0.02
        av = (bottom - a.lung_top) * 0.72
        body = self.ellipse(centre, a.lung_top + av, a.lung_half_width, av)
        above_dome = self.soft(self.v - self.dome_v(side))
        lateral_of_mediastinum = self.soft(0.055 - side * (self.u - 0.5))
        return body * above_dome * lateral_of_mediastinum

    def lung_point(
        self, side: int, v_range: tuple[float, float], margin: float
    ) -> tuple[float, float]:
        """A random point well inside one lung, within a vertical band."""
        mask = self.lungs[side]
        for _ in range(200):
            cu = 0.5 + side * self.rng.uniform(0.09, 0.33)
            cv = self.rng.uniform(*v_range)
            iy, ix = int(cv * self.height), int(cu * self.width)
            ok = mask[iy, ix] > 0.5 and self._inside(mask, cu, cv, margin)
            if ok:
                return cu, cv
        a = self.anatomy
        return 0.5 + side * a.lung_u, (a.lung_top + a.dome[0]) / 2

    def _inside(self, mask: Array, cu: float, cv: float, margin: float) -> bool:
        for du, dv in ((margin, 0.0), (-margin, 0.0), (0.0, margin), (0.0, -margin)):
            iy = int(np.clip(cv + dv, 0, 0.999) * self.height)
            ix = int(np.clip(cu + du, 0, 0.999) * self.width)
            if mask[iy, ix] < 0.5:
                return False
        return True

    def box(self, weight: Array, threshold: float = 0.25) -> Box:
        """Pixel box (y0, x0, y1, x1), end exclusive, where `weight` exceeds threshold * max."""
        ys, xs = np.nonzero(weight > threshold * float(weight.max()))
        if ys.size == 0:
            return 0, 0, self.height, self.width
        return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def blur(image: Array, sigma: float) -> Image32:
    """Gaussian blur (sigma in pixels) with reflected edges."""
    if sigma <= 0:
        return image
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    t = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
    pad = (radius, radius, radius, radius)
    if min(image.shape) <= radius:
        t = torch.nn.functional.pad(t, pad, mode="replicate")
    else:
        t = torch.nn.functional.pad(t, pad, mode="reflect")
    t = torch.nn.functional.conv2d(t, kernel.view(1, 1, 1, -1))
    t = torch.nn.functional.conv2d(t, kernel.view(1, 1, -1, 1))
    return t[0, 0].numpy()


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> Image32:
    """Low-frequency noise in about [-1, 1]: a coarse random grid resized smoothly."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32) / 2.0


def _draw(size: tuple[int, int], paint: Callable[[ImageDraw.ImageDraw], None]) -> Array:
    """Rasterise PIL drawing commands (pixel coordinates) into a float mask in [0, 1]."""
    img = Image.new("L", (size[1], size[0]), 0)
    paint(ImageDraw.Draw(img))
    return np.asarray(img, np.float32) / 255.0


# ---- anatomy ------------------------------------------------------------------------------


def _ribs(c: _Canvas) -> Array:
    w, h = c.width, c.height
    width = max(2, round(0.016 * w))

    def paint(d: ImageDraw.ImageDraw) -> None:
        for side in _SIDES:
            for i in range(10):
                v0 = 0.10 + i * 0.062
                t = np.linspace(0.0, 1.0, 24)
                us = 0.5 + side * (0.035 + 0.40 * np.sin(t * np.pi / 2) * (0.6 + 0.4 * t))
                vs = v0 - 0.03 * np.sin(t * np.pi) + 0.11 * t**2
                d.line([(x * w, y * h) for x, y in zip(us, vs, strict=True)], fill=255, width=width)
            a0, a1 = (0.5 + side * 0.05) * w, (0.5 + side * 0.36) * w
            d.line([(a0, 0.165 * h), (a1, 0.105 * h)], fill=255, width=round(width * 1.4))

    ribs = blur(_draw((h, w), paint), max(0.8, 0.003 * w))
    thorax = c.ellipse(0.5, 0.5, 0.45, 0.5)
    return ribs * thorax


def _spine(c: _Canvas) -> Array:
    column = c.soft(np.abs(c.u - 0.5) - 0.032)
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * c.v / 0.045) ** 2
    return (column * vertebrae * c.soft(c.v - 0.98)).astype(np.float32)


def _markings(c: _Canvas) -> Array:
    """Vessels branching from each hilum, fading towards the periphery."""
    w, h = c.width, c.height
    rng = c.rng

    def branch(
        d: ImageDraw.ImageDraw,
        start: tuple[float, float],
        angle: float,
        depth: int,
    ) -> None:
        length = 0.07 * 0.72 ** (4 - depth)
        x, y = start
        x1, y1 = x + np.cos(angle) * length, y + np.sin(angle) * length
        d.line(
            [(x * w, y * h), (x1 * w, y1 * h)],
            fill=int(60 + 40 * depth),
            width=max(1, round(depth * c.scale)),
        )
        if depth > 1:
            for turn in (-0.45, 0.4):
                branch(d, (x1, y1), angle + turn + rng.normal(0, 0.15), depth - 1)

    def paint(d: ImageDraw.ImageDraw) -> None:
        for side in _SIDES:
            hx, hy = 0.5 + side * 0.09, 0.42
            for base in np.linspace(-1.25, 1.35, 6):
                angle = (np.pi if side < 0 else 0.0) - side * base + rng.normal(0, 0.08)
                branch(d, (hx, hy), angle, 4)

    vessels = blur(_draw((h, w), paint), max(0.7, 0.002 * w))
    return vessels * (c.lungs[-1] + c.lungs[1])


def _heart(a: _Anatomy) -> tuple[float, float, float, float]:
    """Centre (u, v) and half axes of the heart, resting on the left hemidiaphragm."""
    return a.heart_u, a.dome[1] - 0.8 * a.heart_half_height, a.heart_half_width, a.heart_half_height


def _compose(c: _Canvas) -> Array:
    a = c.anatomy
    lungs = np.clip(c.lungs[-1] + c.lungs[1], 0.0, 1.0)
    body = c.ellipse(0.5, 0.62, 0.47, 0.66)
    heart = c.ellipse(*_heart(a))
    mediastinum = c.soft(np.abs(c.u - 0.5) - 0.06) * c.soft(0.06 - c.v)
    knob = c.ellipse(0.555, 0.30, 0.035, 0.03)
    abdomen = c.abdomen()
    solid = np.clip(np.maximum.reduce([heart, mediastinum, knob]), 0.0, 1.0)
    img = 0.03 + 0.40 * body
    img = img + (a.lung_density - 0.43) * lungs * (1.0 - solid) * (1.0 - abdomen)
    img = img + 0.17 * solid + (SOFT_TISSUE - 0.43) * abdomen * body
    if a.gastric_bubble:
        img -= 0.22 * c.ellipse(0.64, max(a.dome) + 0.05, 0.05, 0.03) * body
    img += 0.22 * _spine(c) + 0.10 * _ribs(c)
    img += 0.07 * a.marking_gain * _markings(c) * (1.0 - c.no_markings)
    out: Array = img.astype(np.float32)
    return out


# ---- findings ----------------------------------------------------------------------------
# Each painter adds its lesion to canvas.layer (or changes the anatomy before it is drawn)
# and returns the lesion's box.


def _atelectasis(c: _Canvas) -> Box:
    side = int(c.rng.choice(_SIDES))
    cu, cv = c.lung_point(side, (0.55, 0.64), 0.04)
    angle = c.rng.uniform(-0.3, 0.3)
    du, dv = c.u - cu, c.v - cv
    along = du * np.cos(angle) + dv * np.sin(angle)
    across = -du * np.sin(angle) + dv * np.cos(angle)
    band = c.soft(np.abs(across) - c.rng.uniform(0.008, 0.014)) * c.soft(np.abs(along) - 0.09)
    band = blur(band, 0.002 * c.width) * c.lungs[side]
    c.layer += 0.26 * band
    return c.box(band)


def _effusion(c: _Canvas) -> Box:
    side = int(c.rng.choice(_SIDES))
    a = c.anatomy
    level = a.dome[0 if side < 0 else 1] - c.rng.uniform(0.09, 0.16)
    lateral = np.clip(side * (c.u - 0.5) - 0.06, 0.0, None) / (2 * a.lung_half_width)
    meniscus = level - 0.10 * lateral**2
    fluid = c.soft(meniscus - c.v, 2 * c.eps) * c.lungs[side]
    # Pleural fluid has soft-tissue density: it fills the lung's air (not the heart shadow) up to
    # the density of the abdomen below, hides the vessels, and the hemidiaphragm under it is no
    # longer seen (silhouette sign). Painted on top of the lung, it made a band brighter than
    # the liver where the soft dome edge and the fluid overlapped.
    air = (1.0 - c.abdomen()) * (1.0 - c.ellipse(*_heart(a)))
    c.layer += (SOFT_TISSUE - a.lung_density) * fluid * air
    c.no_markings = np.maximum(c.no_markings, fluid)
    return c.box(fluid)


def _infiltration(c: _Canvas) -> Box:
    side = int(c.rng.choice(_SIDES))
    cu, cv = c.lung_point(side, (0.28, 0.58), 0.06)
    patches = np.zeros_like(c.layer)
    for _ in range(int(c.rng.integers(5, 9))):
        pu, pv = cu + c.rng.uniform(-0.06, 0.06), cv + c.rng.uniform(-0.07, 0.07)
        r = c.rng.uniform(0.012, 0.024)
        patches = np.maximum(patches, c.ellipse(pu, pv, r, r * c.rng.uniform(0.7, 1.3), 6 * c.eps))
    texture = 0.6 + 0.4 * np.abs(_smooth_noise(c.rng, c.layer.shape, 24))
    patches = (patches * texture * c.lungs[side]).astype(np.float32)
    c.layer += 0.22 * patches
    return c.box(patches)


def _round_opacity(c: _Canvas, radius: tuple[float, float], gain: float, lobulated: bool) -> Box:
    side = int(c.rng.choice(_SIDES))
    r = c.rng.uniform(*radius)
    cu, cv = c.lung_point(side, (0.25, 0.6), r * 1.2)
    ang = np.arctan2(c.v - cv, c.u - cu)
    wobble = 1.0 + (0.12 * np.sin(5 * ang + c.rng.uniform(0, 6)) if lobulated else 0.0)
    dist = np.sqrt((c.u - cu) ** 2 + (c.v - cv) ** 2) / (r * wobble)
    blob = c.soft((dist - 1.0) * r) * (0.85 + 0.15 * np.sqrt(np.clip(1 - dist**2, 0, 1)))
    c.layer += gain * blob
    return c.box(blob)


def _mass(c: _Canvas) -> Box:
    return _round_opacity(c, (0.045, 0.07), 0.30, lobulated=True)


def _nodule(c: _Canvas) -> Box:
    return _round_opacity(c, (0.012, 0.02), 0.32, lobulated=False)


def _pneumonia(c: _Canvas) -> Box:
    side = int(c.rng.choice(_SIDES))
    cu, cv = c.lung_point(side, (0.45, 0.6), 0.05)
    au, av = c.rng.uniform(0.06, 0.09), c.rng.uniform(0.05, 0.08)
    region = c.ellipse(cu, cv, au, av, 0.02)
    mottle = 0.55 + 0.45 * np.clip(_smooth_noise(c.rng, c.layer.shape, 40) + 0.5, 0, 1)
    patch = region * mottle * c.lungs[side]
    c.layer += 0.28 * patch
    return c.box(patch)


def _pneumothorax(c: _Canvas) -> Box:
    side = int(c.rng.choice(_SIDES))
    a = c.anatomy
    centre = 0.5 + side * a.lung_u
    gap = c.rng.uniform(0.025, 0.045)
    inner = c.soft(
        np.sqrt(
            ((c.u - centre) / (a.lung_half_width - gap)) ** 2
            + ((c.v - 0.5) / (0.5 - a.lung_top - gap)) ** 2
        )
        - 1.0
    )
    rim = c.lungs[side] * (1.0 - inner) * c.soft(c.v - 0.5, 0.02)
    edge = np.abs(np.gradient(inner, axis=1)) + np.abs(np.gradient(inner, axis=0))
    edge = blur(edge, 0.7 * c.scale)
    line = edge / max(float(edge.max()), 1e-6) * c.lungs[side] * c.soft(c.v - 0.48, 0.02)
    c.no_markings = np.maximum(c.no_markings, rim)
    c.layer += -0.10 * rim + 0.12 * line * (1.0 - rim)
    return c.box(rim, 0.5)


def _consolidation(c: _Canvas) -> Box:
    side = int(c.rng.choice(_SIDES))
    fissure = c.rng.uniform(0.32, 0.40)
    region = c.soft(c.v - fissure, c.eps) * c.soft(0.16 - c.v, 0.02) * c.lungs[side]
    w, h = c.width, c.height
    x0, y0 = (0.5 + side * 0.1) * w, (fissure + 0.01) * h

    def paint(d: ImageDraw.ImageDraw) -> None:
        for t in np.linspace(0.1, 1.0, 4):
            a = -np.pi / 2 + side * t
            d.line(
                [(x0, y0), (x0 + np.cos(a) * 0.12 * w, y0 + np.sin(a) * 0.12 * h)],
                fill=255,
                width=max(1, round(0.006 * w)),
            )

    bronchi = blur(_draw((h, w), paint), 0.7 * c.scale) * region
    c.layer += 0.32 * region - 0.18 * bronchi
    return c.box(region)


def _edema(c: _Canvas) -> Box:
    haze = np.zeros_like(c.layer)
    for side in _SIDES:
        wing = c.ellipse(0.5 + side * 0.13, 0.45, 0.10, 0.13, 0.03) * c.lungs[side]
        kerley = (
            c.soft(np.abs(np.sin(c.v * np.pi / 0.018)) - 0.25)
            * c.soft(np.abs(side * (c.u - 0.5) - 0.31) - 0.025)
            * c.soft(np.abs(c.v - 0.62) - 0.06)
        )
        haze += wing + 0.6 * kerley * c.lungs[side]
    c.layer += 0.14 * haze
    return c.box(haze)


def _emphysema(c: _Canvas) -> Box:
    bullae = np.zeros_like(c.layer)
    for _ in range(int(c.rng.integers(1, 4))):
        side = int(c.rng.choice(_SIDES))
        r = c.rng.uniform(0.025, 0.045)
        cu, cv = c.lung_point(side, (0.15, 0.35), r)
        dist = np.sqrt((c.u - cu) ** 2 + (c.v - cv) ** 2)
        bullae += c.soft(dist - r) - 1.6 * c.soft(np.abs(dist - r) - 0.003)
    lungs = c.lungs[-1] + c.lungs[1]
    c.layer -= 0.07 * np.clip(bullae, -1, 1) * lungs
    c.no_markings = np.maximum(c.no_markings, np.clip(bullae, 0, 1))
    return c.box(lungs, 0.5)


def _fibrosis(c: _Canvas) -> Box:
    side = int(c.rng.choice(_SIDES))
    cu, cv = c.lung_point(side, (0.52, 0.62), 0.04)
    cell = c.rng.uniform(0.014, 0.02)
    gu = np.abs(np.sin(np.pi * (c.u - cu) / cell + 0.6 * np.sin(np.pi * c.v / cell)))
    gv = np.abs(np.sin(np.pi * (c.v - cv) / cell + 0.6 * np.sin(np.pi * c.u / cell)))
    net = np.maximum(c.soft(gu - 0.18, 0.01), c.soft(gv - 0.18, 0.01))
    zone = c.ellipse(cu, cv, 0.075, 0.085, 0.015) * c.lungs[side]
    c.layer += 0.20 * net * zone + 0.05 * zone
    return c.box(zone)


def _pleural_thickening(c: _Canvas) -> Box:
    side = int(c.rng.choice(_SIDES))
    a = c.anatomy
    centre = 0.5 + side * a.lung_u
    thick = c.rng.uniform(0.015, 0.025)
    bumps = thick * (1.0 + 0.4 * np.sin(c.v * 60.0 + c.rng.uniform(0, 6)))
    inner = c.soft(np.abs(c.u - centre) - (a.lung_half_width - bumps), 0.003)
    band = c.lungs[side] * (1.0 - inner) * c.soft(np.abs(c.v - 0.40) - 0.16, 0.01)
    c.layer += 0.30 * band
    return c.box(band, 0.5)


def _hernia(c: _Canvas) -> Box:
    a = c.anatomy
    r = c.rng.uniform(0.05, 0.065)
    cu, cv = 0.5 + c.rng.uniform(-0.02, 0.04), max(a.dome) - r * 0.9
    sac = c.ellipse(cu, cv, r * 1.15, r)
    air = sac * c.soft(c.v - (cv - r * 0.1), 0.002)
    wall = c.soft(np.abs(np.sqrt(((c.u - cu) / 1.15) ** 2 + (c.v - cv) ** 2) - r) - 0.004)
    c.layer += 0.10 * sac - 0.30 * air + 0.12 * wall
    return c.box(sac)


def _grow_heart(a: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    return replace(
        a,
        heart_half_width=a.heart_half_width * rng.uniform(1.4, 1.55),
        heart_half_height=a.heart_half_height * rng.uniform(1.2, 1.35),
        heart_u=a.heart_u + 0.02,
    )


def _hyperinflate(a: _Anatomy, rng: np.random.Generator) -> _Anatomy:
    drop = rng.uniform(0.04, 0.06)
    return replace(
        a,
        dome=(a.dome[0] + drop, a.dome[1] + drop),
        dome_depth=0.015,
        lung_density=0.09,
        marking_gain=0.45,
        lung_half_width=a.lung_half_width + 0.01,
    )


_PAINTERS: dict[str, Callable[[_Canvas], Box]] = {
    "Atelectasis": _atelectasis,
    "Effusion": _effusion,
    "Infiltration": _infiltration,
    "Mass": _mass,
    "Nodule": _nodule,
    "Pneumonia": _pneumonia,
    "Pneumothorax": _pneumothorax,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Emphysema": _emphysema,
    "Fibrosis": _fibrosis,
    "Pleural_Thickening": _pleural_thickening,
    "Hernia": _hernia,
}
_ANATOMY_CHANGES: dict[str, Callable[[_Anatomy, np.random.Generator], _Anatomy]] = {
    "Cardiomegaly": _grow_heart,
    "Emphysema": _hyperinflate,
}


def _random_anatomy(rng: np.random.Generator) -> _Anatomy:
    right = rng.uniform(0.70, 0.74)
    return _Anatomy(
        lung_u=rng.uniform(0.175, 0.195),
        lung_half_width=rng.uniform(0.15, 0.175),
        lung_top=rng.uniform(0.09, 0.13),
        dome=(right, right + rng.uniform(0.0, 0.03)),
        dome_depth=rng.uniform(0.035, 0.06),
        heart_u=rng.uniform(0.52, 0.55),
        heart_half_width=rng.uniform(0.14, 0.165),
        heart_half_height=rng.uniform(0.095, 0.115),
        lung_density=rng.uniform(0.15, 0.19),
        gastric_bubble=bool(rng.random() < 0.5),
    )


def make_phantom(
    rng: np.random.Generator, *, findings: Collection[str], size: tuple[int, int] = (512, 512)
) -> Phantom:
    """Draw a PA chest phantom showing exactly `findings` (NIH ChestX-ray14 label strings)."""
    unknown = set(findings) - set(LABELS)
    if unknown:
        raise ValueError(f"unknown finding labels {sorted(unknown)}; known: {', '.join(LABELS)}")
    if min(size) < 64:
        raise ValueError(f"phantom size {size} too small; at least 64 pixels a side")
    anatomy = _random_anatomy(rng)
    wanted = [label for label in LABELS if label in findings]
    for label in wanted:
        if label in _ANATOMY_CHANGES:
            anatomy = _ANATOMY_CHANGES[label](anatomy, rng)
    c = _Canvas(rng, size, anatomy)
    boxes: dict[str, Box] = {}
    for label in wanted:
        if label in _PAINTERS:
            boxes[label] = _PAINTERS[label](c)
    if "Cardiomegaly" in wanted:
        boxes["Cardiomegaly"] = c.box(c.ellipse(*_heart(anatomy)), 0.5)
    img = blur(_compose(c) + c.layer, 0.0015 * min(size))
    img += 0.03 * _smooth_noise(rng, size, 8)
    img += rng.normal(0.0, 0.012 * max(1.0, c.scale), size).astype(np.float32)
    image = (np.clip(img, 0.0, 1.0) ** rng.uniform(0.85, 1.15)).astype(np.float32)
    return Phantom(image=image, findings={k: boxes[k] for k in wanted})


def random_findings(
    rng: np.random.Generator, *, prevalence: float = 0.12, labels: Sequence[str] = LABELS
) -> list[str]:
    """Labels drawn independently with probability `prevalence` each (may be empty: no finding)."""
    return [label for label in labels if rng.random() < prevalence]
