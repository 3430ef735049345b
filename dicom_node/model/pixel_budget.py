"""How many pixels an image will decode to, known before any decoder runs: from the header (Rows,
Columns, Number of Frames, Samples per Pixel) and, for compressed pixel data, from the
codestream's own header (JPEG 2000 SIZ, JPEG and JPEG-LS SOF markers), which a hostile or broken
file may make disagree with the DICOM header ("60 bytes claiming 50000 x 50000"). An image over
the budget, or whose codestream claims other dimensions, is refused with its reason.
"""

from __future__ import annotations

import struct

from pydicom import Dataset
from pydicom.encaps import generate_fragments

from dicom_node.errors import PreprocessError

DEFAULT_MAX_PIXELS = 60_000_000  # a 43 cm detector at 0.1 mm is 18.5 MP; the largest CR about 30
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})  # SOFn, JPEG-LS SOF55
_HEADER_BYTES = 64 * 1024  # the codestream header lies within the first fragment's first bytes


def declared_pixels(ds: Dataset) -> int:
    """Rows x Columns x frames x samples as the header declares them."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    return rows * columns * frames * samples


def check_declared_pixels(header: Dataset, max_pixels: int) -> None:
    """PreprocessError when the header declares more than `max_pixels` (checked on the header
    alone, before the pixel data is even read)."""
    pixels = declared_pixels(header)
    if pixels > max_pixels:
        raise PreprocessError(
            f"declares {header.get('Rows')} x {header.get('Columns')} pixels ({pixels:,}), "
            f"more than max_decoded_pixels ({max_pixels:,}): not decoded"
        )


def check_pixel_budget(ds: Dataset, max_pixels: int) -> None:
    """PreprocessError when the image would decode to more than `max_pixels`, or when its
    compressed codestream declares other dimensions than Rows and Columns."""
    check_declared_pixels(ds, max_pixels)
    size = codestream_size(ds)
    if size is not None and size != (int(ds.Rows), int(ds.Columns)):
        raise PreprocessError(
            f"the compressed pixel data declares {size[0]} x {size[1]} pixels, the header "
            f"{ds.Rows} x {ds.Columns}: not decoded"
        )


def codestream_size(ds: Dataset) -> tuple[int, int] | None:
    """(rows, columns) the first frame's JPEG 2000, JPEG or JPEG-LS codestream declares; None
    for native or RLE pixel data, or when no such header is found."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_encapsulated or "PixelData" not in ds:
        return None
    try:
        items = generate_fragments(ds.PixelData)
        next(items)  # the Basic Offset Table
        first = next(items)[:_HEADER_BYTES]
    except (StopIteration, ValueError, struct.error):
        raise PreprocessError("encapsulated Pixel Data without a readable fragment") from None
    if first[:2] == b"\xff\x4f":  # J2K SOC, then SIZ: Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz
        return _jpeg2000_size(first)
    if first[:4] == b"\x00\x00\x00\x0c":  # a JP2 box: codestream inside; look for SOC
        start = first.find(b"\xff\x4f\xff\x51")
        return _jpeg2000_size(first[start:]) if start >= 0 else None
    if first[:2] == b"\xff\xd8":
        return _jpeg_size(first)
    return None


def _jpeg2000_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[2:4] != b"\xff\x51":
        return None
    x_size, y_size, x_origin, y_origin = struct.unpack(">IIII", data[8:24])
    return y_size - y_origin, x_size - x_origin


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the markers after SOI to the first SOF: P, Y (rows), X (columns)."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _SOF_MARKERS and position + 9 <= len(data):
            rows, columns = struct.unpack(">HH", data[position + 5 : position + 9])
            return rows, columns
        position += 2 + length
    return None
