"""Withdrawing results: an IHE IOCM rejection note, a Key Object Selection Document whose title is
(113001, DCM, "Rejected for Quality Reasons") and whose content lists the objects withdrawn (PS3.3
A.35.4, TID 2010; IHE RAD TF IOCM). A PACS that supports IOCM hides or deletes what it names.

The node sends one when a newer analysis supersedes its earlier SR and SCs, and when an operator
retracts a study's results (`dicom-node retract`). Its UIDs are pure functions of what it
withdraws, so sending it again is idempotent.
"""

from __future__ import annotations

from collections.abc import Sequence

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from structured_reports.equipment import apply_series_datetime
from structured_reports.evidence import RESULT_CHARACTER_SET, evidence_header
from structured_reports.results import derive_uid

SERIES_NUMBER = 9909
SERIES_DESCRIPTION = "AI results withdrawn (IOCM rejection note)"
REJECTED_FOR_QUALITY_REASONS = dicom_codes.DCM.RejectedForQualityReasons


def rejection_uids(study_instance_uid: str, rejected_uids: Sequence[str]) -> tuple[str, str]:
    """(series, instance) UIDs of the note withdrawing `rejected_uids`."""
    series = derive_uid("kos-series", study_instance_uid)
    return series, derive_uid("kos", study_instance_uid, *sorted(rejected_uids))


def build_rejection_kos(
    rejected: Sequence[Dataset],
    *,
    manufacturer: str,
    model_name: str,
    software_versions: str,
    instance_number: int = 1,
    series_number: int = SERIES_NUMBER,
) -> Dataset:
    """The rejection note for `rejected` (the headers of the node's own SR and SC instances, all
    of one study): "Rejected for Quality Reasons", each referenced by SOP Class and Instance.
    The note is the node's act, not a model's: its equipment is the node software's."""
    if not rejected:
        raise ValueError("a rejection note needs at least one rejected instance")
    evidence = [evidence_header(ds) for ds in rejected]
    study = str(evidence[0].StudyInstanceUID)
    if any(str(ds.StudyInstanceUID) != study for ds in evidence):
        raise ValueError("a rejection note withdraws instances of one study only")
    series_uid, sop_uid = rejection_uids(study, [str(ds.SOPInstanceUID) for ds in evidence])
    kos = KeyObjectSelectionDocument(
        evidence=evidence,
        content=KeyObjectSelection(
            document_title=REJECTED_FOR_QUALITY_REASONS, referenced_objects=evidence
        ),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        specific_character_set=RESULT_CHARACTER_SET,
    )
    kos.SeriesDescription = SERIES_DESCRIPTION
    kos.ManufacturerModelName = model_name
    kos.SoftwareVersions = software_versions
    apply_series_datetime(kos)
    return kos
