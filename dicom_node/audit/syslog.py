"""Forwarding audit events to a collector: RFC 5424 syslog messages carrying the DICOM audit message
XML (PS3.15 A.6, IHE ATNA), over TLS with octet-counting framing (RFC 5425).

Forwarding never blocks or breaks the path that wrote the event: committed rows go into a bounded
queue (`submit` never waits; when the queue is full the row is dropped, counted and logged) and a
background thread sends them, reconnecting with backoff. The database stays the record of truth.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node import audit, metrics
from dicom_node.audit import AuditRecord
from dicom_node.audit.chain import canonical_time
from dicom_node.audit.export import message_bytes
from dicom_node.audit.participants import MessageContext

log = logging.getLogger(__name__)

FACILITY_AUTHPRIV = 10
# EventOutcomeIndicator -> syslog severity: notice, warning, error, critical
SEVERITY = {0: 5, 4: 4, 8: 3, 12: 2}
MSGID = "DICOM+RFC3881"
APP_NAME = "dicom-node"
BOM = b"\xef\xbb\xbf"
# Structured data with this node's chain position and hash, so the collector holds an outside
# copy of the chain. 32473 is the enterprise number RFC 5612 reserves for documentation use.
SD_ID = "audit@32473"
DEFAULT_PORT = 6514


@dataclass(frozen=True, kw_only=True, slots=True)
class SyslogTarget:
    """A TLS syslog collector; `ca_file` verifies it, `cert_file`/`key_file` identify us."""

    host: str
    port: int = DEFAULT_PORT
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout: float = 10.0


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def format_message(item: AuditRecord, ctx: MessageContext, *, hostname: str) -> bytes:
    """One RFC 5424 message: header, structured data, BOM and the audit message XML."""
    priority = FACILITY_AUTHPRIV * 8 + SEVERITY.get(item.outcome_code, 3)
    structured = f'[{SD_ID} seq="{item.seq}" hash="{_sd_value(item.row_hash)}"]'
    header = (
        f"<{priority}>1 {canonical_time(item.occurred_at)} {hostname[:255] or '-'}"
        f" {APP_NAME} {os.getpid()} {MSGID} {structured} "
    )
    return header.encode("ascii", "replace") + BOM + message_bytes(item, ctx)


def frame(message: bytes) -> bytes:
    """RFC 5425 octet counting: MSG-LEN SP SYSLOG-MSG."""
    return b"%d %s" % (len(message), message)


def tls_context(target: SyslogTarget) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
    if target.cert_file is not None:
        context.load_cert_chain(
            str(target.cert_file), str(target.key_file) if target.key_file else None
        )
    return context


class SyslogForwarder:
    """A background sender of audit rows; `start()`, `submit()` (the audit sink), `close()`."""

    def __init__(
        self,
        target: SyslogTarget,
        ctx: MessageContext,
        *,
        queue_size: int = 10000,
        retry_seconds: float = 1.0,
    ) -> None:
        self.target = target
        self.ctx = ctx
        self.retry_seconds = retry_seconds
        self.sent = 0
        self.dropped = 0
        self._queue: queue.Queue[AuditRecord] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._hostname = socket.getfqdn() or socket.gethostname()
        self._context = tls_context(target)
        self._socket: ssl.SSLSocket | None = None
        self._where = f"{target.host}:{target.port}"
        self._thread = threading.Thread(target=self._run, name="audit-syslog", daemon=True)

    def start(self) -> SyslogForwarder:
        self._thread.start()
        audit.add_sink(self.submit)
        log.info("forwarding audit events to %s:%s", self.target.host, self.target.port)
        return self

    def submit(self, item: AuditRecord) -> None:
        """Queue one row; never blocks. A full queue drops the row and counts it."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            metrics.SYSLOG_DROPPED.inc()
            with self._lock:
                self.dropped += 1
                dropped = self.dropped
            if dropped == 1 or dropped % 1000 == 0:
                log.warning("audit syslog queue full: %d event(s) dropped so far", dropped)

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking rows, send what is queued for up to `timeout` seconds, then stop."""
        audit.remove_sink(self.submit)
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        self._stop.set()
        self._thread.join(timeout=max(timeout, 1.0))
        self._disconnect()
        if self.dropped:
            log.warning("audit syslog: %d event(s) dropped, %d sent", self.dropped, self.sent)

    def __enter__(self) -> SyslogForwarder:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._deliver(format_message(item, self.ctx, hostname=self._hostname))
            finally:
                self._queue.task_done()

    def _deliver(self, message: bytes) -> None:
        """Send one message, reconnecting with backoff until sent or stopped."""
        delay = self.retry_seconds
        while not self._stop.is_set():
            try:
                self._connected().sendall(frame(message))
            except (OSError, ssl.SSLError) as exc:
                log.warning("audit syslog to %s failed: %s", self.target.host, exc)
                metrics.SYSLOG_CONNECTED.labels(target=self._where).set(0)
                self._disconnect()
                self._stop.wait(delay)
                delay = min(delay * 2, 60.0)
                continue
            metrics.SYSLOG_CONNECTED.labels(target=self._where).set(1)
            with self._lock:
                self.sent += 1
            return

    def _connected(self) -> ssl.SSLSocket:
        if self._socket is None:
            raw = socket.create_connection(
                (self.target.host, self.target.port), timeout=self.target.timeout
            )
            try:
                self._socket = self._context.wrap_socket(raw, server_hostname=self.target.host)
            except BaseException:
                raw.close()
                raise
        return self._socket

    def _disconnect(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(OSError):
                self._socket.close()
            self._socket = None


def forwarder_from_settings(settings: Any) -> SyslogForwarder | None:
    """The forwarder the settings ask for (`audit_syslog_host` set), not yet started."""
    host = getattr(settings, "audit_syslog_host", None)
    if not host:
        return None
    target = SyslogTarget(
        host=host,
        port=int(getattr(settings, "audit_syslog_port", DEFAULT_PORT)),
        ca_file=_path(getattr(settings, "audit_syslog_ca_file", None)),
        cert_file=_path(getattr(settings, "audit_syslog_cert_file", None)),
        key_file=_path(getattr(settings, "audit_syslog_key_file", None)),
    )
    return SyslogForwarder(
        target,
        message_context(settings),
        queue_size=int(getattr(settings, "audit_syslog_queue_size", 10000)),
    )


def _path(value: Any) -> Path | None:
    return Path(value) if value else None


def message_context(settings: Any) -> MessageContext:
    """The node's identity in audit messages, from the settings."""
    from sqlalchemy.engine import make_url

    url = make_url(settings.database_url).render_as_string(hide_password=True)
    return MessageContext(
        source_id=settings.ae_title,
        local_ae=settings.ae_title,
        log_uri=url,
        enterprise_site=getattr(settings, "audit_enterprise_site", None),
    )


@contextlib.contextmanager
def forwarding(settings: Any) -> Iterator[SyslogForwarder | None]:
    """Forward this process's audit rows for the duration of the block, when configured."""
    forwarder = forwarder_from_settings(settings)
    if forwarder is None:
        yield None
        return
    with forwarder:
        yield forwarder
