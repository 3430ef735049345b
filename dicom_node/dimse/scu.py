"""Send: C-STORE of result objects to a destination, with retries and exponential backoff, and a
per-instance status check (a failure status is not a success).

Each object is sent from its spool file as it was encoded, without being parsed and encoded
again (pynetdicom streams the file's data set, `STORE_SEND_CHUNKED_DATASET`); only where the
destination accepted none of the file's transfer syntax is the file read and converted."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from pydicom import Dataset, dcmread
from pydicom.filereader import read_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from dicom_node.dimse.commitment import (
    PUSH_MODEL_INSTANCE,
    REQUEST_COMMITMENT,
    StorageCommitmentPushModel,
    reference,
)
from dicom_node.dimse.tls import no_delay
from dicom_node.settings import Destination

log = logging.getLogger(__name__)

# PS3.7 C.4.2.1.4 / Annex B: success, and the warnings that still mean "stored".
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


@dataclass(frozen=True, kw_only=True, slots=True)
class SendOutcome:
    """What became of one instance sent to one destination."""

    sop_instance_uid: str
    ok: bool
    status: int | None
    attempts: int
    error: str | None = None
    commitment_uid: str | None = None  # the storage commitment transaction that asked for it


@dataclass(frozen=True, kw_only=True, slots=True)
class OutgoingFile:
    """A Part 10 file to send, known by its file meta information alone."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str

    @classmethod
    def read(cls, path: Path) -> OutgoingFile:
        meta = read_file_meta_info(path)
        return cls(
            path=path,
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
            transfer_syntax_uid=str(meta.TransferSyntaxUID),
        )


class Sender(Protocol):
    """Delivers files to a destination; the seam tests may replace (see dicom_node.testing)."""

    def send(self, destination: Destination, paths: Sequence[Path]) -> list[SendOutcome]: ...


class DimseSender:
    """C-STORE SCU: one association per destination per batch, retried with exponential backoff."""

    def __init__(
        self,
        *,
        ae_title: str,
        max_pdu: int = 131072,
        attempts: int = 4,
        backoff_seconds: float = 1.0,
        timeout_seconds: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`tls_context`: the client context (`dicom_node.dimse.tls.client_context`) for the
        destinations with `tls = true`."""
        self.ae_title = ae_title
        self.tls_context = tls_context
        self.max_pdu = max_pdu
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.sleep = sleep

    def send(self, destination: Destination, paths: Sequence[Path]) -> list[SendOutcome]:
        _config.STORE_SEND_CHUNKED_DATASET = True  # a path is streamed, not parsed
        pending = {f.sop_instance_uid: f for f in (OutgoingFile.read(p) for p in paths)}
        outcomes: dict[str, SendOutcome] = {}
        for attempt in range(1, self.attempts + 1):
            outcomes.update(self._send_once(destination, list(pending.values()), attempt))
            pending = {uid: ds for uid, ds in pending.items() if not outcomes[uid].ok}
            if not pending:
                break
            if attempt < self.attempts:
                delay = self.backoff_seconds * 2 ** (attempt - 1)
                log.warning(
                    "%d result(s) not stored by %s (attempt %d), retrying in %.1f s",
                    len(pending),
                    destination,
                    attempt,
                    delay,
                )
                self.sleep(delay)
        return list(outcomes.values())

    def _send_once(
        self, destination: Destination, files: list[OutgoingFile], attempt: int
    ) -> dict[str, SendOutcome]:
        assoc = self._associate(destination, files)
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "no association"
            return {
                f.sop_instance_uid: _failed(f, attempt, f"{reason} by {destination}") for f in files
            }
        if assoc.dul.socket is not None and assoc.dul.socket.socket is not None:
            no_delay(assoc.dul.socket.socket)
        try:  # each C-STORE of the association with a Message ID of its own (PS3.7 9.3.1.1)
            outcomes = {
                f.sop_instance_uid: _store(assoc, f, attempt, message_id=number)
                for number, f in enumerate(files, start=1)
            }
            if destination.storage_commitment:
                stored = [f for f in files if outcomes[f.sop_instance_uid].ok]
                outcomes.update(request_commitment(assoc, stored, outcomes, len(files) + 1))
            return outcomes
        finally:
            if assoc.is_established:
                assoc.release()

    def _associate(self, destination: Destination, files: list[OutgoingFile]) -> Association:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_seconds
        wanted = {(f.sop_class_uid, f.transfer_syntax_uid) for f in files}
        for sop_class, syntax in sorted(wanted):
            ae.add_requested_context(
                sop_class, sorted({syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian})
            )
        if destination.storage_commitment:
            ae.add_requested_context(StorageCommitmentPushModel)
        return ae.associate(
            destination.host,
            destination.port,
            ae_title=destination.ae_title,
            max_pdu=self.max_pdu,
            tls_args=self._tls_args(destination),
        )

    def _tls_args(self, destination: Destination) -> tuple[ssl.SSLContext, str] | None:
        if not destination.tls:
            return None
        if self.tls_context is None:
            raise ValueError(f"{destination} asks for DICOM TLS, and no TLS files are set")
        return self.tls_context, destination.tls_server_name or destination.host


def _store(
    assoc: Association, outgoing: OutgoingFile, attempt: int, *, message_id: int
) -> SendOutcome:
    uid = outgoing.sop_instance_uid
    try:
        if _accepts(assoc, outgoing):
            rsp = assoc.send_c_store(outgoing.path, msg_id=message_id)
        else:  # another transfer syntax accepted: pynetdicom converts the parsed data set
            rsp = assoc.send_c_store(dcmread(outgoing.path), msg_id=message_id)
    except (ValueError, RuntimeError, OSError) as exc:  # no context, association lost
        return _failed(outgoing, attempt, str(exc))
    status = int(rsp.Status) if "Status" in rsp else None
    if status in STORED_STATUSES:
        return SendOutcome(sop_instance_uid=uid, ok=True, status=status, attempts=attempt)
    error = "no response (timeout or abort)" if status is None else describe_status(rsp)
    return SendOutcome(sop_instance_uid=uid, ok=False, status=status, attempts=attempt, error=error)


def request_commitment(
    assoc: Association,
    stored: list[OutgoingFile],
    outcomes: Mapping[str, SendOutcome],
    message_id: int,
) -> dict[str, SendOutcome]:
    """Ask the destination to commit to the stored files: their outcomes with the Transaction
    UID when it took the request, failed (sent again later) when it did not."""
    if not stored:
        return {}
    transaction_uid = str(generate_uid())
    request = Dataset()
    request.TransactionUID = transaction_uid
    request.ReferencedSOPSequence = DicomSequence(
        [reference(f.sop_class_uid, f.sop_instance_uid) for f in stored]
    )
    try:
        status, _ = assoc.send_n_action(
            request,
            REQUEST_COMMITMENT,
            StorageCommitmentPushModel,
            PUSH_MODEL_INSTANCE,
            msg_id=message_id,
        )
        code = int(status.Status) if "Status" in status else None
    except (ValueError, RuntimeError, OSError) as exc:  # the context was not accepted, ...
        log.warning("storage commitment not requested: %s", exc)
        error: str | None = f"storage commitment not accepted: {exc}"
    else:
        error = None if code == 0 else f"storage commitment refused: N-ACTION status {code}"
    done = {}
    for f in stored:
        outcome = outcomes[f.sop_instance_uid]
        if error is None:
            done[f.sop_instance_uid] = replace(outcome, commitment_uid=transaction_uid)
        else:
            done[f.sop_instance_uid] = replace(outcome, ok=False, error=error)
    return done


def _reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item


def describe_status(rsp: Dataset) -> str:
    """A C-STORE response's status in words: its meaning (PS3.4 Annex B) and the peer's Error
    Comment, e.g. `status 0xA700 (Refused: Out of Resources): disk full`."""
    status = int(rsp.Status)
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", "unknown status"))[1]
    comment = str(rsp.get("ErrorComment", "") or "").strip()
    return f"status 0x{status:04X} ({meaning})" + (f": {comment}" if comment else "")


def _accepts(assoc: Association, outgoing: OutgoingFile) -> bool:
    """The destination accepted the file's SOP class in the file's own transfer syntax."""
    return any(
        str(cx.abstract_syntax) == outgoing.sop_class_uid
        and str(cx.transfer_syntax[0]) == outgoing.transfer_syntax_uid
        for cx in assoc.accepted_contexts
    )


def _failed(outgoing: OutgoingFile, attempt: int, error: str) -> SendOutcome:
    return SendOutcome(
        sop_instance_uid=outgoing.sop_instance_uid,
        ok=False,
        status=None,
        attempts=attempt,
        error=error,
    )
