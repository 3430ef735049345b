"""The normal anatomy of a phantom (body, lungs, heart, mediastinum, ribs, spine, vessels), and
the anatomy changes some findings make before it is drawn (Cardiomegaly, Emphysema)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from PIL import ImageDraw

from dicom_node.synthetic.canvas import (
    SIDES,
    SOFT_TISSUE,
    Anatomy,
    Array,
    Canvas,
    blur,
    rasterise,
)


def _ribs(c: Canvas) -> Array:
    w, h = c.width, c.height
    width = max(2, round(0.016 * w))

    def paint(d: ImageDraw.ImageDraw) -> None:
        for side in SIDES:
            for i in range(10):
                v0 = 0.10 + i * 0.062
                t = np.linspace(0.0, 1.0, 24)
                us = 0.5 + side * (0.035 + 0.40 * np.sin(t * np.pi / 2) * (0.6 + 0.4 * t))
                vs = v0 - 0.03 * np.sin(t * np.pi) + 0.11 * t**2
                d.line([(x * w, y * h) for x, y in zip(us, vs, strict=True)], fill=255, width=width)
            a0, a1 = (0.5 + side * 0.05) * w, (0.5 + side * 0.36) * w
            d.line([(a0, 0.165 * h), (a1, 0.105 * h)], fill=255, width=round(width * 1.4))

    ribs = blur(rasterise((h, w), paint), max(0.8, 0.003 * w))
    thorax = c.ellipse(0.5, 0.5, 0.45, 0.5)
    return ribs * thorax


def _spine(c: Canvas) -> Array:
    column = c.soft(np.abs(c.u - 0.5) - 0.032)
    vertebrae = 0.75 + 0.25 * np.cos(2 * np.pi * c.v / 0.045) ** 2
    return (column * vertebrae * c.soft(c.v - 0.98)).astype(np.float32)


def _markings(c: Canvas) -> Array:
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
        for side in SIDES:
            hx, hy = 0.5 + side * 0.09, 0.42
            for base in np.linspace(-1.25, 1.35, 6):
                angle = (np.pi if side < 0 else 0.0) - side * base + rng.normal(0, 0.08)
                branch(d, (hx, hy), angle, 4)

    vessels = blur(rasterise((h, w), paint), max(0.7, 0.002 * w))
    return vessels * (c.lungs[-1] + c.lungs[1])


def heart_geometry(a: Anatomy) -> tuple[float, float, float, float]:
    """Centre (u, v) and half axes of the heart, resting on the left hemidiaphragm."""
    return a.heart_u, a.dome[1] - 0.8 * a.heart_half_height, a.heart_half_width, a.heart_half_height


def compose(c: Canvas) -> Array:
    a = c.anatomy
    lungs = np.clip(c.lungs[-1] + c.lungs[1], 0.0, 1.0)
    body = c.ellipse(0.5, 0.62, 0.47, 0.66)
    heart = c.ellipse(*heart_geometry(a))
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


def _grow_heart(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    return replace(
        a,
        heart_half_width=a.heart_half_width * rng.uniform(1.4, 1.55),
        heart_half_height=a.heart_half_height * rng.uniform(1.2, 1.35),
        heart_u=a.heart_u + 0.02,
    )


def _hyperinflate(a: Anatomy, rng: np.random.Generator) -> Anatomy:
    drop = rng.uniform(0.04, 0.06)
    return replace(
        a,
        dome=(a.dome[0] + drop, a.dome[1] + drop),
        dome_depth=0.015,
        lung_density=0.09,
        marking_gain=0.45,
        lung_half_width=a.lung_half_width + 0.01,
    )


ANATOMY_CHANGES: dict[str, Callable[[Anatomy, np.random.Generator], Anatomy]] = {
    "Cardiomegaly": _grow_heart,
    "Emphysema": _hyperinflate,
}


def random_anatomy(rng: np.random.Generator) -> Anatomy:
    right = rng.uniform(0.70, 0.74)
    return Anatomy(
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
