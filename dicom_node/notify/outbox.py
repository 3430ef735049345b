"""The notification outbox: rows planned in the job's transaction (`plan_notifications`), sent
by a `Notifier` thread apart from the pipeline, retried with backoff, dead-lettered after the
retry window; every attempt audited and counted.

Several processes may run a `Notifier` on one database: a row is claimed by moving its due time
past the send timeout with a conditional UPDATE (rowcount 1 = ours), so that no two send it at
once and a claimer that died gives it back when that time passes.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from urllib.parse import urlsplit

from pydicom import Dataset
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.metrics import NOTIFICATIONS
from dicom_node.notify.critical import CriticalFinding, NotifyError, critical_findings
from dicom_node.notify.hl7 import oru_r01, send_mllp
from dicom_node.notify.webhook import post, webhook_body
from dicom_node.settings import Settings
from dicom_node.store.schema import Notification, utcnow
from structured_reports.results import StudyResult

log = logging.getLogger(__name__)

WEBHOOK, HL7 = "webhook", "hl7"
DUE_STATES = ("pending", "failed")
BATCH = 50  # rows looked at per run_once
IDLE_SECONDS = 0.5
ERROR_CHARS = 1000


def plan_notifications(
    session: Session,
    *,
    job_id: int,
    study: StudyResult,
    sr_sop_instance_uid: str,
    header: Dataset,
    critical: Mapping[str, float],
    settings: Settings,
) -> list[int]:
    """Within the caller's transaction, one pending notification per configured receiver
    (webhook when `webhook_url`, HL7 when `hl7_host`) of a study with a critical finding, its
    payload built now and due now; none where one of that kind exists for the SR already (a
    re-run that makes the same SR sends nothing new). Returns the ids of the new rows.

    A payload that cannot be built (an HL7 value hl7apy refuses) never fails the caller's job:
    its row is dead at once, with the reason, audited and counted."""
    findings = critical_findings(study, critical)
    if not findings:
        return []
    now = utcnow()
    made = []
    for kind, target in _receivers(settings):
        row = Notification(
            job_id=job_id,
            study_instance_uid=study.study_instance_uid,
            sr_sop_instance_uid=sr_sop_instance_uid,
            kind=kind,
            target=target,
            payload="",
            state="pending",
            attempts=0,
            created_at=now,
            updated_at=now,
            due_at=now,
        )
        try:
            row.payload = _payload(
                kind,
                study=study,
                findings=findings,
                header=header,
                sr_sop_instance_uid=sr_sop_instance_uid,
                settings=settings,
                now=now,
            )
        except Exception as exc:  # recorded as a dead notification, not raised into the job
            row.state, row.due_at = "dead", None
            row.last_error = f"payload not built: {type(exc).__name__}: {exc}"[:ERROR_CHARS]
        if _insert_once(session, row):
            made.append(row.id)
            if row.state == "dead":
                _unbuilt(session, row, study.model.label)
    return made


def _unbuilt(session: Session, row: Notification, model: str) -> None:
    """Audit, count and log a notification whose payload could not be built."""
    _audit(
        session,
        row,
        Event.NOTIFICATION_FAILED,
        f"{row.kind} dead-lettered: {row.last_error}",
        model,
    )
    NOTIFICATIONS.labels(kind=row.kind, outcome="dead").inc()
    log.error("notification %d (%s): its payload could not be built", row.id, row.kind)


def _receivers(settings: Settings) -> list[tuple[str, str]]:
    receivers = []
    if settings.webhook_url:
        receivers.append((WEBHOOK, settings.webhook_url))
    if settings.hl7_host:
        receivers.append((HL7, f"{settings.hl7_host}:{settings.hl7_port}"))
    return receivers


def _payload(
    kind: str,
    *,
    study: StudyResult,
    findings: list[CriticalFinding],
    header: Dataset,
    sr_sop_instance_uid: str,
    settings: Settings,
    now: dt.datetime,
) -> str:
    if kind == WEBHOOK:
        return webhook_body(
            study=study,
            findings=findings,
            header=header,
            sr_sop_instance_uid=sr_sop_instance_uid,
            now=now,
        )
    return oru_r01(
        study=study,
        findings=findings,
        header=header,
        sr_sop_instance_uid=sr_sop_instance_uid,
        settings=settings,
        now=now,
    )


def _insert_once(session: Session, row: Notification) -> bool:
    """Add `row` unless its (SR, kind) has one; a concurrent planner's row wins (savepoint)."""
    exists = session.scalar(
        select(Notification.id).where(
            Notification.sr_sop_instance_uid == row.sr_sop_instance_uid,
            Notification.kind == row.kind,
        )
    )
    if exists is not None:
        return False
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return False
    return True


def peer_address(target: str) -> str:
    """host:port of a notification's target, as audited and logged: a URL's path and query (which
    may carry a token) and its user information are left out."""
    if "://" not in target:
        return target
    parts = urlsplit(target)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def retry_delay(settings: Settings, attempts: int) -> float:
    """Seconds until the next try after the `attempts`-th failed one: retry_initial_seconds,
    doubled per failure, at most retry_max_interval_seconds."""
    return float(
        min(
            settings.retry_max_interval_seconds,
            settings.retry_initial_seconds * 2 ** (attempts - 1),
        )
    )


class Notifier:
    """Sends the due notifications of the database, one at a time, apart from the pipeline."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, *, model: str | None = None
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._model = model
        self._lease = dt.timedelta(seconds=settings.notify_timeout_seconds * 3)

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Send due notifications until `stop` is set; when none is due, wait 0.5 s or until
        `wake` is set. Never raises: an error (the database down) is logged and the loop goes on."""
        while not stop.is_set():
            try:
                attempted = self.run_once(stop)
            except Exception:
                log.exception("notifier: sending due notifications failed; trying again")
                attempted = 0
            if attempted:
                continue
            if wake is None:
                stop.wait(IDLE_SECONDS)
            elif wake.wait(IDLE_SECONDS):
                wake.clear()

    def run_once(self, stop: threading.Event | None = None) -> int:
        """Send every notification due now that no other sender holds (up to 50; fewer when
        `stop` is set meanwhile); return how many were attempted (sent or failed)."""
        now = utcnow()
        with self._sessions() as session:
            due = session.scalars(
                select(Notification.id)
                .where(Notification.state.in_(DUE_STATES), Notification.due_at <= now)
                .order_by(Notification.due_at, Notification.id)
                .limit(BATCH)
            ).all()
        attempted = 0
        for notification_id in due:
            if stop is not None and stop.is_set():
                break
            if self._claim(notification_id):
                self._attempt(notification_id)
                attempted += 1
        return attempted

    def _claim(self, notification_id: int) -> bool:
        """Move the row's due time past the send timeout when it is still due: ours if so."""
        now = utcnow()
        with self._sessions.begin() as session:
            result = session.execute(
                update(Notification)
                .where(
                    Notification.id == notification_id,
                    Notification.state.in_(DUE_STATES),
                    Notification.due_at <= now,
                )
                .values(due_at=now + self._lease)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _attempt(self, notification_id: int) -> None:
        with self._sessions() as session:
            row = session.get(Notification, notification_id)
            if row is None:
                return
            session.expunge(row)
        try:
            detail = self._send(row)
        except NotifyError as exc:
            self._failed(row, str(exc)[:ERROR_CHARS], exc.summary)
        except Exception as exc:  # a bug must not leave the row claimed forever either
            name = type(exc).__name__
            self._failed(row, f"{name}: {exc}"[:ERROR_CHARS], name)
        else:
            self._sent(row, detail)

    def _send(self, row: Notification) -> str:
        """Deliver the stored payload to the row's target; the audit detail of the success."""
        timeout = self._settings.notify_timeout_seconds
        if row.kind == WEBHOOK:
            secret = self._settings.webhook_secret
            if not secret:
                raise NotifyError("webhook_secret is not set: the webhook cannot be signed")
            status = post(row.target, row.payload.encode("utf-8"), secret, timeout)
            return f"critical-finding webhook accepted (HTTP {status})"
        if row.kind == HL7:
            host, _, port = row.target.rpartition(":")
            send_mllp(host.strip("[]"), int(port), row.payload, timeout)
            return "critical-finding ORU^R01 accepted (HL7 ACK)"
        raise NotifyError(f"unknown notification kind {row.kind!r}")

    def _sent(self, row: Notification, detail: str) -> None:
        attempts = row.attempts + 1
        values = {"state": "sent", "attempts": attempts, "last_error": None, "due_at": None}
        self._finish(row, values, Event.NOTIFICATION_SENT, f"{detail}, attempt {attempts}")
        NOTIFICATIONS.labels(kind=row.kind, outcome="sent").inc()
        log.info("notification %d (%s to %s) sent", row.id, row.kind, peer_address(row.target))

    def _failed(self, row: Notification, error: str, summary: str) -> None:
        """Record a failed attempt: retried after the backoff, or dead after the retry window.
        `summary` is what the log says (`error` may quote the receiver)."""
        now, attempts = utcnow(), row.attempts + 1
        window = self._settings.retry_window_seconds
        if now - row.created_at > dt.timedelta(seconds=window):
            state, due = "dead", None
            detail = f"{row.kind} dead-lettered: the retry window of {window:g} s passed; {error}"
        else:
            state = "failed"
            due = now + dt.timedelta(seconds=retry_delay(self._settings, attempts))
            detail = f"{row.kind} failed, retried at {due.isoformat(timespec='seconds')}: {error}"
        values = {"state": state, "attempts": attempts, "last_error": error, "due_at": due}
        self._finish(row, values, Event.NOTIFICATION_FAILED, f"{detail}; attempt {attempts}")
        NOTIFICATIONS.labels(kind=row.kind, outcome=state).inc()
        address = peer_address(row.target)
        text = "notification %d (%s to %s) %s after %d attempt(s): %s"
        log.warning(text, row.id, row.kind, address, state, attempts, summary)

    def _finish(
        self, row: Notification, values: Mapping[str, object], event: Event, detail: str
    ) -> None:
        """The row's new state and its audit row, in one transaction."""
        with self._sessions.begin() as session:
            session.execute(
                update(Notification)
                .where(Notification.id == row.id)
                .values(updated_at=utcnow(), **values)
            )
            _audit(session, row, event, detail, self._model)


def _audit(
    session: Session, row: Notification, event: Event, detail: str, model: str | None
) -> None:
    """The audit row of an attempt (or of a payload not built): success only when sent."""
    audit.record(
        session,
        event,
        Outcome.SUCCESS if event is Event.NOTIFICATION_SENT else Outcome.FAILURE,
        study_instance_uid=row.study_instance_uid,
        job_id=row.job_id,
        model=model,
        detail=f"{detail} (notification {row.id})",
        peer=Peer(address=peer_address(row.target)),
    )
