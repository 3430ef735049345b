"""The node at run time: database, spool, model, C-STORE server and workers, started and stopped
together. `dicom-node serve`, `work` and `demo` and the integration tests all use it."""

from __future__ import annotations

import logging
import threading
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event
from dicom_node.audit.syslog import SyslogForwarder, forwarder_from_settings
from dicom_node.dimse.scp import Ingest, start_server
from dicom_node.dimse.scu import DimseSender, Sender
from dicom_node.model.batching import BatchingClassifier
from dicom_node.model.bundle import load_bundle
from dicom_node.model.decode_pool import DecodePool
from dicom_node.model.infer import Classifier, resolve_device
from dicom_node.pipeline.run import Services
from dicom_node.pipeline.worker import Worker
from dicom_node.settings import Settings
from dicom_node.store.schema import make_engine, make_session_factory, upgrade_schema
from dicom_node.store.spool import Spool

log = logging.getLogger(__name__)


def open_database(settings: Settings) -> sessionmaker[Session]:
    """One engine per process, schema migrated to the newest revision."""
    engine = make_engine(settings.database_url)
    upgrade_schema(engine)
    return make_session_factory(engine)


def build_services(
    settings: Settings, sessions: sessionmaker[Session], *, sender: Sender | None = None
) -> Services:
    """Load and validate the model bundle and assemble what workers need."""
    bundle = load_bundle(settings.model_bundle)
    device = resolve_device(settings.device)
    log.info("model %s %s on %s", bundle.identity.name, bundle.identity.version, device)
    return Services(
        settings=settings,
        sessions=sessions,
        spool=Spool(settings.spool_dir),
        bundle=bundle,
        batcher=BatchingClassifier(
            Classifier(bundle, device, max_batch=settings.max_batch),
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
        ),
        sender=sender or default_sender(settings),
        decode_pool=DecodePool(settings.decode_processes) if settings.decode_processes else None,
    )


def default_sender(settings: Settings) -> DimseSender:
    return DimseSender(
        ae_title=settings.ae_title,
        max_pdu=settings.max_pdu,
        attempts=settings.send_attempts,
        backoff_seconds=settings.send_backoff_seconds,
        timeout_seconds=settings.send_timeout_seconds,
    )


class Node:
    """Receiver and/or workers over one database; `start()` then `stop()` (or use `with`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        receive: bool = True,
        workers: int | None = None,
        sender: Sender | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = open_database(settings)
        self.receive = receive
        self.worker_count = settings.workers if workers is None else workers
        self.services = (
            build_services(settings, self.sessions, sender=sender) if self.worker_count else None
        )
        self.server: ThreadedAssociationServer | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._forwarder: SyslogForwarder | None = None

    @property
    def port(self) -> int:
        if self.server is None:
            raise RuntimeError("the node is not receiving")
        return int(self.server.server_address[1])

    def start(self) -> Node:
        self._forwarder = forwarder_from_settings(self.settings)
        if self._forwarder is not None:
            self._forwarder.start()
        with self.sessions.begin() as session:
            audit.record(session, Event.NODE_START, detail=self._describe())
        if self.receive:
            ingest = Ingest(Spool(self.settings.spool_dir), self.sessions)
            ingest.reset_open_associations()
            self.server = start_server(self.settings, ingest)
        for number in range(self.worker_count):
            assert self.services is not None
            worker = Worker(self.services)
            thread = threading.Thread(
                target=worker.run, args=(self._stop,), name=f"worker-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
        for thread in self._threads:
            thread.join(timeout=60)
        if self.services is not None:
            self.services.batcher.close()
            if self.services.decode_pool is not None:
                self.services.decode_pool.close()
        with self.sessions.begin() as session:
            audit.record(session, Event.NODE_STOP, detail=self._describe())
        if self._forwarder is not None:
            self._forwarder.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _describe(self) -> str:
        model = self.services.model_label if self.services else "none"
        role = "receiver" if self.receive else "worker"
        return f"{role}, {self.worker_count} worker(s), model {model}"
