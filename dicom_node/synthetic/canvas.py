"""The drawing surface of a phantom: normalised coordinate grids, the anatomy's geometry, the
additive density layer that findings paint into, and the drawing primitives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw

Image32 = npt.NDArray[np.float32]
Array = npt.NDArray[np.floating[Any]]  # working fields (float32 in practice)
Box = tuple[int, int, int, int]

SIDES = (-1, 1)  # -1: patient's right lung (image left on a PA view), +1: patient's left
SOFT_TISSUE = 0.55  # density of the abdomen under the diaphragm, and of pleural fluid


@dataclass(frozen=True, kw_only=True, slots=True)
class Anatomy:
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


class Canvas:
    """Normalised coordinate grids, the anatomy, and the additive density layer being painted."""

    def __init__(self, rng: np.random.Generator, size: tuple[int, int], anatomy: Anatomy) -> None:
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
        self.lungs = {side: self._lung(side) for side in SIDES}
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


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> Image32:
    """Low-frequency noise in about [-1, 1]: a coarse random grid resized smoothly."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32) / 2.0


def rasterise(size: tuple[int, int], paint: Callable[[ImageDraw.ImageDraw], None]) -> Array:
    """Rasterise PIL drawing commands (pixel coordinates) into a float mask in [0, 1]."""
    img = Image.new("L", (size[1], size[0]), 0)
    paint(ImageDraw.Draw(img))
    return np.asarray(img, np.float32) / 255.0
