"""What the Grad-CAM SCs show per destination choice (`sc_findings`): present, all, per finding;
each choice valid for dciodvfy from MONOCHROME1/2 sources of 8 to 16 bits, in its own series,
with its own deterministic UIDs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from dicom_validators import chest_radiograph, dciodvfy_report
from test_sc import MODEL, SIZE, display, image_result, no_finding_result, square_map

from structured_reports.overlay import blend_heatmap, overlay_layout
from structured_reports.results import SC_FINDINGS, FindingResult, ImageResult
from structured_reports.sc import (
    NO_FINDING_TEXT,
    ScView,
    annotation_lines,
    build_gradcam_scs,
    sc_series_uid,
    sc_views,
)


def two_maps() -> ImageResult:
    """Effusion (0.91, map top-left) and Pleural_Thickening (0.62, map bottom-right) present."""
    image = image_result()
    other = np.zeros((SIZE, SIZE), dtype=np.float32)
    other[160:224, 160:224] = 1.0
    return ImageResult(
        source=image.source,
        findings=image.findings,
        display=display(),
        maps={"Effusion": square_map(), "Pleural_Thickening": other},
    )


def coloured(rgb: npt.NDArray[np.uint8]) -> bool:
    return int(rgb.max()) - int(rgb.min()) > 30


def radiograph_of(sc_pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The radiograph area of an SC's pixels (below the banner, left of the legend)."""
    layout = overlay_layout((SIZE, SIZE), MODEL)
    return sc_pixels[layout.top : layout.top + layout.height, : layout.width]


def test_present_is_one_sc_per_image_with_every_present_map() -> None:
    """'present': one SC; the heatmap covers both present findings' maps."""
    [sc] = build_gradcam_scs(two_maps(), MODEL, findings="present")
    area = radiograph_of(sc.pixel_array)
    assert coloured(area[96, 96]) and coloured(area[192, 192])
    assert not coloured(area[30, 200])


def test_per_finding_is_one_sc_per_present_finding_with_its_map_only() -> None:
    """'per_finding': an SC per finding above threshold (most probable first), each coloured
    only where its own map is; its text is about that finding."""
    image = two_maps()
    scs = build_gradcam_scs(image, MODEL, findings="per_finding", first_instance_number=5)
    assert [sc.InstanceNumber for sc in scs] == [5, 6]
    effusion, thickening = (radiograph_of(sc.pixel_array) for sc in scs)
    assert coloured(effusion[96, 96]) and not coloured(effusion[192, 192])
    assert coloured(thickening[192, 192]) and not coloured(thickening[96, 96])
    assert "of Effusion" in scs[0].DerivationDescription
    assert "of Pleural Thickening" in scs[1].DerivationDescription
    lines = annotation_lines(image, MODEL, ScView(findings="per_finding", focus="Effusion"))
    assert lines[0] == "Heatmap of Effusion 0.91 (threshold 0.50)"
    assert lines[1] == "Also above threshold: Pleural Thickening 0.62"


def test_per_finding_without_findings_is_the_single_no_finding_sc() -> None:
    """An image with no finding above threshold still gets one SC saying so."""
    [view] = sc_views(no_finding_result(), "per_finding")
    assert view.focus is None
    assert annotation_lines(no_finding_result(), MODEL, view)[0] == NO_FINDING_TEXT


def test_all_lists_findings_below_threshold_too() -> None:
    """'all': the same picture as 'present' with every other finding's probability listed."""
    image = image_result()
    lines = annotation_lines(image, MODEL, ScView(findings="all"))
    assert lines[0] == "Findings above threshold: Effusion 0.91, Pleural Thickening 0.62"
    assert lines[1] == "Below threshold: Hernia 0.05"
    assert np.array_equal(
        radiograph_of(build_gradcam_scs(image, MODEL, findings="all")[0].pixel_array),
        blend_heatmap(image),
    )


def test_each_choice_has_its_own_series_and_distinct_deterministic_uids() -> None:
    """Series per choice; no two SCs share a SOP Instance UID; building again gives the same."""
    image = two_maps()
    built = {f: build_gradcam_scs(image, MODEL, findings=f) for f in SC_FINDINGS}
    series = {f: {sc.SeriesInstanceUID for sc in scs} for f, scs in built.items()}
    assert all(len(uids) == 1 for uids in series.values())
    assert len({next(iter(uids)) for uids in series.values()}) == len(SC_FINDINGS)
    assert series["present"] == {sc_series_uid(image, MODEL)}
    uids = [sc.SOPInstanceUID for scs in built.values() for sc in scs]
    assert len(uids) == len(set(uids)) == 4
    again = [
        sc.SOPInstanceUID for f in SC_FINDINGS for sc in build_gradcam_scs(image, MODEL, findings=f)
    ]
    assert again == uids


@pytest.mark.parametrize(
    ("photometric", "bits", "modality"),
    [("MONOCHROME2", 8, "DX"), ("MONOCHROME1", 10, "CR"), ("MONOCHROME2", 16, "DX")],
)
def test_every_choice_is_valid_for_each_source_kind(
    photometric: str, bits: int, modality: str, tmp_path: Path
) -> None:
    """dciodvfy finds no error and no warning in the SCs of any choice (Type 2 attributes
    included), from 8- to 16-bit MONOCHROME1/2 sources."""
    source = chest_radiograph(number=1, modality=modality, photometric=photometric)
    source.BitsStored, source.HighBit = bits, bits - 1
    if bits == 8:
        source.BitsAllocated = 8
        source.PixelData = np.zeros((SIZE, SIZE), dtype=np.uint8).tobytes()
    image = ImageResult(
        source=source,
        findings=(FindingResult(label="Effusion", probability=0.9, threshold=0.5),),
        display=display(),
        maps={"Effusion": square_map()},
    )
    for findings in SC_FINDINGS:
        for sc in build_gradcam_scs(image, MODEL, findings=findings):
            report = dciodvfy_report(sc, tmp_path)
            assert [line for line in report if line.startswith(("Error", "Warning"))] == []
            assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
