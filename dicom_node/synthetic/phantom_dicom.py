"""DICOM DX/CR instances and studies made from synthetic chest phantoms."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dicom_node.synthetic.canvas import Array, Image32
from dicom_node.synthetic.phantoms import Phantom, make_phantom, random_findings

MANUFACTURER = "dicom-node phantom"
_FIELD_OF_VIEW_MM = 430.0  # a 43 cm detector, as in most chest radiography

_SOP_CLASSES = {"DX": DigitalXRayImageStorageForPresentation, "CR": ComputedRadiographyImageStorage}
_ORIENTATION = {"PA": ["L", "F"], "AP": ["L", "F"], "LL": ["P", "F"], "RL": ["A", "F"]}
_VIEW_CODES = {  # CID 4010 DX View
    "PA": ("272479007", "postero-anterior"),
    "AP": ("399348003", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}


def stored_values(image: Image32, bits_stored: int) -> tuple[npt.NDArray[np.uint16], int, int]:
    """Quantise a display image to stored values spanning [lo, hi] within the BitsStored range."""
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"BitsStored must be 8 to 16, not {bits_stored}")
    top = 2**bits_stored - 1
    lo, hi = round(0.04 * top), round(0.96 * top)
    values = np.rint(lo + np.clip(image, 0.0, 1.0) * (hi - lo)).astype(np.uint16)
    return values, lo, hi


def _patient_study(
    ds: Dataset,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    when: dt.datetime,
    accession_number: str,
) -> None:
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = when.strftime("%H%M%S")
    ds.AccessionNumber = accession_number
    ds.StudyID = accession_number[-16:] or "1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "XR CHEST"


def _equipment(ds: Dataset, spacing: float) -> None:
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "synthetic chest phantom"
    ds.InstitutionName = "dicom-node"
    ds.StationName = "PHANTOM"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "dicom-node phantoms 1"
    ds.ImagerPixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.DistanceSourceToDetector = "1800"
    ds.DistanceSourceToPatient = "1650"
    ds.KVP = "120"
    ds.ExposureInuAs = 2000


def _anatomic_region(ds: Dataset, body_part: str) -> None:
    region = Dataset()
    region.CodeValue = "43799004" if body_part == "CHEST" else "38266002"
    region.CodingSchemeDesignator = "SCT"
    region.CodeMeaning = "Chest" if body_part == "CHEST" else "Entire body"
    ds.AnatomicRegionSequence = Sequence([region])
    ds.BodyPartExamined = body_part


def _pixels(
    ds: Dataset, image: Array, *, photometric: str, bits_stored: int, window: bool, intercept: float
) -> None:
    values, lo, hi = stored_values(image, bits_stored)
    top = 2**bits_stored - 1
    centre = (lo + hi) / 2 + 0.5
    if photometric == "MONOCHROME1":  # stored inverted: air (dark on display) has high values
        values = (top - values).astype(np.uint16)
        centre = top - (lo + hi) / 2 + 0.5
    elif photometric != "MONOCHROME2":
        raise ValueError(f"PhotometricInterpretation must be MONOCHROME1 or 2, not {photometric!r}")
    arr = values.astype(np.uint8) if bits_stored == 8 else values
    ds.set_pixel_data(arr, photometric, bits_stored, generate_instance_uid=False)
    ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    ds.RescaleIntercept = f"{intercept:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    if window:
        ds.WindowCenter = f"{centre + intercept:g}"
        ds.WindowWidth = f"{hi - lo + 1:g}"
        ds.VOILUTFunction = "LINEAR"
        ds.WindowCenterWidthExplanation = "phantom full range"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"


def _dx_modules(ds: Dataset, view_position: str, photometric: str) -> None:
    """DX Series, DX Image, DX Detector and DX Positioning attributes (PS3.3 C.8.11)."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.DetectorType = "SCINTILLATOR"
    ds.PositionerType = "COLUMN"
    ds.AcquisitionContextSequence = Sequence()
    ds.PixelIntensityRelationship = "LIN"
    # -1: higher values mean less beam (dense tissue), as stored for MONOCHROME2; +1 inverted
    ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
    if view_position in _VIEW_CODES:
        view = Dataset()
        view.CodeValue, view.CodeMeaning = _VIEW_CODES[view_position]
        view.CodingSchemeDesignator = "SCT"
        view.ViewModifierCodeSequence = Sequence()
        ds.ViewCodeSequence = Sequence([view])


def phantom_dataset(
    phantom: Phantom,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "DX",
    view_position: str = "PA",
    body_part: str = "CHEST",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    window: bool = True,
    rescale_intercept: float = 0.0,
    accession_number: str = "PH0001",
    series_number: int = 1,
    instance_number: int = 1,
    study_datetime: dt.datetime | None = None,
) -> Dataset:
    """A DX (For Presentation) or CR instance, explicit VR little endian, showing `phantom`.

    Displayed through its Modality LUT (rescale) and first window the instance reproduces
    `phantom.image` up to quantisation, for either photometric interpretation. DX requires a
    rescale intercept of 0; CR may use another to exercise the Modality LUT.
    """
    if modality not in _SOP_CLASSES:
        raise ValueError(f"Modality must be one of {sorted(_SOP_CLASSES)}, not {modality!r}")
    if modality == "DX" and rescale_intercept != 0:
        raise ValueError("DX For Presentation requires Rescale Intercept 0 (PS3.3 C.8.11.3)")
    rows, cols = phantom.image.shape
    ds = Dataset()
    ds.SOPClassUID = _SOP_CLASSES[modality]
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = (study_datetime or dt.datetime.now()).strftime("%Y%m%d")
    _patient_study(
        ds,
        patient_id=patient_id,
        patient_name=patient_name,
        study_uid=study_uid,
        when=study_datetime or dt.datetime.now(),
        accession_number=accession_number,
    )
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"CHEST {view_position}"
    ds.InstanceNumber = instance_number
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    _equipment(ds, _FIELD_OF_VIEW_MM / max(rows, cols))
    _anatomic_region(ds, body_part)
    ds.ViewPosition = view_position
    ds.PatientOrientation = _ORIENTATION.get(view_position, ["L", "F"])
    ds.ImageLaterality = "U"
    if modality == "DX":
        _dx_modules(ds, view_position, photometric)
    _pixels(
        ds,
        phantom.image,
        photometric=photometric,
        bits_stored=bits_stored,
        window=window,
        intercept=rescale_intercept,
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOM_NODE_PH"
    ds.file_meta = meta
    return ds


def write_study(
    folder: Path,
    rng: np.random.Generator,
    *,
    n_images: int = 1,
    lateral: bool = False,
    findings: Collection[str] | None = None,
    size: tuple[int, int] = (512, 512),
    patient_id: str = "PHANTOM-0001",
    patient_name: str = "Phantom^Chest",
    study_uid: str | None = None,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
) -> list[Path]:
    """Write a study of `n_images` PA phantoms (plus a lateral, ViewPosition LL) into `folder`.

    Files are named by position (`image-001.dcm`, ...), never by UID. Without `findings`, each
    PA image gets random findings. The lateral is a phantom labelled LL, for view selection.
    """
    if n_images < 1:
        raise ValueError("a study needs at least one image")
    folder.mkdir(parents=True, exist_ok=True)
    study = study_uid or generate_uid()
    series_pa, series_lat = generate_uid(), generate_uid()
    when = dt.datetime.now().replace(microsecond=0)
    views = ["PA"] * n_images + (["LL"] if lateral else [])
    paths: list[Path] = []
    for i, view in enumerate(views, start=1):
        labels = findings if findings is not None else random_findings(rng)
        phantom = make_phantom(rng, findings=labels if view == "PA" else (), size=size)
        ds = phantom_dataset(
            phantom,
            patient_id=patient_id,
            patient_name=patient_name,
            study_uid=study,
            series_uid=series_pa if view == "PA" else series_lat,
            modality=modality,
            view_position=view,
            photometric=photometric,
            bits_stored=bits_stored,
            series_number=1 if view == "PA" else 2,
            instance_number=i,
            study_datetime=when,
            accession_number=f"PH{study[-8:]}",
        )
        path = folder / f"image-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
