"""The HTTP side of one process, assembled: readiness checks, database gauges, the audit
chain's watch and the server. The node starts it after its own start-up checks passed."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.http.app import console_app, make_app
from dicom_node.http.collect import ChainWatch, DatabaseGauges
from dicom_node.http.context import WebContext
from dicom_node.http.health import Check, DatabaseProbe, Readiness, disk_check, spool_check
from dicom_node.http.server import HttpServer
from dicom_node.settings import Settings


class HttpSide:
    """`listening`: whether the DICOM listener is up (None: the process does not receive);
    `model_loaded`: None when the process runs no workers."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        listening: Callable[[], bool] | None,
        model_loaded: bool | None,
        web: WebContext | None = None,
    ) -> None:
        self._database = DatabaseProbe(sessions)
        spool, watermark = settings.spool_dir, settings.min_free_disk_bytes
        checks: dict[str, Callable[[], Check]] = {
            "database": self._database.check,
            "spool": lambda: spool_check(spool),
            "disk": lambda: disk_check(spool, watermark),
        }
        if model_loaded is not None:
            checks["model"] = lambda: Check(
                ok=model_loaded, detail="" if model_loaded else "not loaded"
            )
        if listening is not None:
            checks["listener"] = lambda: Check(ok=listening(), detail="" if listening() else "down")
        self.readiness = Readiness(checks)
        self._gauges = DatabaseGauges(sessions)
        self.chain = ChainWatch(sessions, settings.audit_verify_every_seconds)
        separate = web is not None and settings.console_port is not None
        self.server = HttpServer(
            make_app(self.readiness, self._gauges.refresh, None if separate else web),
            settings.http_host,
            settings.http_port,
        )
        self.console: HttpServer | None = None
        if separate and web is not None and settings.console_port is not None:
            host = settings.console_host or settings.http_host
            self.console = HttpServer(console_app(web), host, settings.console_port)

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def console_port(self) -> int:
        """Where the console and the REST API answer (the probes' port unless separate)."""
        return self.console.port if self.console is not None else self.server.port

    def start(self) -> HttpSide:
        self.readiness.start()
        self.chain.start()
        self.server.start()
        if self.console is not None:
            self.console.start()
        return self

    def stop(self) -> None:
        if self.console is not None:
            self.console.stop()
        self.server.stop()
        self.chain.stop()
        self.readiness.stop()
        self._database.close()
        self._gauges.close()
