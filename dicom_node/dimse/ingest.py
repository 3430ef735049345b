"""Durable intake of received instances: validate a C-STORE request without decoding pixels,
spool its bytes atomically, commit the instance row and its audit event in one transaction; and
the bookkeeping of which associations still hold which studies.

What is stored (docs/results.md): CR and DX images in full; every other object a PACS sends
within a study (presentation states, key object selections, reports, documents, other images)
without its pixel data, its header kept for the record and for the study's SR; the node's own
results coming back not at all (recognised by their SOP Instance UID), and they never re-open a
study. An instance received again with the same SOP Instance UID but other content replaces
the first, which is kept beside it; the audit trail says so.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pydicom import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event as PynetdicomEvent
from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.errors import (
    SOP_CLASS_MISMATCH,
    UID_MISMATCH,
    CannotUnderstand,
    OutOfResources,
    StoreError,
)
from dicom_node.store import result_objects as objects
from dicom_node.store.schema import Instance, Job, Study, utcnow
from dicom_node.store.spool import Spool
from dicom_node.store.uids import checked_uid

log = logging.getLogger(__name__)

MANUFACTURER = "dicom-node"  # the Manufacturer of the node's results (the model identity's)
UID_PREFIX = "2.25."  # the root of the node's derived UIDs (structured_reports.results)


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


class Ingest:
    """Durable intake of instances and the bookkeeping of which associations hold which studies."""

    def __init__(self, spool: Spool, sessions: sessionmaker[Session]) -> None:
        self.spool = spool
        self.sessions = sessions
        self._lock = threading.Lock()
        self._open: dict[int, set[str]] = {}

    def reset_open_associations(self) -> None:
        """At start-up no association is open: clear counts a crashed process left behind."""
        with self.sessions.begin() as session:
            session.execute(update(Study).values(open_associations=0))

    def store(self, item: ReceivedInstance, peer: Peer, association: int) -> Outcome:
        """Spool then commit; raise OutOfResources when either fails. The node's own results
        are recorded and not stored (Outcome.SKIPPED)."""
        digest = hashlib.sha256(item.data).hexdigest()
        own, earlier = self._look_up(item)
        if own:
            self._record_own_result(item, peer)
            return Outcome.SKIPPED
        if earlier == digest:
            self._commit(item, peer, association, digest, duplicate=True)
            return Outcome.DUPLICATE
        path = self.spool.instance_path(item.study_instance_uid, item.sop_instance_uid)
        try:
            kept = _keep_earlier(path, earlier) if earlier else None
            self.spool.store(path, item.data)
        except OSError as exc:
            raise OutOfResources(f"cannot write to the spool: {exc.strerror}") from exc
        note = (
            f"; replaces the instance received before with other content, kept as {kept.name}"
            if kept
            else ""
        )
        self._commit(item, peer, association, digest, duplicate=False, path=str(path), note=note)
        return Outcome.SUCCESS

    def reject(self, peer: Peer, error: StoreError, sop_instance_uid: str | None) -> None:
        try:
            with self.sessions.begin() as session:
                audit.record(
                    session,
                    Event.INSTANCE_REJECTED,
                    Outcome.FAILURE,
                    peer=peer,
                    sop_instance_uid=sop_instance_uid if sop_instance_uid else None,
                    detail=f"status 0x{error.status:04X}: {error}",
                )
        except SQLAlchemyError:
            log.exception("could not audit a rejected instance")

    def close_association(self, association: int) -> None:
        """The association ended: its studies may become ready after the quiet period."""
        with self._lock:
            studies = self._open.pop(association, set())
        if not studies:
            return
        with self.sessions.begin() as session:
            for uid in studies:
                study = session.get(Study, uid)
                if study is not None:
                    study.open_associations = max(0, study.open_associations - 1)

    def _look_up(self, item: ReceivedInstance) -> tuple[bool, str | None]:
        """(is it one of the node's own results?, the SHA-256 of the instance received before
        with this SOP Instance UID, if any)."""
        try:
            with self.sessions() as session:
                if is_own_result(session, item):
                    return True, None
                known = session.get(Instance, item.sop_instance_uid)
                return False, known.sha256 if known else None
        except SQLAlchemyError as exc:
            raise OutOfResources("database unavailable") from exc

    def _record_own_result(self, item: ReceivedInstance, peer: Peer) -> None:
        try:
            with self.sessions.begin() as session:
                audit.record(
                    session,
                    Event.INSTANCE_RECEIVED,
                    Outcome.SKIPPED,
                    peer=peer,
                    patient_id=item.patient_id,
                    study_instance_uid=item.study_instance_uid,
                    sop_instance_uid=item.sop_instance_uid,
                    sop_class_uid=item.sop_class_uid,
                    detail="the node's own result coming back: not stored, not analysed",
                )
        except SQLAlchemyError as exc:
            raise OutOfResources("database unavailable") from exc

    def _commit(
        self,
        item: ReceivedInstance,
        peer: Peer,
        association: int,
        digest: str,
        *,
        duplicate: bool,
        path: str = "",
        note: str = "",
    ) -> None:
        kept = "" if item.pixels_kept else ", stored without its pixel data (not read by the model)"
        try:
            with self.sessions.begin() as session:
                if not duplicate:
                    self._upsert(
                        session, item, peer, association=association, digest=digest, path=path
                    )
                audit.record(
                    session,
                    Event.INSTANCE_RECEIVED,
                    Outcome.DUPLICATE if duplicate else Outcome.SUCCESS,
                    peer=peer,
                    patient_id=item.patient_id,
                    study_instance_uid=item.study_instance_uid,
                    sop_instance_uid=item.sop_instance_uid,
                    sop_class_uid=item.sop_class_uid,
                    detail=f"transfer syntax {item.transfer_syntax_uid}, {len(item.data)} bytes"
                    f"{kept}{note}",
                )
        except SQLAlchemyError as exc:
            raise OutOfResources("database unavailable") from exc

    def _upsert(
        self,
        session: Session,
        item: ReceivedInstance,
        peer: Peer,
        *,
        association: int,
        digest: str,
        path: str,
    ) -> None:
        now = utcnow()
        study = session.get(Study, item.study_instance_uid)
        if study is None:
            study = Study(
                study_instance_uid=item.study_instance_uid,
                state="receiving",
                open_associations=0,
                first_received_at=now,
                last_instance_at=now,
                calling_ae=peer.calling_ae or "",
            )
            session.add(study)
            session.flush()  # the study row first: instances refer to it
        study.state = "receiving"
        study.last_instance_at = now
        session.execute(  # a late instance re-opens the study: a queued analysis is superseded
            update(Job)
            .where(Job.study_instance_uid == item.study_instance_uid, Job.state == "queued")
            .values(state="superseded", finished_at=now, detail="a late instance arrived")
        )
        with self._lock:
            held = self._open.setdefault(association, set())
            if item.study_instance_uid not in held:
                held.add(item.study_instance_uid)
                study.open_associations += 1
        session.merge(
            Instance(
                sop_instance_uid=item.sop_instance_uid,
                study_instance_uid=item.study_instance_uid,
                series_instance_uid=item.series_instance_uid,
                sop_class_uid=item.sop_class_uid,
                transfer_syntax_uid=item.transfer_syntax_uid,
                path=path,
                size=len(item.data),
                sha256=digest,
                calling_ae=peer.calling_ae or "",
                received_at=now,
                pixels_kept=item.pixels_kept,
            )
        )


def is_own_result(session: Session, item: ReceivedInstance) -> bool:
    """An object the node emitted: its UID is in `result_objects`, or it bears the node's
    derived-UID root and manufacturer (results of an earlier database)."""
    if objects.find(session, item.sop_instance_uid) is not None:
        return True
    return item.sop_instance_uid.startswith(UID_PREFIX) and item.manufacturer == MANUFACTURER


def _keep_earlier(path: Path, digest: str) -> Path | None:
    """A second name for the file received before under this SOP Instance UID, so that the new
    content can take its place (a hard link: no copy, and atomic)."""
    aside = path.with_name(f"{path.stem}.replaced-{digest[:12]}{path.suffix}")
    if path.exists() and not aside.exists():
        os.link(path, aside)
    return aside
