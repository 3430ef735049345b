"""The IOCM rejection note (structured_reports.kos): a Key Object Selection Document titled
"Rejected for Quality Reasons" that names each withdrawn SR and SC, passes dciodvfy, survives a
byte round trip, and has UIDs that depend only on what it withdraws."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
from dicom_validators import dciodvfy_errors
from pydicom import Dataset, dcmread
from test_sc import image_result
from test_sr import MODEL, mixed_study, to_bytes

from structured_reports.kos import build_rejection_kos
from structured_reports.sc import build_gradcam_sc
from structured_reports.sr import build_classification_sr

NODE = {"manufacturer": "dicom-node", "model_name": "dicom-node", "software_versions": "0.1.0"}


def _withdrawn() -> list[Dataset]:
    study = mixed_study()
    sr = build_classification_sr(study)
    sc = build_gradcam_sc(image_result(), MODEL)
    return [sr, sc]


def test_rejection_note_names_every_withdrawn_object_and_validates(tmp_path: Path) -> None:
    """Title (113001, DCM); one reference per withdrawn instance, with its SOP Class; the study's
    patient; no dciodvfy error; unchanged by a write and read."""
    withdrawn = _withdrawn()
    kos = build_rejection_kos(withdrawn, **NODE)
    assert dciodvfy_errors(kos, tmp_path) == []
    back = dcmread(io.BytesIO(to_bytes(kos)))
    title = back.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    referenced = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID: item.ReferencedSOPSequence[0]
        for item in back.ContentSequence
        if "ReferencedSOPSequence" in item
    }
    assert set(referenced) == {str(ds.SOPInstanceUID) for ds in withdrawn}
    for ds in withdrawn:
        assert referenced[str(ds.SOPInstanceUID)].ReferencedSOPClassUID == ds.SOPClassUID
    assert back.StudyInstanceUID == withdrawn[0].StudyInstanceUID
    assert str(back.PatientID) == str(withdrawn[0].PatientID)


def test_uids_depend_only_on_what_is_withdrawn() -> None:
    """The same withdrawn set gives the same note; another set another instance, same series."""
    withdrawn = _withdrawn()
    first = build_rejection_kos(withdrawn, **NODE)
    again = build_rejection_kos(list(reversed(withdrawn)), **NODE)
    only_sr = build_rejection_kos(withdrawn[:1], **NODE)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    assert only_sr.SOPInstanceUID != first.SOPInstanceUID
    assert only_sr.SeriesInstanceUID == first.SeriesInstanceUID


def test_empty_or_mixed_studies_are_refused() -> None:
    """Nothing to withdraw, or objects of two studies: ValueError."""
    with pytest.raises(ValueError, match="at least one"):
        build_rejection_kos([], **NODE)
    sr = _withdrawn()[0]
    other = copy.deepcopy(sr)
    other.StudyInstanceUID = "1.2.3.4"
    other.SOPInstanceUID = "1.2.3.4.5"
    with pytest.raises(ValueError, match="one study"):
        build_rejection_kos([sr, other], **NODE)
