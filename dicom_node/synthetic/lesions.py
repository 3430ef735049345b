"""Finding painters: each adds its lesion to the canvas's density layer and returns the lesion's
box, for 13 of the 14 ChestX-ray14 findings (Cardiomegaly changes the anatomy instead)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import ImageDraw

from dicom_node.synthetic.anatomy import heart_geometry
from dicom_node.synthetic.canvas import (
    SIDES,
    SOFT_TISSUE,
    Box,
    Canvas,
    blur,
    rasterise,
    smooth_noise,
)


def _atelectasis(c: Canvas) -> Box:
    side = int(c.rng.choice(SIDES))
    cu, cv = c.lung_point(side, (0.55, 0.64), 0.04)
    angle = c.rng.uniform(-0.3, 0.3)
    du, dv = c.u - cu, c.v - cv
    along = du * np.cos(angle) + dv * np.sin(angle)
    across = -du * np.sin(angle) + dv * np.cos(angle)
    band = c.soft(np.abs(across) - c.rng.uniform(0.008, 0.014)) * c.soft(np.abs(along) - 0.09)
    band = blur(band, 0.002 * c.width) * c.lungs[side]
    c.layer += 0.26 * band
    return c.box(band)


def _effusion(c: Canvas) -> Box:
    side = int(c.rng.choice(SIDES))
    a = c.anatomy
    level = a.dome[0 if side < 0 else 1] - c.rng.uniform(0.09, 0.16)
    lateral = np.clip(side * (c.u - 0.5) - 0.06, 0.0, None) / (2 * a.lung_half_width)
    meniscus = level - 0.10 * lateral**2
    fluid = c.soft(meniscus - c.v, 2 * c.eps) * c.lungs[side]
    # Pleural fluid has soft-tissue density: it fills the lung's air (not the heart shadow) up to
    # the density of the abdomen below, hides the vessels, and the hemidiaphragm under it is no
    # longer seen (silhouette sign). Painted on top of the lung, it made a band brighter than
    # the liver where the soft dome edge and the fluid overlapped.
    air = (1.0 - c.abdomen()) * (1.0 - c.ellipse(*heart_geometry(a)))
    c.layer += (SOFT_TISSUE - a.lung_density) * fluid * air
    c.no_markings = np.maximum(c.no_markings, fluid)
    return c.box(fluid)


def _infiltration(c: Canvas) -> Box:
    side = int(c.rng.choice(SIDES))
    cu, cv = c.lung_point(side, (0.28, 0.58), 0.06)
    patches = np.zeros_like(c.layer)
    for _ in range(int(c.rng.integers(5, 9))):
        pu, pv = cu + c.rng.uniform(-0.06, 0.06), cv + c.rng.uniform(-0.07, 0.07)
        r = c.rng.uniform(0.012, 0.024)
        patches = np.maximum(patches, c.ellipse(pu, pv, r, r * c.rng.uniform(0.7, 1.3), 6 * c.eps))
    texture = 0.6 + 0.4 * np.abs(smooth_noise(c.rng, c.layer.shape, 24))
    patches = (patches * texture * c.lungs[side]).astype(np.float32)
    c.layer += 0.22 * patches
    return c.box(patches)


def _round_opacity(c: Canvas, radius: tuple[float, float], gain: float, lobulated: bool) -> Box:
    side = int(c.rng.choice(SIDES))
    r = c.rng.uniform(*radius)
    cu, cv = c.lung_point(side, (0.25, 0.6), r * 1.2)
    ang = np.arctan2(c.v - cv, c.u - cu)
    wobble = 1.0 + (0.12 * np.sin(5 * ang + c.rng.uniform(0, 6)) if lobulated else 0.0)
    dist = np.sqrt((c.u - cu) ** 2 + (c.v - cv) ** 2) / (r * wobble)
    blob = c.soft((dist - 1.0) * r) * (0.85 + 0.15 * np.sqrt(np.clip(1 - dist**2, 0, 1)))
    c.layer += gain * blob
    return c.box(blob)


def _mass(c: Canvas) -> Box:
    return _round_opacity(c, (0.045, 0.07), 0.30, lobulated=True)


def _nodule(c: Canvas) -> Box:
    return _round_opacity(c, (0.012, 0.02), 0.32, lobulated=False)


def _pneumonia(c: Canvas) -> Box:
    side = int(c.rng.choice(SIDES))
    cu, cv = c.lung_point(side, (0.45, 0.6), 0.05)
    au, av = c.rng.uniform(0.06, 0.09), c.rng.uniform(0.05, 0.08)
    region = c.ellipse(cu, cv, au, av, 0.02)
    mottle = 0.55 + 0.45 * np.clip(smooth_noise(c.rng, c.layer.shape, 40) + 0.5, 0, 1)
    patch = region * mottle * c.lungs[side]
    c.layer += 0.28 * patch
    return c.box(patch)


def _pneumothorax(c: Canvas) -> Box:
    side = int(c.rng.choice(SIDES))
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


def _consolidation(c: Canvas) -> Box:
    side = int(c.rng.choice(SIDES))
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

    bronchi = blur(rasterise((h, w), paint), 0.7 * c.scale) * region
    c.layer += 0.32 * region - 0.18 * bronchi
    return c.box(region)


def _edema(c: Canvas) -> Box:
    haze = np.zeros_like(c.layer)
    for side in SIDES:
        wing = c.ellipse(0.5 + side * 0.13, 0.45, 0.10, 0.13, 0.03) * c.lungs[side]
        kerley = (
            c.soft(np.abs(np.sin(c.v * np.pi / 0.018)) - 0.25)
            * c.soft(np.abs(side * (c.u - 0.5) - 0.31) - 0.025)
            * c.soft(np.abs(c.v - 0.62) - 0.06)
        )
        haze += wing + 0.6 * kerley * c.lungs[side]
    c.layer += 0.14 * haze
    return c.box(haze)


def _emphysema(c: Canvas) -> Box:
    bullae = np.zeros_like(c.layer)
    for _ in range(int(c.rng.integers(1, 4))):
        side = int(c.rng.choice(SIDES))
        r = c.rng.uniform(0.025, 0.045)
        cu, cv = c.lung_point(side, (0.15, 0.35), r)
        dist = np.sqrt((c.u - cu) ** 2 + (c.v - cv) ** 2)
        bullae += c.soft(dist - r) - 1.6 * c.soft(np.abs(dist - r) - 0.003)
    lungs = c.lungs[-1] + c.lungs[1]
    c.layer -= 0.07 * np.clip(bullae, -1, 1) * lungs
    c.no_markings = np.maximum(c.no_markings, np.clip(bullae, 0, 1))
    return c.box(lungs, 0.5)


def _fibrosis(c: Canvas) -> Box:
    side = int(c.rng.choice(SIDES))
    cu, cv = c.lung_point(side, (0.52, 0.62), 0.04)
    cell = c.rng.uniform(0.014, 0.02)
    gu = np.abs(np.sin(np.pi * (c.u - cu) / cell + 0.6 * np.sin(np.pi * c.v / cell)))
    gv = np.abs(np.sin(np.pi * (c.v - cv) / cell + 0.6 * np.sin(np.pi * c.u / cell)))
    net = np.maximum(c.soft(gu - 0.18, 0.01), c.soft(gv - 0.18, 0.01))
    zone = c.ellipse(cu, cv, 0.075, 0.085, 0.015) * c.lungs[side]
    c.layer += 0.20 * net * zone + 0.05 * zone
    return c.box(zone)


def _pleural_thickening(c: Canvas) -> Box:
    side = int(c.rng.choice(SIDES))
    a = c.anatomy
    centre = 0.5 + side * a.lung_u
    thick = c.rng.uniform(0.015, 0.025)
    bumps = thick * (1.0 + 0.4 * np.sin(c.v * 60.0 + c.rng.uniform(0, 6)))
    inner = c.soft(np.abs(c.u - centre) - (a.lung_half_width - bumps), 0.003)
    band = c.lungs[side] * (1.0 - inner) * c.soft(np.abs(c.v - 0.40) - 0.16, 0.01)
    c.layer += 0.30 * band
    return c.box(band, 0.5)


def _hernia(c: Canvas) -> Box:
    a = c.anatomy
    r = c.rng.uniform(0.05, 0.065)
    cu, cv = 0.5 + c.rng.uniform(-0.02, 0.04), max(a.dome) - r * 0.9
    sac = c.ellipse(cu, cv, r * 1.15, r)
    air = sac * c.soft(c.v - (cv - r * 0.1), 0.002)
    wall = c.soft(np.abs(np.sqrt(((c.u - cu) / 1.15) ** 2 + (c.v - cv) ** 2) - r) - 0.004)
    c.layer += 0.10 * sac - 0.30 * air + 0.12 * wall
    return c.box(sac)


PAINTERS: dict[str, Callable[[Canvas], Box]] = {
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
