"""What the Orthanc Web Viewer shows: a headless Chromium screenshot of the viewer page of a
series, and where an SC of ours lies on it (found by its red banner).

The screenshot is checked against the SC's own pixels: the SC's radiograph area must not be blank
on screen, and where the SC carries heatmap colour the screen must be coloured too.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

from structured_reports.overlay import BANNER_RGB, OverlayLayout

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
RGB = npt.NDArray[np.uint8]


def viewer_url(http_url: str, series_orthanc_id: str) -> str:
    """The Orthanc Web Viewer page of a series."""
    return f"{http_url}/web-viewer/app/viewer.html?series={series_orthanc_id}"


def screenshot(url: str, out: Path, *, budget_ms: int = 10000) -> RGB:
    """Render `url` in headless Chromium (1024 x 768, fresh profile) and return the RGB pixels."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        done = subprocess.run(
            [
                str(CHROMIUM),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={out}",
                "--window-size=1024,768",
                f"--virtual-time-budget={budget_ms}",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    with Image.open(out) as picture:
        return np.asarray(picture.convert("RGB"), dtype=np.uint8)


def coloured(pixels: RGB, spread: int = 40) -> npt.NDArray[np.bool_]:
    """Where a pixel is not grey: its channels differ by more than `spread`."""
    wide = pixels.astype(np.int16)
    result: npt.NDArray[np.bool_] = (wide.max(axis=-1) - wide.min(axis=-1)) > spread
    return result


@dataclass(frozen=True, kw_only=True, slots=True)
class Placement:
    """Where the SC is drawn on the screen: its top-left corner and its scale."""

    top: int
    left: int
    scale: float

    def to_screen(
        self, rows: npt.NDArray[np.intp], cols: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        y = np.rint(self.top + (rows + 0.5) * self.scale - 0.5).astype(np.intp)
        x = np.rint(self.left + (cols + 0.5) * self.scale - 0.5).astype(np.intp)
        return y, x


def find_sc(screen: RGB, sc_columns: int, tolerance: int = 24) -> Placement:
    """Locate the SC on the screen by its banner: the widest run of rows in the banner colour
    gives its left edge, width (hence the scale) and top."""
    banner = np.all(np.abs(screen.astype(np.int16) - BANNER_RGB) <= tolerance, axis=-1)
    rows = np.flatnonzero(banner.sum(axis=1) > 0.5 * banner.sum(axis=1).max())
    if banner.sum() == 0 or rows.size == 0:
        raise AssertionError("the SC's banner is not on the screen")
    cols = np.flatnonzero(banner[rows].any(axis=0))
    width = cols.max() - cols.min() + 1
    return Placement(top=int(rows.min()), left=int(cols.min()), scale=width / sc_columns)


def heatmap_pixels(
    sc_pixels: RGB, layout: OverlayLayout
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows and columns of the SC where the heatmap colours the radiograph."""
    area = sc_pixels[layout.top : layout.top + layout.height, : layout.width]
    rows, cols = np.nonzero(coloured(area))
    return rows + layout.top, cols


def radiograph_on_screen(screen: RGB, placement: Placement, layout: OverlayLayout) -> RGB:
    """The part of the screen that shows the SC's radiograph area."""
    top, left = placement.to_screen(np.array([layout.top]), np.array([0]))
    bottom, right = placement.to_screen(
        np.array([layout.top + layout.height - 1]), np.array([layout.width - 1])
    )
    return screen[int(top[0]) : int(bottom[0]) + 1, int(left[0]) : int(right[0]) + 1]
