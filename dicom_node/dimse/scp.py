"""The C-STORE / C-ECHO SCP: the node's AE, its presentation contexts and event handlers. The
C-STORE handler validates, spools and commits through `ingest`, and only then answers 0x0000;
it never decodes pixels or runs the model."""

from __future__ import annotations

import itertools
import logging
import os
import ssl
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, cast

import pydicom.config
from pydicom.uid import (
    JPEG2000,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event as PynetdicomEvent
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy.exc import SQLAlchemyError

from dicom_node import audit, metrics
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.dimse import admission, limits
from dicom_node.dimse.commitment import StorageCommitmentPushModel, read_report, record_report
from dicom_node.dimse.ingest import Ingest
from dicom_node.dimse.request import read_request, receive_to_files
from dicom_node.dimse.tls import NodeServer, server_context
from dicom_node.errors import (
    StoreError,
)
from dicom_node.log import bind
from dicom_node.settings import Settings

log = logging.getLogger(__name__)

# The radiographs the model reads are accepted in the transfer syntaxes it decodes (a sender that
# offers others falls back to one of these); every other storage class a PACS sends within a
# study (presentation states, key objects, reports, documents, other images) in any transfer
# syntax: the node keeps their headers and never decodes them.
RADIOGRAPH_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
TRANSFER_SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)
SUCCESS = 0x0000
SHUTDOWN_POLL_SECONDS = 0.05  # how soon a stopping listener notices (socketserver's default: 0.5)
REPORT_WAIT_SECONDS = 10.0  # how long a commitment report waits for its transaction's record
_association_numbers = itertools.count(1)  # a short id per association, for the log lines


def peer_of(event: PynetdicomEvent) -> Peer:
    requestor = event.assoc.requestor
    return Peer(
        calling_ae=str(requestor.ae_title).strip(),
        called_ae=str(event.assoc.acceptor.ae_title).strip(),
        address=f"{requestor.address}:{requestor.port}",
    )


def handle_store(event: PynetdicomEvent, ingest: Ingest) -> int:
    """EVT_C_STORE: the one error boundary of the SCP."""
    started = time.perf_counter()
    peer = peer_of(event)
    request = cast(C_STORE, event.request)
    sop_class = str(request.AffectedSOPClassUID or "") or None
    size = _received_bytes(event)
    try:
        item = read_request(event)
        outcome = ingest.store_in_time(item, peer, id(event.assoc))
    except StoreError as exc:
        log.warning("C-STORE refused with 0x%04X: %s", exc.status, exc)
        ingest.reject(peer, exc, _sop_uid_or_none(event))
        metrics.count_store(exc.status, sop_class, size, time.perf_counter() - started)
        return exc.status
    log.debug("instance stored (%s)", outcome.value)
    metrics.count_store(SUCCESS, sop_class, size, time.perf_counter() - started)
    return SUCCESS


def handle_event_report(event: PynetdicomEvent, ingest: Ingest) -> tuple[int, None]:
    """EVT_N_EVENT_REPORT: a destination's storage commitment report, recorded on the
    deliveries of its transaction (0x0000), or 0x0112 for a transaction the node never asked."""
    report = read_report(event)
    if report is None:
        return 0x0112, None  # No such SOP Instance: not a report of ours

    sender = peer_of(event)  # the destination, named as in its result_sent rows
    destination = Peer(called_ae=sender.calling_ae, address=sender.address)

    def write() -> int:
        with ingest.sessions.begin() as session:
            return record_report(session, report, destination)

    deadline = time.monotonic() + REPORT_WAIT_SECONDS
    try:  # a quick destination reports before the sender has recorded what it sent: wait
        while not (known := ingest.in_time(write)) and time.monotonic() < deadline:
            time.sleep(0.1)
    except (SQLAlchemyError, FutureTimeout):
        log.error("storage commitment report not recorded (database unavailable)")
        return 0x0110, None  # Processing failure: the destination sends it again
    if not known:
        log.warning("storage commitment report of an unknown transaction")
        return 0x0112, None
    log.info("storage commitment report: %d result(s) recorded", known)
    return SUCCESS, None


def _received_bytes(event: PynetdicomEvent) -> int:
    """The size of the data set received (its spooled temporary file, or the buffer)."""
    data = cast(C_STORE, event.request).DataSet
    try:
        if data is None:
            return 0
        if hasattr(data, "name"):
            return int(os.fstat(data.fileno()).st_size)
        return len(data.getbuffer())
    except (OSError, ValueError, AttributeError):
        return 0


def _sop_uid_or_none(event: PynetdicomEvent) -> str | None:
    value = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")
    return value if len(value) <= 64 else None


def handle_accepted(event: PynetdicomEvent, ingest: Ingest, settings: Settings) -> None:
    """EVT_ACCEPTED (in the association's own thread): its log lines carry the association from
    here on. A peer the registry does not admit (`admission`) has the association aborted,
    audited as a refusal; else the acceptance is audited with the TLS peer's certificate
    subject and the contexts refused."""
    peer = peer_of(event)
    bind(association=next(_association_numbers), calling_ae=peer.calling_ae, peer=peer.address)
    ingest.open_association(id(event.assoc))
    reason = admission.refusal(event.assoc, settings)
    if reason is not None:
        event.assoc.abort()
        _audit_refusal(ingest, peer, reason)
        return
    metrics.ASSOCIATIONS.labels(outcome="accepted").inc()
    metrics.ASSOCIATIONS_OPEN.inc()
    event.assoc.dicom_node_counted = True  # type: ignore[attr-defined]
    notes = []
    subject = admission.tls_subject(event.assoc)
    if subject is not None:
        notes.append(f"DICOM TLS, peer certificate subject {subject}")
    rejected = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
    if rejected:
        notes.append(f"refused presentation contexts: {', '.join(rejected)}")
    _audit(ingest, Event.ASSOCIATION_ACCEPTED, Outcome.SUCCESS, peer, "; ".join(notes) or None)


def handle_rejected(event: PynetdicomEvent, ingest: Ingest) -> None:
    """EVT_REJECTED: pynetdicom refused the association; audited with the reason."""
    _audit_refusal(ingest, peer_of(event), _rejection_reason(event))


def _audit_refusal(ingest: Ingest, peer: Peer, reason: str) -> None:
    log.warning("association refused: %s", reason)
    metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
    _audit(ingest, Event.ASSOCIATION_REJECTED, Outcome.FAILURE, peer, reason)


def _audit(ingest: Ingest, event: Event, outcome: Outcome, peer: Peer, detail: str | None) -> None:
    """An association's audit row, within the database timeout: a silent database must not hold
    up the association (a C-ECHO still gets its answer)."""

    def write() -> None:
        with ingest.sessions.begin() as session:
            audit.record(session, event, outcome, peer=peer, detail=detail)

    try:
        ingest.in_time(write)
    except (SQLAlchemyError, FutureTimeout):
        log.error("could not audit %s (database unavailable)", event.value)


def _rejection_reason(event: PynetdicomEvent) -> str:
    """Why pynetdicom refused the association (the A-ASSOCIATE-RJ reason it sent)."""
    request = event.assoc.requestor.primitive
    called = str(getattr(request, "called_ae_title", "") or "").strip()
    ours = str(event.assoc.acceptor.ae_title).strip()
    if called != ours:
        return f"called AE title {called!r} is not this node's ({ours!r})"
    return "calling AE title not allowed (allowed_calling_aets)"


def handle_closed(event: PynetdicomEvent, ingest: Ingest) -> None:
    """EVT_RELEASED and EVT_ABORTED."""
    if getattr(event.assoc, "dicom_node_counted", False):
        event.assoc.dicom_node_counted = False  # type: ignore[attr-defined]
        metrics.ASSOCIATIONS_OPEN.dec()
    ingest.close_association(id(event.assoc))


def make_ae(settings: Settings) -> AE:
    """The node's AE: C-ECHO, every storage SOP class (CR and DX in the transfer syntaxes it
    decodes), associations only when called by its own AE title."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = settings.association_timeout_seconds  # ARTIM: the A-ASSOCIATE-RQ must come
    ae.network_timeout = settings.idle_timeout_seconds
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    # a destination's commitment report comes on an association it requests, in the SCP role
    ae.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    radiographs = {str(uid) for uid in RADIOGRAPH_CLASSES}
    for context in AllStoragePresentationContexts:
        sop_class = str(context.abstract_syntax)
        syntaxes = TRANSFER_SYNTAXES if sop_class in radiographs else ALL_TRANSFER_SYNTAXES
        ae.add_supported_context(sop_class, list(syntaxes))
    return ae


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Listeners:
    """The node's DICOM listeners: plain TCP and/or DICOM TLS (each None when off)."""

    plain: ThreadedAssociationServer | None
    tls: ThreadedAssociationServer | None

    def shutdown(self) -> None:
        """Stop listening and end the servers' threads."""
        for server in (self.plain, self.tls):
            if server is not None:
                server.shutdown()  # pynetdicom's: also closes the socket


def start_server(settings: Settings, ingest: Ingest) -> Listeners:
    """Start listening in the background (plain TCP on `port` unless `listen_plain` is false,
    DICOM TLS on `tls_port` when set); the caller shuts the listeners down."""
    # Real-world headers often bend VR rules; the node checks the values it relies on itself
    # (uids.py) instead of letting pydicom warn (or, under -W error, fail) on every instance.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    limits.install()
    receive_to_files(ingest.spool.incoming)
    ae = make_ae(settings)
    args: list[Any] = [ingest]
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, args),
        (evt.EVT_N_EVENT_REPORT, handle_event_report, args),
        (evt.EVT_ACCEPTED, handle_accepted, [ingest, settings]),
        (evt.EVT_REJECTED, handle_rejected, args),
        (evt.EVT_RELEASED, handle_closed, args),
        (evt.EVT_ABORTED, handle_closed, args),
    ]
    plain = _serve(ae, settings, settings.port, handlers, ingest) if settings.listen_plain else None
    tls = None
    if settings.tls_port is not None:
        assert settings.tls_cert_file is not None and settings.tls_key_file is not None
        context = server_context(
            cert=settings.tls_cert_file,
            key=settings.tls_key_file,
            ca=settings.tls_ca_file,
            require_client_certificate=settings.tls_require_client_certificate,
        )
        tls = _serve(ae, settings, settings.tls_port, handlers, ingest, context=context)
    return Listeners(plain=plain, tls=tls)


def _serve(
    ae: AE,
    settings: Settings,
    port: int,
    handlers: list[Any],
    ingest: Ingest,
    *,
    context: ssl.SSLContext | None = None,
) -> ThreadedAssociationServer:
    def refused(address: str, reason: str) -> None:
        _audit_refusal(ingest, Peer(called_ae=settings.ae_title, address=address), reason)

    server = ae.make_server(
        (settings.host, port),
        evt_handlers=handlers,
        ssl_context=context,
        server_class=NodeServer,
        handshake_timeout=settings.association_timeout_seconds,
        on_refused=refused,
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
        name=f"listener-{port}",
        daemon=True,
    )
    thread.start()
    ae._servers.append(server)  # as AE.start_server does: the server's shutdown removes it
    kind = "DICOM TLS" if context else "plain TCP"
    log.info(
        "listening as %s on %s:%s (%s)",
        settings.ae_title,
        settings.host,
        server.server_address[1],
        kind,
    )
    return server
