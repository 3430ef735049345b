"""Real-world inputs for the tests: vendor radiographs that packages ship (pydicom-data: a Philips
CR chest PA, MONOCHROME1, 15 bits stored, ISO_IR 100, uncompressed and JPEG 2000 lossless and
lossy; a Fuji CR of a tibia), variants of them made with DCMTK (`dcmodify` to remove or change
attributes, `dcmcjpls`/`dcmcjpeg`/`dcmcrle` to compress), pydicom's ISO 2022 character set
files, and the objects a PACS keeps beside images in a chest study (a GSPS and a KOS, made with
highdicom). Every variant gets fresh Study, Series and SOP Instance UIDs (`dcmodify -gst -gse
-gin`), so each is a study of its own."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from highdicom.pr import GrayscaleSoftcopyPresentationState
from pydicom import Dataset, dcmread
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

PHILIPS_CR_CHEST = "RG1_UNCR.dcm"  # Philips CR, chest PA, MONOCHROME1, 15 bits, ISO_IR 100
PHILIPS_CR_CHEST_J2K_LOSSLESS = "RG1_J2KR.dcm"
PHILIPS_CR_CHEST_J2K_LOSSY = "RG1_J2KI.dcm"
FUJI_CR_TIBIA = "RG3_UNCR.dcm"  # Fuji CR, extremity, MONOCHROME1, 10 bits, no character set

Variant = Callable[[Path], Path]


def vendor_file(name: str) -> Path:
    """A file of pydicom's test data (pydicom-data, installed by the test extra)."""
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not in pydicom's test data (pip install pydicom-data)")
    return Path(str(path))


def dcmtk(tool: str, *args: str) -> None:
    """Run a DCMTK tool by its full path (pynetdicom's scripts shadow some names in the venv)."""
    subprocess.run([f"/usr/bin/{tool}", *args], check=True, capture_output=True, timeout=120)


def fresh_copy(name: str, folder: Path, *modifications: str) -> Path:
    """A copy of the vendor file with new UIDs and `dcmodify` modifications applied."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "image.dcm"
    shutil.copyfile(vendor_file(name), path)
    dcmtk("dcmodify", "-nb", "-gst", "-gse", "-gin", *modifications, str(path))
    return path


def compressed(tool: str, *options: str) -> Variant:
    """The Philips CR compressed with a DCMTK encoder (`dcmcjpls`, `dcmcjpeg`, `dcmcrle`)."""

    def make(folder: Path) -> Path:
        source = fresh_copy(PHILIPS_CR_CHEST, folder / "raw")
        out = folder / "image.dcm"
        dcmtk(tool, *options, str(source), str(out))
        shutil.rmtree(source.parent)
        return out

    return make


def with_patient_name_in(charset_file: str) -> Variant:
    """The Philips CR carrying the patient name and character set of one of pydicom's ISO 2022
    files (Japanese `\\ISO 2022 IR 87`, Korean `\\ISO 2022 IR 149`)."""

    def make(folder: Path) -> Path:
        path = fresh_copy(PHILIPS_CR_CHEST, folder)
        names = dcmread(get_charset_files(charset_file)[0])
        ds = dcmread(path)
        ds.SpecificCharacterSet = names.SpecificCharacterSet
        ds.PatientName = names.PatientName
        ds.save_as(path, enforce_file_format=True)
        return path

    return make


def with_request_attributes(folder: Path) -> Path:
    """The Philips CR acquired for an order: Request Attributes Sequence with the requested
    procedure, accession number and the modality worklist's IDs."""
    path = fresh_copy(PHILIPS_CR_CHEST, folder)
    ds = dcmread(path)
    request = Dataset()
    request.AccessionNumber = "ACC-20261201-7"
    request.RequestedProcedureID = "RP-4711"
    request.RequestedProcedureDescription = "XR CHEST PA"
    request.ScheduledProcedureStepID = "SPS-1"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "RPID4711", "99HOSP"
    code.CodeMeaning = "XR chest PA"
    request.RequestedProcedureCodeSequence = Sequence([code])
    ds.RequestAttributesSequence = Sequence([request])
    ds.save_as(path, enforce_file_format=True)
    return path


def view_only_as_code(folder: Path) -> Path:
    """A DX For Presentation whose view is stated only by View Code Sequence (postero-anterior,
    CID 4010), with no View Position."""
    path = fresh_copy(
        PHILIPS_CR_CHEST,
        folder,
        "-m", "(0008,0016)=1.2.840.10008.5.1.4.1.1.1.1",
        "-m", "(0008,0060)=DX",
        "-ea", "(0018,5101)",
    )  # fmt: skip
    ds = dcmread(path)
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator = "272479007", "SCT"
    view.CodeMeaning = "postero-anterior"
    ds.ViewCodeSequence = Sequence([view])
    ds.save_as(path, enforce_file_format=True)
    return path


def gsps_for(image: Dataset, folder: Path) -> Path:
    """A Grayscale Softcopy Presentation State of `image` (as a PACS keeps one)."""
    gsps = GrayscaleSoftcopyPresentationState(
        referenced_images=[image],
        series_instance_uid=generate_uid(),
        series_number=50,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Test PACS",
        manufacturer_model_name="viewer",
        software_versions="1",
        device_serial_number="1",
        content_label="READING",
    )
    return write(gsps, folder / "gsps.dcm")


def kos_for(image: Dataset, folder: Path) -> Path:
    """A Key Object Selection ("Of Interest") flagging `image`."""
    kos = KeyObjectSelectionDocument(
        evidence=[image],
        content=KeyObjectSelection(document_title=codes.DCM.OfInterest, referenced_objects=[image]),
        series_instance_uid=generate_uid(),
        series_number=51,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Test PACS",
    )
    return write(kos, folder / "kos.dcm")


def write(ds: Dataset, path: Path) -> Path:
    """`ds` as a Part 10 file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
