"""What `/metrics` reads from the database at each scrape (the state every process shares:
studies, jobs and the queue's age, deliveries and notifications by state), and the periodic
verification of the audit chain whose outcome it exports."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import metrics
from dicom_node.audit import chain
from dicom_node.model.bundle import METADATA, SECTION, Bundle
from dicom_node.store.schema import Delivery, Job, Notification, Study, utcnow

log = logging.getLogger(__name__)
SCRAPE_QUERY_SECONDS = 2.0
STATES: Mapping[Gauge, tuple[Any, tuple[str, ...]]] = {
    metrics.STUDIES: (Study, ("receiving", "ready")),
    metrics.JOBS: (Job, ("queued", "running", "done", "skipped", "failed", "superseded")),
    metrics.NOTIFICATIONS_BY_STATE: (Notification, ("pending", "sent", "failed", "dead")),
}
DELIVERY_STATES = ("pending", "sent", "committing", "committed", "failed", "dead", "withdrawn")


class DatabaseGauges:
    """Refreshes the database's gauges; a database that does not answer within
    `SCRAPE_QUERY_SECONDS` leaves them as they were (the readiness gauges say why)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="metrics-db")

    def refresh(self) -> None:
        try:
            self._executor.submit(self._refresh).result(timeout=SCRAPE_QUERY_SECONDS)
        except FutureTimeout:
            log.warning("metrics: the database did not answer within %g s", SCRAPE_QUERY_SECONDS)
        except Exception as exc:  # the database is down: the scrape still answers
            log.warning("metrics: database state not read (%s)", type(exc).__name__)

    def _refresh(self) -> None:
        with self.sessions() as session:
            for gauge, (table, states) in STATES.items():
                counts: dict[str, int] = dict(
                    session.execute(select(table.state, func.count()).group_by(table.state)).all()
                )
                for state in states:
                    gauge.labels(state=state).set(counts.get(state, 0))
            self._deliveries(session)
            oldest = session.scalar(select(func.min(Job.created_at)).where(Job.state == "queued"))
        age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
        metrics.QUEUE_OLDEST_AGE.set(age)

    @staticmethod
    def _deliveries(session: Session) -> None:
        """Deliveries by state and destination (`AE@host:port`, as the delivery counter names
        it); every state of a destination is exported, 0 included."""
        rows = session.execute(
            select(
                Delivery.state,
                Delivery.destination_ae,
                Delivery.destination_host,
                Delivery.destination_port,
                func.count(),
            ).group_by(
                Delivery.state,
                Delivery.destination_ae,
                Delivery.destination_host,
                Delivery.destination_port,
            )
        ).all()
        counts = {(state, f"{ae}@{host}:{port}"): n for state, ae, host, port, n in rows}
        for destination in {d for _, d in counts}:
            for state in DELIVERY_STATES:
                metrics.DELIVERIES_BY_STATE.labels(state=state, destination=destination).set(
                    counts.get((state, destination), 0)
                )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ChainWatch:
    """Verifies the audit chain now and every `every_seconds` (a thread of its own)."""

    def __init__(self, sessions: sessionmaker[Session], every_seconds: float) -> None:
        self.sessions = sessions
        self.every_seconds = every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-verify", daemon=True)

    def start(self) -> ChainWatch:
        self._thread.start()
        return self

    def verify_once(self) -> bool | None:
        """Verify now; True (intact), False (a break: logged as an error), None (not read)."""
        try:
            with self.sessions() as session:
                report = chain.verify(session)
        except Exception as exc:  # database down: try again next time
            log.warning("audit chain not verified (%s)", type(exc).__name__)
            return None
        metrics.AUDIT_CHAIN_OK.set(1 if report.ok else 0)
        metrics.AUDIT_CHAIN_VERIFIED.set(time.time())
        if not report.ok and report.first_problem is not None:
            log.error("audit chain verification failed: %s", report.first_problem.message)
        return report.ok

    def _run(self) -> None:
        while True:
            self.verify_once()
            if self._stop.wait(self.every_seconds):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def export_model(bundle: Bundle) -> None:
    """The model's identity and each finding's expected positive rate, as metrics."""
    identity = bundle.identity
    metrics.MODEL.info(
        {
            "name": identity.name,
            "version": identity.version,
            "weights_sha256": identity.weights_sha256,
            "synthetic_demo": str(identity.synthetic_demo).lower(),
        }
    )
    for label, rate in expected_positive_rates(bundle).items():
        metrics.FINDING_EXPECTED_RATE.labels(finding=label).set(rate)


def expected_positive_rates(bundle: Bundle) -> dict[str, float]:
    """Per finding, the share of studies above threshold the bundle's validation predicts:
    (sensitivity x positives + (1 - specificity) x negatives) / images."""
    try:
        meta = json.loads((bundle.path / METADATA).read_text(encoding="utf-8"))
        labels = meta[SECTION]["validation_metrics"]["labels"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    rates = {}
    for label, m in labels.items():
        try:
            positives, negatives = float(m["positives"]), float(m["negatives"])
            hits = m["sensitivity"] * positives + (1 - m["specificity"]) * negatives
            rates[label] = hits / (positives + negatives)
        except (KeyError, TypeError, ZeroDivisionError):
            continue
    return rates
