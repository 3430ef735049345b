"""pipeline/predict.py without HTTP: uploads told apart by signature, and the Grad-CAM picture
of the most probable finding when no finding reaches its threshold."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_node.model.bundle import METADATA
from dicom_node.pipeline.predict import UploadError, kind_of, predict
from dicom_node.pipeline.run import Services
from dicom_node.startup import build_services, connect_database
from dicom_node.testing import node_settings, tiny_bundle


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """The tiny bundle with thresholds no probability of its random weights reaches."""
    bundle = tiny_bundle(tmp_path / "bundle")
    metadata = json.loads((bundle.path / METADATA).read_text())
    metadata["dicom_node"]["thresholds"] = dict.fromkeys(bundle.labels, 0.99999)
    (bundle.path / METADATA).write_text(json.dumps(metadata))
    settings = node_settings(tmp_path, model_bundle=bundle.path)
    (tmp_path / "spool").mkdir()
    built = build_services(settings, connect_database(settings.database_url))
    yield built
    built.batcher.close()


def _png(shape: tuple[int, int]) -> bytes:
    grey = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploads_are_told_apart_by_their_signature() -> None:
    """PNG, JPEG and DICOM Part 10 by their first bytes; anything else is refused."""
    assert kind_of(_png((4, 4))) == "png"
    assert kind_of(b"\xff\xd8\xff\xe0" + b"\0" * 200) == "jpeg"
    assert kind_of(b"\0" * 128 + b"DICM" + b"\0" * 10) == "dicom"
    with pytest.raises(UploadError, match="PNG, JPEG or DICOM"):
        kind_of(b"\0" * 128 + b"DICX")


def test_without_a_finding_the_heatmap_is_of_the_most_probable(services: Services) -> None:
    """No finding at threshold: every decision absent, the picture shows the map of the most
    probable finding, drawn at the display's size with the SC's banner."""
    result = predict(services, _png((90, 120)), "plain.png")
    assert not any(f.present for f in result.findings)
    top = max(result.findings, key=lambda f: f.probability)
    assert result.heatmap_of == (top.label,) and result.kind == "png"
    picture = Image.open(io.BytesIO(result.gradcam_png))
    assert picture.mode == "RGB" and picture.width > 120 and picture.height > 90
    assert [c.meaning for c in result.codes] and len(result.codes) == len(result.findings)
