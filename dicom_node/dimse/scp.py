"""The C-STORE / C-ECHO SCP: the node's AE, its presentation contexts and event handlers. The
C-STORE handler validates, spools and commits through `ingest`, and only then answers 0x0000;
it never decodes pixels or runs the model."""

from __future__ import annotations

import itertools
import logging
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

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.dimse.ingest import Ingest, read_request
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
    peer = peer_of(event)
    try:
        item = read_request(event)
        outcome = ingest.store(item, peer, id(event.assoc))
    except StoreError as exc:
        log.warning("C-STORE refused with 0x%04X: %s", exc.status, exc)
        ingest.reject(peer, exc, _sop_uid_or_none(event))
        return exc.status
    log.debug("instance stored (%s)", outcome.value)
    return SUCCESS


def _sop_uid_or_none(event: PynetdicomEvent) -> str | None:
    value = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")
    return value if len(value) <= 64 else None


def handle_accepted(event: PynetdicomEvent, ingest: Ingest) -> None:
    """EVT_ACCEPTED (in the association's own thread): its log lines carry the association from
    here on; the acceptance is audited with the contexts refused."""
    peer = peer_of(event)
    bind(association=next(_association_numbers), calling_ae=peer.calling_ae, peer=peer.address)
    rejected = [str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts]
    detail = (
        f"refused presentation contexts: {', '.join(sorted(set(rejected)))}" if rejected else None
    )
    with ingest.sessions.begin() as session:
        audit.record(session, Event.ASSOCIATION_ACCEPTED, peer=peer, detail=detail)


def handle_rejected(event: PynetdicomEvent, ingest: Ingest) -> None:
    peer = peer_of(event)
    log.warning("association from %s at %s rejected", peer.calling_ae, peer.address)
    with ingest.sessions.begin() as session:
        audit.record(
            session,
            Event.ASSOCIATION_REJECTED,
            Outcome.FAILURE,
            peer=peer,
            detail=_rejection_reason(event),
        )


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
    ingest.close_association(id(event.assoc))


def make_ae(settings: Settings) -> AE:
    """The node's AE: C-ECHO, every storage SOP class (CR and DX in the transfer syntaxes it
    decodes), associations only when called by its own AE title."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    ae.require_called_aet = True
    ae.add_supported_context(Verification)
    radiographs = {str(uid) for uid in RADIOGRAPH_CLASSES}
    for context in AllStoragePresentationContexts:
        sop_class = str(context.abstract_syntax)
        syntaxes = TRANSFER_SYNTAXES if sop_class in radiographs else ALL_TRANSFER_SYNTAXES
        ae.add_supported_context(sop_class, list(syntaxes))
    return ae


def start_server(settings: Settings, ingest: Ingest) -> ThreadedAssociationServer:
    """Start listening in the background; the caller shuts the server down."""
    # Real-world headers often bend VR rules; the node checks the values it relies on itself
    # (uids.py) instead of letting pydicom warn (or, under -W error, fail) on every instance.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    ae = make_ae(settings)
    args: list[Any] = [ingest]
    handlers: list[Any] = [
        (evt.EVT_C_STORE, handle_store, args),
        (evt.EVT_ACCEPTED, handle_accepted, args),
        (evt.EVT_REJECTED, handle_rejected, args),
        (evt.EVT_RELEASED, handle_closed, args),
        (evt.EVT_ABORTED, handle_closed, args),
    ]
    server = ae.start_server((settings.host, settings.port), block=False, evt_handlers=handlers)
    assert server is not None  # block=False always returns the server
    log.info("listening as %s on %s:%s", settings.ae_title, settings.host, server.server_address[1])
    return server
