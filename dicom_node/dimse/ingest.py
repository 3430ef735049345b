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

import datetime as dt
import logging
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.dimse.request import ReceivedInstance
from dicom_node.errors import (
    OutOfResources,
    StoreError,
)
from dicom_node.store import result_objects as objects
from dicom_node.store.schema import Instance, Job, Study, utcnow
from dicom_node.store.spool import Spool
from structured_reports.results import NODE_MANUFACTURER, UID_PREFIX

log = logging.getLogger(__name__)
T = TypeVar("T")


class Ingest:
    """Durable intake of instances and the bookkeeping of which associations hold which studies."""

    def __init__(
        self,
        spool: Spool,
        sessions: sessionmaker[Session],
        *,
        max_instance_bytes: int = 1 << 30,
        min_free_disk_bytes: int = 0,
        timeout_seconds: float = 8.0,
        concurrency: int = 256,
        on_released: Callable[[set[str]], None] | None = None,
    ) -> None:
        """`concurrency`: as many database units of work at once as associations may be open
        (threads are made as needed), so that none waits for a thread and times out falsely.
        `on_released`: told the studies an ended association held, once recorded (the quiet
        timers that promote them)."""
        self.spool = spool
        self.sessions = sessions
        self.max_instance_bytes = max_instance_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self.timeout_seconds = timeout_seconds
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="ingest")
        self._lock = threading.Lock()
        self._open: dict[int, set[str]] = {}
        self._closed: set[int] = set()  # ended associations: a store completing late counts none
        self._unreleased: list[set[str]] = []  # releases the database could not take yet
        self._on_released = on_released

    def reset_open_associations(self, idle_seconds: float) -> int:
        """Clear the counts a crashed receiver left behind: of studies with no instance for
        `idle_seconds` (longer than an association may stay silent, so none of them is open in
        any live receiver: several receivers may share the database). How many were cleared."""
        cutoff = utcnow() - dt.timedelta(seconds=idle_seconds)
        with self.sessions.begin() as session:
            result = session.execute(
                update(Study)
                .where(Study.open_associations > 0, Study.last_instance_at < cutoff)
                .values(open_associations=0)
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def store_in_time(self, item: ReceivedInstance, peer: Peer, association: int) -> Outcome:
        """`store`, or OutOfResources when it takes longer than the database timeout (a silent
        database): the sender gets 0xA700 in seconds and retries; should the store complete
        later, the retry is a duplicate, which is idempotent."""
        try:
            return self.in_time(self.store, item, peer, association)
        except FutureTimeout as exc:
            raise OutOfResources(
                f"the database did not answer within {self.timeout_seconds:g} s"
            ) from exc

    def in_time(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` within the database timeout, else FutureTimeout (the work goes on)."""
        return self._executor.submit(work, *args).result(timeout=self.timeout_seconds)

    def store(self, item: ReceivedInstance, peer: Peer, association: int) -> Outcome:
        """Spool then commit; raise OutOfResources when either fails, when the instance is
        larger than allowed or the spool's disk is below its watermark. The node's own results
        are recorded and not stored (Outcome.SKIPPED)."""
        size = item.size
        self._check_room(size)
        digest = item.sha256()
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
            if item.data is not None:
                self.spool.store(path, item.data)
            else:
                assert item.source is not None
                self.spool.store_file(path, item.source)
        except OSError as exc:
            raise OutOfResources(f"cannot write to the spool: {exc.strerror}") from exc
        note = (
            f"; replaces the instance received before with other content, kept as {kept.name}"
            if kept
            else ""
        )
        self._commit(item, peer, association, digest, duplicate=False, path=str(path), note=note)
        return Outcome.SUCCESS

    def _check_room(self, size: int) -> None:
        if size > self.max_instance_bytes:
            raise OutOfResources(
                f"instance of {size} bytes is larger than max_instance_bytes "
                f"({self.max_instance_bytes})"
            )
        folder = self.spool.root
        while not folder.exists() and folder != folder.parent:  # the spool is made on first use
            folder = folder.parent
        try:
            free = shutil.disk_usage(folder).free
        except OSError as exc:
            raise OutOfResources(f"spool unavailable: {exc.strerror}") from exc
        if free - size < self.min_free_disk_bytes:
            raise OutOfResources(
                f"spool disk has {free} bytes free, below min_free_disk_bytes "
                f"({self.min_free_disk_bytes}) with this instance"
            )

    def reject(self, peer: Peer, error: StoreError, sop_instance_uid: str | None) -> None:
        """Audit a refused C-STORE, within the database timeout (the answer must not wait)."""

        def write() -> None:
            with self.sessions.begin() as session:
                audit.record(
                    session,
                    Event.INSTANCE_REJECTED,
                    Outcome.FAILURE,
                    peer=peer,
                    sop_instance_uid=sop_instance_uid if sop_instance_uid else None,
                    detail=f"status 0x{error.status:04X}: {error}",
                )

        try:
            self.in_time(write)
        except (SQLAlchemyError, FutureTimeout):
            log.error("could not audit a refused instance (database unavailable)")

    def open_association(self, association: int) -> None:
        """An association was accepted (its key may be one an ended association had)."""
        with self._lock:
            self._closed.discard(association)

    def close_association(self, association: int) -> None:
        """The association ended: its studies may become ready after the quiet period. When the
        database cannot take it now, the release is kept and made by `retry_releases`. A store
        of this association that completes later (after its answer timed out) holds no study
        open."""
        with self._lock:
            studies = self._open.pop(association, set())
            self._closed.add(association)
            if studies:
                self._unreleased.append(studies)
        self.retry_releases()

    def retry_releases(self) -> None:
        """Record the releases the database could not take when they happened (called on every
        release and by the node's housekeeping every few seconds)."""
        with self._lock:
            pending, self._unreleased = self._unreleased, []
        for index, studies in enumerate(pending):
            try:
                self._release(studies)
                if self._on_released is not None:
                    self._on_released(studies)
            except SQLAlchemyError:
                with self._lock:
                    self._unreleased[:0] = pending[index:]
                log.warning(
                    "database unavailable: %d release(s) kept for later", len(pending) - index
                )
                return

    def _release(self, studies: set[str]) -> None:
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
                    detail=f"transfer syntax {item.transfer_syntax_uid}, {item.size} bytes"
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
        elif study.state != "receiving":  # a late instance re-opens the study ...
            study.state = "receiving"
            session.execute(  # ... and a queued analysis of it is superseded
                update(Job)
                .where(Job.study_instance_uid == item.study_instance_uid, Job.state == "queued")
                .values(state="superseded", finished_at=now, detail="a late instance arrived")
            )
        study.last_instance_at = now
        with self._lock:
            if association not in self._closed:
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
                size=item.size,
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
    return item.sop_instance_uid.startswith(UID_PREFIX) and item.manufacturer == NODE_MANUFACTURER


def _keep_earlier(path: Path, digest: str) -> Path | None:
    """A second name for the file received before under this SOP Instance UID, so that the new
    content can take its place (a hard link: no copy, and atomic)."""
    aside = path.with_name(f"{path.stem}.replaced-{digest[:12]}{path.suffix}")
    if path.exists() and not aside.exists():
        os.link(path, aside)
    return aside
