"""Durable intake of received instances: validate a C-STORE request without decoding pixels,
spool its bytes atomically, commit the instance row and its audit event in one transaction; and
the bookkeeping of which associations still hold which studies."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import cast

from pydicom import Dataset
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
from dicom_node.store.schema import Instance, Job, Study, utcnow
from dicom_node.store.spool import Spool
from dicom_node.store.uids import checked_uid

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReceivedInstance:
    """A C-STORE request that passed validation, with its encoded bytes ready to spool."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str | None
    data: bytes


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
    except Exception as exc:  # a dataset pydicom cannot parse: any parser error
        raise CannotUnderstand(f"dataset cannot be parsed: {type(exc).__name__}") from exc
    if dataset_sop_uid != sop_uid:
        raise CannotUnderstand("SOP Instance UID differs from the request's", status=UID_MISMATCH)
    if dataset_sop_class != sop_class:
        raise StoreError("SOP Class UID differs from the request's", status=SOP_CLASS_MISMATCH)
    return ReceivedInstance(
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        study_instance_uid=checked_uid(study_uid, "Study Instance UID"),
        series_instance_uid=checked_uid(series_uid, "Series Instance UID"),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        patient_id=str(patient_id) if patient_id else None,
        data=event.encoded_dataset(),
    )


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
        """Spool then commit; raise OutOfResources when either fails."""
        digest = hashlib.sha256(item.data).hexdigest()
        if self._is_duplicate(item, digest):
            self._commit(item, peer, association, digest, duplicate=True)
            return Outcome.DUPLICATE
        path = self.spool.instance_path(item.study_instance_uid, item.sop_instance_uid)
        try:
            self.spool.store(path, item.data)
        except OSError as exc:
            raise OutOfResources(f"cannot write to the spool: {exc.strerror}") from exc
        self._commit(item, peer, association, digest, duplicate=False, path=str(path))
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

    def _is_duplicate(self, item: ReceivedInstance, digest: str) -> bool:
        try:
            with self.sessions() as session:
                known = session.get(Instance, item.sop_instance_uid)
                return known is not None and known.sha256 == digest
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
    ) -> None:
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
                    detail=f"transfer syntax {item.transfer_syntax_uid}, {len(item.data)} bytes",
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
            )
        )
