"""One uploaded radiograph (PNG, JPEG or DICOM Part 10) through the node's own model path:
the REST API's `POST /predict` (docs/console.md).

A DICOM file passes the selection a received image passes (`selection.skip_reason`) and the
worker's preprocessing (`run.prepare_images`: the pixel budget, `render_for_display`, the
letterbox); a PNG or JPEG is read by `load_image_file`, as training reads image files. Both then
go through `run.analyse` (the process's batcher and Grad-CAM), so that a PNG holding the pixels
the node renders from a DICOM gets that DICOM's probabilities. Nothing is stored.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from dicom_node.domain import FindingResult, ImageResult, PreparedImage, SourceImage
from dicom_node.errors import PreprocessError
from dicom_node.model.explain import Map, map_to_display, maps_from_features
from dicom_node.model.preprocess import display_uint8, load_image_file, prepare
from dicom_node.pipeline.routes import select_images
from dicom_node.pipeline.run import Services, analyse, prepare_images
from dicom_node.pipeline.selection import is_image
from structured_reports.codes import Concept
from structured_reports.overlay import render_overlay
from structured_reports.results import ModelIdentity
from structured_reports.sc import ScView, annotation_lines

Kind = Literal["dicom", "png", "jpeg"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_PREAMBLE = 128  # Part 10: 128 bytes, then "DICM"


class UploadError(PreprocessError):
    """An upload the model cannot read: not PNG, JPEG or DICOM, corrupt, or an image the node
    would not analyse (the reason as a skipped image's note words it)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Prediction:
    """The model's reading of one upload: every finding (label order), its code, the model, and
    the Grad-CAM picture (PNG bytes) of `heatmap_of` (the findings at or above threshold, or the
    most probable one when none is)."""

    kind: Kind
    findings: tuple[FindingResult, ...]
    codes: tuple[Concept, ...]
    model: ModelIdentity
    heatmap_of: tuple[str, ...]
    gradcam_png: bytes
    header: Dataset  # the DICOM upload's header (no pixels); empty for PNG and JPEG

    def __post_init__(self) -> None:
        if len(self.codes) != len(self.findings) or not self.findings:
            raise ValueError("a prediction needs one code per finding, and findings")


def kind_of(data: bytes) -> Kind:
    """What the bytes are, by their signature (never by the file name)."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data[DICOM_PREAMBLE : DICOM_PREAMBLE + 4] == b"DICM":
        return "dicom"
    raise UploadError("not a PNG, JPEG or DICOM Part 10 file (no signature of any of them)")


def predict(services: Services, data: bytes, filename: str | None = None) -> Prediction:
    """Analyse one upload; UploadError (with the reason) when it cannot be or must not be.
    `filename` only names the upload in messages."""
    kind = kind_of(data)
    name = Path(filename or "upload").name
    with tempfile.TemporaryDirectory(prefix="dicom-node-predict-") as folder:
        path = Path(folder) / ("upload.dcm" if kind == "dicom" else f"upload.{kind}")
        path.write_bytes(data)
        if kind == "dicom":
            prepared = _prepare_dicom(services, path, name)
        else:
            prepared = _prepare_image(services, path, name)
        [result] = analyse(services.models[0], [prepared])
    return _prediction(services, kind, prepared, result)


def _prepare_dicom(services: Services, path: Path, name: str) -> PreparedImage:
    """The header checked as a received image's, then the worker's preprocessing."""
    settings = services.settings
    try:
        header = dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise UploadError(f"{name}: not a readable DICOM file ({exc})") from exc
    if not is_image(header):
        sop_class = getattr(header.get("SOPClassUID"), "name", None) or "unknown SOP class"
        raise UploadError(f"{name}: not an image ({sop_class})")
    source = SourceImage(path=path, header=header)
    _, not_read = select_images([source], settings.require_view_position, services.bundle.scope)
    if not_read:
        raise UploadError(f"{name}: not analysed: {not_read[0].reason}")
    prepared, skipped = prepare_images(
        [source],
        services.bundle,
        settings.sc_max_side,
        services.decode_pool,
        max_pixels=settings.max_decoded_pixels,
    )
    if skipped:
        raise UploadError(f"{name}: not analysed: {skipped[0].reason}")
    return prepared[0]


def _prepare_image(services: Services, path: Path, name: str) -> PreparedImage:
    """A PNG or JPEG as training reads it, within the decoded-pixel budget."""
    limit = services.settings.max_decoded_pixels
    try:
        with Image.open(path) as probe:
            width, height = probe.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadError(f"{name}: not a readable image ({exc})") from exc
    if width * height > limit:
        raise UploadError(
            f"{name}: {width} x {height} pixels, more than max_decoded_pixels ({limit:,})"
        )
    try:
        image = load_image_file(path)
    except PreprocessError as exc:
        raise UploadError(f"{name}: not a readable image ({exc.__cause__ or exc})") from exc
    tensor, letterbox = prepare(image, services.bundle.input_spec)
    return PreparedImage(
        header=Dataset(),
        display=display_uint8(image, max_side=services.settings.sc_max_side),
        model_input=tensor.numpy(),
        letterbox=letterbox,
    )


def _prediction(
    services: Services, kind: Kind, prepared: PreparedImage, result: ImageResult
) -> Prediction:
    """The findings, and the Grad-CAM picture as the node's SC draws it (banner, legend, text)."""
    bundle = services.bundle
    heatmap_of = tuple(f.label for f in result.present)
    shown, view = result, ScView()
    if not heatmap_of:  # nothing at threshold: the map of the most probable finding, named as such
        top = max(result.findings, key=lambda f: f.probability)
        shown = ImageResult(
            source=result.source,
            findings=result.findings,
            display=result.display,
            maps={top.label: _map_of(services, prepared, bundle.labels.index(top.label))},
        )
        view = ScView(findings="per_finding", focus=top.label)
        heatmap_of = (top.label,)
    pixels = render_overlay(
        shown,
        bundle.identity,
        lines=annotation_lines(shown, bundle.identity, view),
        heatmap_labels=heatmap_of,
    )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return Prediction(
        kind=kind,
        findings=result.findings,
        codes=bundle.codes,
        model=bundle.identity,
        heatmap_of=heatmap_of,
        gradcam_png=buffer.getvalue(),
        header=prepared.header,
    )


def _map_of(services: Services, prepared: PreparedImage, index: int) -> Map:
    """One finding's Grad-CAM map at the display's size, by the functions the batcher uses (the
    classifier is safe to share: inference under no_grad, GradCAM hooks behind a lock)."""
    classifier = services.batcher.classifier
    batch = torch.from_numpy(prepared.model_input)[None]
    features = classifier.features(batch)
    [maps] = maps_from_features(classifier, features, [[index]], size=batch.shape[-1])
    return map_to_display(maps[index], prepared.letterbox, prepared.display.shape)
