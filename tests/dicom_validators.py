"""Run real DICOM validators (dicom3tools dciodvfy, DCMTK dsrdump/dsr2html) over built datasets."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian


def tool_path(name: str) -> Path | None:
    """`name` on PATH, or next to the interpreter (the venv's bin/ where dicom3tools installs)."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidate = Path(sys.executable).parent / name
    return candidate if candidate.exists() else None


def require_tool(name: str) -> Path:
    """The tool's path, or skip the calling test with the reason (DCMTK is a system package)."""
    path = tool_path(name)
    if path is None:
        pytest.skip(f"{name} not installed (DCMTK / dicom3tools)")
    return path


def write_part10(ds: Dataset, tmp_path: Path, name: str = "object.dcm") -> Path:
    """Write `ds` as a DICOM Part 10 file under `tmp_path`."""
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def dciodvfy_report(ds: Dataset, tmp_path: Path) -> list[str]:
    """Every line dciodvfy prints about `ds` (errors, warnings, notes)."""
    exe = tool_path("dciodvfy")
    if exe is None:
        raise FileNotFoundError("dciodvfy not found: install the test extra (dicom3tools)")
    path = write_part10(ds, tmp_path, "dciodvfy.dcm")
    done = subprocess.run(
        [str(exe), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def dciodvfy_errors(ds: Dataset, tmp_path: Path) -> list[str]:
    """The lines of dciodvfy's report on `ds` that are errors ("Error - ..."): tests expect none."""
    return [line for line in dciodvfy_report(ds, tmp_path) if line.startswith("Error")]


def dciodvfy_warnings(ds: Dataset, tmp_path: Path) -> list[str]:
    """The lines of dciodvfy's report on `ds` that are warnings."""
    return [line for line in dciodvfy_report(ds, tmp_path) if line.startswith("Warning")]


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK tool (skipping the test when it is not installed)."""
    exe = require_tool(name)
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, timeout=60, check=False
    )


# --- realistic source radiographs the encoders are run on -----------------------------------

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
STUDY_UID = "1.2.826.0.1.3680043.10.1234.1"


def chest_radiograph(
    *,
    number: int = 1,
    modality: str = "DX",
    view: str = "PA",
    photometric: str = "MONOCHROME2",
    size: int = 256,
    study_uid: str = STUDY_UID,
) -> Dataset:
    """A chest radiograph as a modality sends it: patient, study, series, 16-bit pixels.

    DX (For Presentation) or CR; `view` "PA", "AP" or "LL" (lateral); MONOCHROME1 or 2.
    """
    ds = Dataset()
    ds.SOPClassUID = DX_FOR_PRESENTATION if modality == "DX" else CR_IMAGE
    ds.SOPInstanceUID = f"{study_uid}.{number}.1"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Doe^Jane^^Ms"
    ds.PatientID = "PID-000123"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientBirthDate = "19700412"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20240305"
    ds.StudyTime = "101530"
    ds.AccessionNumber = "ACC-42"
    ds.StudyID = "S42"
    ds.ReferringPhysicianName = "House^Gregory"
    ds.StudyDescription = "XR CHEST"
    ds.SeriesInstanceUID = f"{study_uid}.{number}"
    ds.SeriesNumber = number
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Manufacturer = "Acme Imaging"
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = ds.StudyTime
    ds.PatientOrientation = ["P", "F"] if view == "LL" else ["L", "F"]
    if modality == "DX":  # CR often carries no imager pixel spacing
        ds.ImagerPixelSpacing = [0.143, 0.143]
    _add_pixels(ds, size, photometric)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _add_pixels(ds: Dataset, size: int, photometric: str) -> None:
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = ((xx + yy) * (4095 / (2 * size))).astype(np.uint16)
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = pixels.tobytes()
