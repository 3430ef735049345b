"""Synthetic chest phantoms and the DX/CR instances made from them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from dicom_node.synthetic.phantom_dicom import MANUFACTURER, phantom_dataset, write_study
from dicom_node.synthetic.phantoms import LABELS, make_phantom
from tests.dicom_validators import dciodvfy_report, require_tool

STUDY = "1.2.826.0.1.3680043.8.498.12345"
SIZE = (160, 144)


def test_labels_are_the_nih_chestxray14_strings() -> None:
    """The 14 finding labels are exactly the NIH ChestX-ray14 names, in their usual order."""
    assert LABELS == (
        "Atelectasis",
        "Cardiomegaly",
        "Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "Consolidation",
        "Edema",
        "Emphysema",
        "Fibrosis",
        "Pleural_Thickening",
        "Hernia",
    )


@pytest.mark.parametrize("label", LABELS)
def test_each_finding_has_a_box_inside_the_image(label: str) -> None:
    """Every finding gets a non-empty box within the image; the image is float32 in [0, 1]."""
    phantom = make_phantom(np.random.default_rng(3), findings=[label], size=SIZE)
    assert phantom.image.shape == SIZE and phantom.image.dtype == np.float32
    assert phantom.image.min() >= 0.0 and phantom.image.max() <= 1.0
    assert set(phantom.findings) == {label}
    y0, x0, y1, x1 = phantom.findings[label]
    assert 0 <= y0 < y1 <= SIZE[0] and 0 <= x0 < x1 <= SIZE[1]


def test_findings_change_the_image_inside_their_box() -> None:
    """A mass brightens its box compared with the same phantom drawn without it."""
    with_mass = make_phantom(np.random.default_rng(5), findings=["Mass"], size=SIZE)
    y0, x0, y1, x1 = with_mass.findings["Mass"]
    without = make_phantom(np.random.default_rng(5), findings=[], size=SIZE)
    assert with_mass.image[y0:y1, x0:x1].mean() > without.image[y0:y1, x0:x1].mean() + 0.08


@pytest.mark.parametrize("seed", range(4))
def test_effusion_has_the_density_of_the_abdomen(seed: int) -> None:
    """Pleural fluid is as dense as the abdomen under it (silhouette sign: no brighter band at
    the dome), and far denser than the aerated lung above its meniscus."""
    phantom = make_phantom(np.random.default_rng(seed), findings=["Effusion"], size=(256, 256))
    y0, x0, y1, x1 = phantom.findings["Effusion"]
    columns = slice((x0 + x1) // 2 - 6, (x0 + x1) // 2 + 6)
    fluid = phantom.image[y1 - 10 : y1 - 4, columns].mean()
    abdomen = phantom.image[y1 + 8 : y1 + 16, columns].mean()
    lung = phantom.image[y0 - 14 : y0 - 6, columns].mean()
    assert abs(fluid - abdomen) < 0.06
    assert fluid - lung > 0.2


def test_phantoms_are_reproducible_and_varied() -> None:
    """The same seed gives the same phantom; another seed gives another."""
    a = make_phantom(np.random.default_rng(1), findings=["Nodule"], size=SIZE)
    b = make_phantom(np.random.default_rng(1), findings=["Nodule"], size=SIZE)
    c = make_phantom(np.random.default_rng(2), findings=["Nodule"], size=SIZE)
    assert np.array_equal(a.image, b.image) and a.findings == b.findings
    assert not np.array_equal(a.image, c.image)


def test_unknown_label_is_rejected() -> None:
    """A label outside the 14 is an error naming it."""
    with pytest.raises(ValueError, match="Pneumonitis"):
        make_phantom(np.random.default_rng(0), findings=["Pneumonitis"], size=SIZE)


@pytest.mark.parametrize(
    ("modality", "photometric", "bits"),
    [
        ("DX", "MONOCHROME2", 12),
        ("DX", "MONOCHROME1", 8),
        ("CR", "MONOCHROME2", 16),
        ("CR", "MONOCHROME1", 10),
        ("DX", "MONOCHROME2", 14),
    ],
)
def test_dataset_round_trips_with_expected_attributes(
    modality: str, photometric: str, bits: int
) -> None:
    """Written and read back, the instance keeps its IOD, headers, bit depth and pixels."""
    phantom = make_phantom(np.random.default_rng(0), findings=["Effusion"], size=SIZE)
    ds = phantom_dataset(
        phantom,
        patient_id="P1",
        patient_name="Doe^Jane",
        study_uid=STUDY,
        modality=modality,
        photometric=photometric,
        bits_stored=bits,
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    back = dcmread(io.BytesIO(buffer.getvalue()))
    sop = (
        DigitalXRayImageStorageForPresentation
        if modality == "DX"
        else ComputedRadiographyImageStorage
    )
    assert back.SOPClassUID == sop and back.file_meta.MediaStorageSOPClassUID == sop
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.StudyInstanceUID == STUDY and back.PatientID == "P1" and back.Modality == modality
    assert back.Manufacturer == MANUFACTURER
    assert back.ViewPosition == "PA" and back.BodyPartExamined == "CHEST"
    assert back.PatientOrientation == ["L", "F"] and back.ImageLaterality == "U"
    assert "AccessionNumber" in back and "ReferringPhysicianName" in back and "StudyID" in back
    assert back.BitsStored == bits and back.HighBit == bits - 1
    assert back.BitsAllocated == (8 if bits == 8 else 16)
    assert back.PhotometricInterpretation == photometric
    assert (back.Rows, back.Columns) == SIZE
    assert len(back.PixelSpacing) == 2 and len(back.ImagerPixelSpacing) == 2
    assert "WindowCenter" in back and "WindowWidth" in back
    assert int(back.pixel_array.max()) < 2**bits
    if modality == "DX":
        assert back.PresentationIntentType == "FOR PRESENTATION"
        assert float(back.RescaleIntercept) == 0 and float(back.RescaleSlope) == 1


def test_monochrome1_stores_inverted_values() -> None:
    """MONOCHROME1 stores (2^bits - 1) - value of the MONOCHROME2 encoding."""
    phantom = make_phantom(np.random.default_rng(0), findings=[], size=SIZE)
    kw = {"patient_id": "P", "patient_name": "A^B", "study_uid": STUDY, "bits_stored": 12}
    mono2 = phantom_dataset(phantom, photometric="MONOCHROME2", **kw)  # type: ignore[arg-type]
    mono1 = phantom_dataset(phantom, photometric="MONOCHROME1", **kw)  # type: ignore[arg-type]
    assert np.array_equal(mono1.pixel_array.astype(int), 4095 - mono2.pixel_array.astype(int))
    assert mono1.PresentationLUTShape == "INVERSE" and mono2.PresentationLUTShape == "IDENTITY"


def test_dx_refuses_a_rescale_intercept() -> None:
    """DX For Presentation must keep Rescale Intercept 0; CR may carry another."""
    phantom = make_phantom(np.random.default_rng(0), findings=[], size=SIZE)
    with pytest.raises(ValueError, match="Rescale Intercept"):
        phantom_dataset(
            phantom, patient_id="P", patient_name="A^B", study_uid=STUDY, rescale_intercept=-1024
        )
    cr = phantom_dataset(
        phantom,
        patient_id="P",
        patient_name="A^B",
        study_uid=STUDY,
        modality="CR",
        rescale_intercept=-1024,
    )
    assert float(cr.RescaleIntercept) == -1024


@pytest.mark.parametrize("modality", ["DX", "CR"])
@pytest.mark.parametrize("view", ["PA", "LL"])
def test_instances_pass_dciodvfy(modality: str, view: str, tmp_path: Path) -> None:
    """dicom3tools' IOD checker reports neither errors nor warnings for PA and lateral views."""
    require_tool("dciodvfy")
    phantom = make_phantom(np.random.default_rng(0), findings=["Mass"], size=(96, 80))
    ds = phantom_dataset(
        phantom,
        patient_id="P",
        patient_name="A^B",
        study_uid=STUDY,
        modality=modality,
        view_position=view,
    )
    report = dciodvfy_report(ds, tmp_path)
    assert [line for line in report if line.startswith(("Error", "Warning"))] == [], report


def test_write_study_writes_one_study(tmp_path: Path) -> None:
    """write_study names files by position and puts PA images and the lateral in one study."""
    paths = write_study(
        tmp_path / "study",
        np.random.default_rng(4),
        n_images=2,
        lateral=True,
        findings=["Nodule"],
        size=(96, 96),
    )
    assert [p.name for p in paths] == ["image-001.dcm", "image-002.dcm", "image-003.dcm"]
    datasets = [dcmread(p) for p in paths]
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert [ds.ViewPosition for ds in datasets] == ["PA", "PA", "LL"]
    assert datasets[2].SeriesInstanceUID != datasets[0].SeriesInstanceUID
    assert datasets[2].PatientOrientation == ["P", "F"]
