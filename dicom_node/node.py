"""The node at run time: database, spool, model, C-STORE server and workers, started and stopped
together. `dicom-node serve`, `work` and `demo` and the integration tests all use it.

Start-up checks everything it depends on before it records "node started": the database (reached
and migrated), the spool (writable), the model bundle and device, and the DICOM port (bound).
Each failure is a `StartupError` whose one-line message names the cause and what to do.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import threading
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from dicom_node import audit, metrics
from dicom_node.audit import AuditRecord, Event
from dicom_node.audit.syslog import SyslogForwarder, forwarder_from_settings
from dicom_node.dimse.ingest import Ingest
from dicom_node.dimse.scp import Listeners, start_server
from dicom_node.dimse.scu import Sender
from dicom_node.errors import StartupError
from dicom_node.http.collect import export_model
from dicom_node.http.context import WebContext
from dicom_node.http.side import HttpSide
from dicom_node.notify import Notifier
from dicom_node.pipeline.dispatch import DeliveryLanes
from dicom_node.pipeline.retention import purge_received
from dicom_node.pipeline.run import Services
from dicom_node.pipeline.wakeup import NotificationListener, QuietTimers, Wakeup
from dicom_node.pipeline.worker import Worker
from dicom_node.settings import Settings
from dicom_node.startup import build_services, check_spool, connect_database, default_sender
from dicom_node.store.spool import Spool

log = logging.getLogger(__name__)
HOUSEKEEPING_SECONDS = 2.0
RETENTION_EVERY_SECONDS = 3600.0


def count_audit_event(item: AuditRecord) -> None:
    """The audit sink that counts committed rows by type (`dicom_node_audit_events_total`)."""
    metrics.AUDIT_EVENTS.labels(event_type=item.event_type).inc()


audit.add_sink(count_audit_event)  # once per process


def _listen(settings: Settings, ingest: Ingest) -> Listeners:
    try:
        return start_server(settings, ingest)
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {where} is already in use: stop the other listener or set port"
            ) from exc
        raise StartupError(
            f"cannot listen on {where} ({exc.strerror or exc}): check host and port"
        ) from exc


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
        self.sessions = connect_database(settings.database_url, settings.spool_dir)
        check_spool(settings.spool_dir)
        self.receive = receive
        self.worker_count = settings.workers if workers is None else workers
        self.services = (
            build_services(settings, self.sessions, sender=sender) if self.worker_count else None
        )
        self.lanes: DeliveryLanes | None = None
        self._notify_wake = threading.Event()  # a job planned critical-finding notifications
        if self.services is not None:
            self.lanes = DeliveryLanes(
                self.sessions, self.services.sender, settings, model=self.services.model_label
            )
            self.services = dataclasses.replace(
                self.services, lanes=self.lanes, notify_wake=self._notify_wake
            )
            export_model(self.services.bundle)
        self.http: HttpSide | None = None
        self.listeners: Listeners | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._forwarder: SyslogForwarder | None = None
        self.wakeup = Wakeup()  # wakes this process's idle workers when a job is queued
        self._timers: QuietTimers | None = None
        self._notifications: NotificationListener | None = None

    @property
    def port(self) -> int:
        """The plain DICOM port the node listens on."""
        return self._port_of("plain")

    @property
    def tls_port(self) -> int:
        """The DICOM TLS port the node listens on."""
        return self._port_of("tls")

    @property
    def console_port(self) -> int:
        """The port of the console and the REST API (http_port unless console_port is set)."""
        if self.http is None:
            raise RuntimeError("the node has no HTTP side (http_enabled is false)")
        return self.http.console_port

    @property
    def http_port(self) -> int:
        """The port of the HTTP side (health, readiness, metrics)."""
        if self.http is None:
            raise RuntimeError("the node has no HTTP side (http_enabled is false)")
        return self.http.port

    def _listening(self) -> bool:
        """The DICOM listeners are up (their sockets open)."""
        if self.listeners is None:
            return False
        servers = [s for s in (self.listeners.plain, self.listeners.tls) if s is not None]
        return bool(servers) and all(
            s.socket is not None and s.socket.fileno() != -1 for s in servers
        )

    def _port_of(self, kind: str) -> int:
        server = getattr(self.listeners, kind, None) if self.listeners else None
        if server is None:
            raise RuntimeError(f"the node has no {kind} listener")
        return int(server.server_address[1])

    def start(self) -> Node:
        """Listen (when receiving), record "node started", then start the workers."""
        if self.receive:
            self._timers = QuietTimers(self.sessions, self.settings.quiet_seconds, self.wakeup)
            ingest = Ingest(
                Spool(self.settings.spool_dir),
                self.sessions,
                max_instance_bytes=self.settings.max_instance_bytes,
                min_free_disk_bytes=self.settings.min_free_disk_bytes,
                timeout_seconds=self.settings.database_timeout_seconds,
                concurrency=self.settings.max_associations,
                on_released=self._timers.released,
            )
            self.listeners = _listen(self.settings, ingest)
            ingest.reset_open_associations(self._stale_after)
            swept = ingest.spool.sweep_temporary()
            if swept:
                log.warning("removed %d temporary file(s) of interrupted spool writes", swept)
            self._start_thread("ingest-housekeeping", self._housekeep, ingest)
        self._forwarder = forwarder_from_settings(self.settings)
        if self._forwarder is not None:
            self._forwarder.start()
        with self.sessions.begin() as session:
            audit.record(session, Event.NODE_START, detail=self._describe())
        if self.worker_count and not self.settings.destinations:
            log.warning(
                "no destinations are configured: results stay in the spool and reach no PACS "
                "(set destinations)"
            )
        if self.worker_count and self.settings.database_url.startswith("postgresql"):
            self._notifications = NotificationListener(
                self.settings.database_url, self.wakeup, self._stop
            )
            self._notifications.start()
        if self.lanes is not None:
            self.lanes.start()
            notifier = Notifier(self.sessions, self.settings, model=self.lanes.model)
            self._start_thread("notifier", notifier.run, self._stop, self._notify_wake)
        for number in range(self.worker_count):
            assert self.services is not None
            worker = Worker(self.services, wakeup=self.wakeup)
            self._start_thread(f"worker-{number}", worker.run, self._stop)
        if self.settings.http_enabled:
            self.http = self._http_side().start()
        return self

    def _web(self) -> WebContext:
        sender = self.services.sender if self.services else default_sender(self.settings)
        return WebContext(
            settings=self.settings, sessions=self.sessions, sender=sender, services=self.services
        )

    def _http_side(self) -> HttpSide:
        try:
            return HttpSide(
                self.settings,
                self.sessions,
                listening=self._listening if self.receive else None,
                model_loaded=self.services is not None if self.worker_count else None,
                web=self._web() if self.settings.http_console else None,
            )
        except OSError as exc:
            self.stop()
            where = f"{self.settings.http_host}:{self.settings.http_port}"
            raise StartupError(
                f"cannot serve HTTP on {where} ({exc.strerror or exc}): set http_port to a free "
                "port (each process its own) or set http_enabled = false"
            ) from exc

    def _start_thread(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def _stale_after(self) -> float:
        """No association of a live receiver stays silent this long (it is aborted before)."""
        return 2 * self.settings.idle_timeout_seconds + 10

    def _housekeep(self, ingest: Ingest) -> None:
        """Releases the database could not take when they happened are made once it is back;
        once an hour, received instances past their retention leave the spool."""
        next_purge = next_reset = time.monotonic()
        while not self._stop.wait(HOUSEKEEPING_SECONDS):
            ingest.retry_releases()
            if time.monotonic() >= next_reset:  # counts a crashed receiver left behind
                next_reset = time.monotonic() + self._stale_after / 2
                try:
                    ingest.reset_open_associations(self._stale_after)
                except SQLAlchemyError:
                    log.warning("open associations of crashed receivers not cleared (database)")
            days = self.settings.spool_retention_days
            if days is not None and time.monotonic() >= next_purge:
                next_purge = time.monotonic() + RETENTION_EVERY_SECONDS
                try:
                    purge_received(self.sessions, days)
                except SQLAlchemyError:
                    log.exception("retention: the spool could not be purged")

    def stop(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
        self._stop.set()
        self._notify_wake.set()
        self.wakeup.notify()  # idle workers stop now, not after their poll interval
        if self._timers is not None:
            self._timers.close()
        if self.listeners is not None:
            self.listeners.shutdown()
        for thread in self._threads:
            thread.join(timeout=60)
        if self.lanes is not None:
            self.lanes.stop()
        if self._notifications is not None:
            self._notifications.join(timeout=5)
        if self.services is not None:
            self._close_services(self.services)
        with self.sessions.begin() as session:
            audit.record(session, Event.NODE_STOP, detail=self._describe())
        if self._forwarder is not None:
            self._forwarder.close()
        self.sessions.kw["bind"].dispose()  # the pool's connections closed, not left to GC

    @staticmethod
    def _close_services(services: Services) -> None:
        for route in services.models:
            route.batcher.close()
        if services.decode_pool is not None:
            services.decode_pool.close()

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _describe(self) -> str:
        model = self.services.model_label if self.services else "none"
        role = "receiver" if self.receive else "worker"
        return f"{role}, {self.worker_count} worker(s), model {model}"
