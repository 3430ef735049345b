"""Reading a C-STORE request: its identifying UIDs validated without decoding pixels, its bytes
ready to spool (an object the model never reads without its pixel data)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import cast

from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event as PynetdicomEvent

from dicom_node.errors import SOP_CLASS_MISMATCH, UID_MISMATCH, CannotUnderstand, StoreError
from dicom_node.store.uids import checked_uid

# The classes whose pixels the model may read (or whose reason for a skip needs them).
PIXELS_KEPT = frozenset(
    {str(ComputedRadiographyImageStorage), str(DigitalXRayImageStorageForPresentation)}
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True, kw_only=True, slots=True)
class ReceivedInstance:
    """A C-STORE request that passed validation, with its encoded bytes ready to spool
    (`pixels_kept` False: an object the model never reads, encoded without its pixel data)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str | None
    data: bytes
    manufacturer: str = ""
    pixels_kept: bool = True


def read_request(event: PynetdicomEvent) -> ReceivedInstance:
    """Validate a C-STORE request without decoding pixels; raise CannotUnderstand when invalid."""
    request = cast(C_STORE, event.request)
    sop_uid = checked_uid(request.AffectedSOPInstanceUID, "Affected SOP Instance UID")
    sop_class = checked_uid(request.AffectedSOPClassUID, "Affected SOP Class UID")
    try:
        ds: Dataset = event.dataset
        study_uid = ds.get("StudyInstanceUID")
        series_uid = ds.get("SeriesInstanceUID")
        dataset_sop_uid = ds.get("SOPInstanceUID")
        dataset_sop_class = ds.get("SOPClassUID")
        patient_id = ds.get("PatientID")
        manufacturer = str(ds.get("Manufacturer", "") or "")
    except Exception as exc:  # a dataset pydicom cannot parse: any parser error
        raise CannotUnderstand(f"dataset cannot be parsed: {type(exc).__name__}") from exc
    if dataset_sop_uid != sop_uid:
        raise CannotUnderstand("SOP Instance UID differs from the request's", status=UID_MISMATCH)
    if dataset_sop_class != sop_class:
        raise StoreError("SOP Class UID differs from the request's", status=SOP_CLASS_MISMATCH)
    keep = sop_class in PIXELS_KEPT or not any(k in ds for k in _PIXEL_KEYWORDS)
    return ReceivedInstance(
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        study_instance_uid=checked_uid(study_uid, "Study Instance UID"),
        series_instance_uid=checked_uid(series_uid, "Series Instance UID"),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        patient_id=str(patient_id) if patient_id else None,
        manufacturer=manufacturer,
        data=event.encoded_dataset() if keep else _without_pixels(event, ds),
        pixels_kept=keep,
    )


def _without_pixels(event: PynetdicomEvent, ds: Dataset) -> bytes:
    """The dataset as a Part 10 file without its pixel data (the header of an object the model
    never reads)."""
    header = Dataset()
    for tag in list(ds.keys()):
        if ds[tag].keyword not in _PIXEL_KEYWORDS:
            header[tag] = ds[tag]
    header.file_meta = event.file_meta
    buffer = io.BytesIO()
    header.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
