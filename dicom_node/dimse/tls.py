"""DICOM TLS (PS3.15 Annex B, the BCP 195 profile): the node's TLS contexts, built in this one
place from the settings, and the association server that shakes hands in each connection's own
thread.

- TLS 1.2 at least (1.3 preferred, as the libraries negotiate it), the BCP 195 cipher suites
  (ECDHE or DHE key exchange, AES-GCM or ChaCha20-Poly1305), certificates and keys from PEM
  files, a CA bundle to verify the peer.
- As server: the client's certificate is required by default (mutual authentication); as
  client: the destination's certificate must name its host (hostname verification).
- pynetdicom wraps an accepted socket in its accept loop, where a client that never sends its
  ClientHello (or plain TCP to the TLS port) would stall every other connection. `NodeServer`
  accepts at once and runs the handshake, bounded by the ACSE timeout, in the connection's
  thread; a failed handshake is reported (`on_refused`) and the connection closed.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.errors import ConfigError

log = logging.getLogger(__name__)

# BCP 195 (RFC 9325) recommended TLS 1.2 suites; TLS 1.3 suites are all acceptable and on.
BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)
Refused = Callable[[str, str], None]  # (peer address, reason)


def _context(
    purpose: ssl.Purpose, cert: Path | None, key: Path | None, ca: Path | None
) -> ssl.SSLContext:
    server = purpose is ssl.Purpose.CLIENT_AUTH
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key else None)
        if ca is not None:
            context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS certificate, key or CA file cannot be used: {exc}") from exc
    return context


def server_context(
    *, cert: Path, key: Path, ca: Path | None, require_client_certificate: bool = True
) -> ssl.SSLContext:
    """The TLS listener's context: the node's certificate; clients verified against `ca`,
    their certificate required unless told otherwise."""
    context = _context(ssl.Purpose.CLIENT_AUTH, cert, key, ca)
    if ca is None:
        if require_client_certificate:
            raise ConfigError("tls_ca_file is needed to verify client certificates")
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context


def client_context(*, cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """A context towards destinations: their certificate verified against `ca` (the system's
    when None) and their host name checked; the node's certificate offered when it has one."""
    context = _context(ssl.Purpose.SERVER_AUTH, cert, key, ca)
    if ca is None:
        context.load_default_certs()
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_subject(sock: Any) -> str | None:
    """The subject of the certificate the peer of a TLS socket presented, as `CN=...,O=...`."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    certificate = sock.getpeercert()
    if not certificate:
        return None
    subject: Any = certificate.get("subject", ())
    parts = [f"{_SHORT_NAMES.get(key, key)}={value}" for rdn in subject for key, value in rdn]
    return ",".join(parts) or None


# RFC 4514 short names of the attributes in `ssl.SSLSocket.getpeercert()`'s subject
_SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
}


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved out of the accept loop into
    the connection's thread, bounded by `handshake_timeout`, failures reported to `on_refused`;
    and a listen backlog for bursts (socketserver's default of 5 drops connections of a burst
    of a few hundred associations)."""

    request_queue_size = 1024

    def __init__(
        self,
        *args: Any,
        handshake_timeout: float = 10.0,
        on_refused: Refused | None = None,
        **kwargs: Any,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.on_refused = on_refused
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept; Nagle's algorithm off (a C-STORE response must not wait ~40 ms for the
        peer's delayed ACK); wrap for TLS without the handshake (done in the connection's
        thread)."""
        client, address = self.socket.accept()  # type: ignore[union-attr]
        no_delay(client)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Shake hands (TLS), wait for the first bytes of the A-ASSOCIATE-RQ, then serve the
        association as pynetdicom does. pynetdicom's reactors poll every millisecond from the
        moment a connection is handed to them: twenty connections that send nothing would cost
        the node its CPU until the ACSE timeout; here they wait in a blocking select."""
        deadline = time.monotonic() + self.handshake_timeout
        if isinstance(request, ssl.SSLSocket):
            previous = request.gettimeout()
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(previous)
            except (OSError, ssl.SSLError) as exc:
                self._refuse(request, client_address, f"TLS handshake failed: {_reason(exc)}")
                return
        if not _readable(request, deadline - time.monotonic()):
            reason = "nothing received within the ACSE timeout"
            self._refuse(request, client_address, reason)
            return
        super().process_request_thread(request, client_address)

    def _refuse(self, request: Any, client_address: Any, reason: str) -> None:
        address = f"{client_address[0]}:{client_address[1]}"
        if self.on_refused is not None:
            self.on_refused(address, reason)
        self.shutdown_request(request)


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Data (or the peer's close) is there to read within `timeout` seconds."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        readable, _, _ = select.select([sock], [], [], max(0.0, timeout))
    except (OSError, ValueError):  # closed meanwhile
        return False
    return bool(readable)


def no_delay(sock: socket.socket) -> None:
    """TCP_NODELAY on: small PDUs (responses, the last fragment of a data set) leave at once."""
    with contextlib.suppress(OSError):  # not a TCP socket (never on the node's listeners)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no handshake within the timeout"
    return type(exc).__name__
