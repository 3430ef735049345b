"""The Grad-CAM Secondary Capture: valid for dciodvfy, banner burned in, heatmap, UIDs, headers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
from dicom_validators import chest_radiograph, dciodvfy_errors
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from structured_reports.overlay import BANNER_RGB, blend_heatmap, font_size
from structured_reports.results import FindingResult, ImageResult, ModelIdentity
from structured_reports.sc import (
    NO_FINDING_TEXT,
    annotation_lines,
    build_gradcam_sc,
    sc_instance_uid,
    sc_series_uid,
)

MODEL = ModelIdentity(name="cxr14-densenet121", version="1.2.0", weights_sha256="ab" * 32)
SIZE = 256
PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
    "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
)  # fmt: skip


def display() -> npt.NDArray[np.uint8]:
    """A grey ramp standing in for the windowed radiograph."""
    return np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8), (SIZE, 1))


def square_map() -> npt.NDArray[np.float32]:
    cam = np.zeros((SIZE, SIZE), dtype=np.float32)
    cam[64:128, 64:128] = 1.0
    return cam


def image_result(
    source: Dataset | None = None, effusion: float = 0.91, with_map: bool = True
) -> ImageResult:
    findings = (
        FindingResult(label="Effusion", probability=effusion, threshold=0.5),
        FindingResult(label="Pleural_Thickening", probability=0.62, threshold=0.5),
        FindingResult(label="Hernia", probability=0.05, threshold=0.5),
    )
    maps = {"Effusion": square_map()} if with_map else {}
    return ImageResult(
        source=source if source is not None else chest_radiograph(number=1),
        findings=findings,
        display=display(),
        maps=maps,
    )


def no_finding_result() -> ImageResult:
    findings = (FindingResult(label="Effusion", probability=0.1, threshold=0.5),)
    return ImageResult(source=chest_radiograph(number=1), findings=findings, display=display())


def round_trip(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)


def test_sc_has_no_dciodvfy_errors(tmp_path: Path) -> None:
    """An SC from a DX radiograph with findings and a map: dciodvfy reports no error."""
    assert dciodvfy_errors(build_gradcam_sc(image_result(), MODEL), tmp_path) == []


def test_sc_from_monochrome1_cr_without_orientation_is_valid(tmp_path: Path) -> None:
    """A CR (MONOCHROME1) source without Patient Orientation: no error, orientation left empty."""
    source = chest_radiograph(number=2, modality="CR", view="AP", photometric="MONOCHROME1")
    del source.PatientOrientation
    sc = build_gradcam_sc(image_result(source), MODEL)
    assert dciodvfy_errors(sc, tmp_path) == []
    assert "PatientOrientation" in sc
    assert not sc.PatientOrientation


def test_banner_is_burned_in() -> None:
    """The top rows are the red banner, not the radiograph; BurnedInAnnotation is YES."""
    sc = round_trip(build_gradcam_sc(image_result(), MODEL))
    pixels = sc.pixel_array
    assert sc.BurnedInAnnotation == "YES"
    assert tuple(pixels[0, 0]) == BANNER_RGB
    plain = np.repeat(display()[..., None], 3, axis=2)
    assert not np.array_equal(pixels[:8, :SIZE], plain[:8])
    banner = pixels[: font_size(SIZE, SIZE), :SIZE]
    assert (banner != np.array(BANNER_RGB, dtype=np.uint8)).any()  # text drawn on the banner


def test_radiograph_with_heatmap_is_inside_the_picture() -> None:
    """The blended radiograph appears unchanged below the banner; colour only where the map is."""
    image = image_result()
    blended = blend_heatmap(image)
    pixels = build_gradcam_sc(image, MODEL).pixel_array
    offsets = [
        top
        for top in range(pixels.shape[0] - SIZE)
        if np.array_equal(pixels[top : top + SIZE, :SIZE], blended)
    ]
    assert len(offsets) == 1
    red, green, blue = (blended[96, 96, c].astype(int) for c in range(3))
    assert red != green or green != blue  # coloured inside the strong map
    assert (blended[200, 200] == display()[200, 200]).all()  # plain grey outside it


def test_text_lists_present_findings_or_none() -> None:
    """The burned-in text names the present findings with probabilities, or says there are none."""
    lines = annotation_lines(image_result(), MODEL)
    assert lines[0] == "Findings above threshold: Effusion 0.91, Pleural Thickening 0.62"
    assert any(MODEL.label in line for line in lines)
    assert annotation_lines(no_finding_result(), MODEL)[0] == NO_FINDING_TEXT
    sc = build_gradcam_sc(no_finding_result(), MODEL)  # no maps at all
    assert sc.pixel_array.shape[2] == 3


def test_text_scales_with_image_size() -> None:
    """Bigger radiographs get bigger text, never below 10 pixels."""
    assert font_size(128, 128) == 10
    assert font_size(2048, 2500) > font_size(1024, 1024) > font_size(256, 256)


def test_secondary_capture_attributes() -> None:
    """SC SOP class, RGB 8-bit explicit VR LE, derived, WSD, source reference, equipment."""
    image = image_result()
    sc = round_trip(build_gradcam_sc(image, MODEL, series_number=12, instance_number=4))
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (sc.PhotometricInterpretation, sc.BitsAllocated, sc.SamplesPerPixel) == ("RGB", 8, 3)
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.ConversionType == "WSD"
    assert "not for diagnostic use" in sc.SeriesDescription
    assert (sc.SeriesNumber, sc.InstanceNumber) == (12, 4)
    [reference] = sc.SourceImageSequence
    assert reference.ReferencedSOPInstanceUID == image.sop_instance_uid
    assert reference.ReferencedSOPClassUID == image.source.SOPClassUID
    assert sc.DeviceUID == MODEL.device_uid
    equipment = sc.ContributingEquipmentSequence
    assert any(e.get("DeviceSerialNumber") == MODEL.device_uid for e in equipment)


def test_patient_and_study_attributes_equal_the_source() -> None:
    """Patient and study attributes are copied from the source radiograph."""
    image = image_result()
    sc = build_gradcam_sc(image, MODEL)
    for keyword in PATIENT_STUDY:
        assert str(sc[keyword].value) == str(image.source[keyword].value), keyword


def test_uids_are_deterministic() -> None:
    """Same input -> same UIDs; another probability -> another instance in the same series."""
    first, second = build_gradcam_sc(image_result(), MODEL), build_gradcam_sc(image_result(), MODEL)
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (
        second.SeriesInstanceUID,
        second.SOPInstanceUID,
    )
    changed = image_result(effusion=0.93)
    assert sc_instance_uid(changed, MODEL) != first.SOPInstanceUID
    assert sc_series_uid(changed, MODEL) == first.SeriesInstanceUID
