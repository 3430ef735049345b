"""uvicorn serving the app in a thread of the node's process, on a socket bound before the
thread starts (so that a port in use is a start-up error and port 0 gives a known port)."""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from starlette.applications import Starlette

log = logging.getLogger(__name__)


class HttpServer:
    """`start()` binds and serves; `stop()` ends the server and its thread."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        self.host = host
        self.app = app
        self._socket = socket.create_server((host, port), reuse_port=False)
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="http", daemon=True)

    def start(self) -> HttpServer:
        self._thread.start()
        log.info("HTTP (health, readiness, metrics) on http://%s:%d", self.host, self.port)
        return self

    def _serve(self) -> None:
        self._server.run(sockets=[self._socket])

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()
