"""Reading a C-STORE request: its identifying UIDs validated from the header alone, what to
spool: the file pynetdicom received into, or, for an object the model never reads, its header
without pixel data."""

from __future__ import annotations

import functools
import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from pydicom import Dataset, dcmread
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation
from pynetdicom import _config, dimse_messages
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event as PynetdicomEvent

from dicom_node.errors import SOP_CLASS_MISMATCH, UID_MISMATCH, CannotUnderstand, StoreError
from dicom_node.store.spool import TEMPORARY_PREFIX
from dicom_node.store.uids import checked_uid

# The classes whose pixels the model may read (or whose reason for a skip needs them).
PIXELS_KEPT = frozenset(
    {str(ComputedRadiographyImageStorage), str(DigitalXRayImageStorageForPresentation)}
)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReceivedInstance:
    """A C-STORE request that passed validation, and what to spool: the Part 10 file pynetdicom
    wrote as the data set arrived (`source`), or encoded bytes (`data`: an object the model never
    reads, without its pixel data; `pixels_kept` False)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str | None
    data: bytes | None = None
    source: Path | None = None
    manufacturer: str = ""
    pixels_kept: bool = True

    size: int = -1  # bytes to spool; taken on creation (the source file moves when spooled)

    def __post_init__(self) -> None:
        if self.size < 0:
            size = len(self.data) if self.data is not None else None
            if size is None:
                size = self.source.stat().st_size if self.source is not None else 0
            object.__setattr__(self, "size", size)

    def sha256(self) -> str:
        """SHA-256 of the bytes to spool (a file is read in chunks, never whole)."""
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        assert self.source is not None
        with self.source.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()


def read_request(event: PynetdicomEvent) -> ReceivedInstance:
    """Validate a C-STORE request from its header alone (pixels are neither read nor decoded);
    raise CannotUnderstand when invalid. The data set is the file pynetdicom wrote as it arrived
    (`receive_to_files`)."""
    request = cast(C_STORE, event.request)
    sop_uid = checked_uid(request.AffectedSOPInstanceUID, "Affected SOP Instance UID")
    sop_class = checked_uid(request.AffectedSOPClassUID, "Affected SOP Class UID")
    path = Path(event.dataset_path)
    try:
        ds: Dataset = dcmread(path, stop_before_pixels=True)
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
    keep = sop_class in PIXELS_KEPT
    return ReceivedInstance(
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        study_instance_uid=checked_uid(study_uid, "Study Instance UID"),
        series_instance_uid=checked_uid(series_uid, "Series Instance UID"),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        patient_id=str(patient_id) if patient_id else None,
        manufacturer=manufacturer,
        source=path if keep else None,
        data=None if keep else _encoded(ds),
        pixels_kept=keep,
    )


def receive_to_files(incoming: Path) -> None:
    """Make pynetdicom write each incoming C-STORE data set to a file in `incoming` as its PDUs
    arrive, instead of holding it in memory (and again as a parsed dataset): receiving an
    instance costs about one PDU of memory, whatever its size. With `incoming` on the spool's
    file system, storing the instance is a rename of that file, not a copy.

    pynetdicom's setting and its temporary files are per process: one receiving node per process
    (as `dicom-node serve` runs); a later call moves where every listener's files go."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    incoming.mkdir(parents=True, exist_ok=True)
    dimse_messages.NamedTemporaryFile = functools.partial(_incoming_file, incoming)  # type: ignore[attr-defined,assignment]


def _incoming_file(folder: Path, **_: Any) -> IO[bytes]:
    """pynetdicom's temporary file for a data set being received, in `folder`, named as the
    spool's temporary files are (so that the ones a crash leaves behind are swept). Where the
    spool cannot be written, the system's temporary folder: the data set is still received,
    and its C-STORE answered (0xA700, the spool being unusable) instead of the association
    being dropped."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        directory: Path | None = folder
    except OSError:
        directory = None
    try:
        return tempfile.NamedTemporaryFile(  # pynetdicom closes it
            mode="wb", delete=False, dir=directory, prefix=TEMPORARY_PREFIX, suffix=".tmp"
        )
    except OSError:
        if directory is None:
            raise
        return tempfile.NamedTemporaryFile(mode="wb", delete=False, suffix=".dcm")


def _encoded(header: Dataset) -> bytes:
    """The header (read up to the pixel data) as a Part 10 file: what the node keeps of an
    object the model never reads."""
    buffer = io.BytesIO()
    header.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
