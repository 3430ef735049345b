"""12-bit JPEG Extended (1.2.840.10008.1.2.4.51) through GDCM, as a pydicom decoder plugin.

pydicom's own GDCM plugin refuses 12-bit JPEG data, and Pillow cannot read it; without this
plugin only pylibjpeg-libjpeg (GPL-3.0, the optional extra `gpl-decoders`) decodes the syntax.
GDCM (BSD) decodes it when handed the frame directly. Registered on import of
`dicom_node.model.preprocess`; pylibjpeg-libjpeg, when installed, is still tried first.
"""

from __future__ import annotations

from typing import Any

import gdcm
from pydicom.pixels.decoders.base import JPEGExtended12BitDecoder

PLUGIN = "gdcm-12bit"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
DECODER_DEPENDENCIES = {JPEG_EXTENDED: ("gdcm",)}


def is_available(uid: str) -> bool:
    """pydicom asks each plugin whether it decodes the syntax."""
    return str(uid) == JPEG_EXTENDED


def _decode_frame(src: bytes, runner: Any) -> bytes:
    """One frame's pixels, as GDCM decodes the JPEG stream (any precision up to 12 bits)."""
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    bits = runner.bits_stored
    image.SetPixelFormat(
        gdcm.PixelFormat(1, runner.bits_allocated, bits, bits - 1, runner.pixel_representation)
    )
    buffer = image.GetBuffer()  # GDCM's binding returns the bytes as a surrogate-escaped str
    return bytes(buffer.encode("utf-8", "surrogateescape"))


def register() -> None:
    """Add the plugin once (pylibjpeg-libjpeg and the others keep their place before it)."""
    if PLUGIN not in JPEGExtended12BitDecoder._available and PLUGIN not in getattr(
        JPEGExtended12BitDecoder, "_unavailable", {}
    ):
        gdcm.Trace.WarningOff()  # it says "Unsupported JPEG data precision 12", then decodes
        JPEGExtended12BitDecoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
