"""Send: C-STORE of result objects to a destination, with retries and exponential backoff, and a
per-instance status check (a failure status is not a success)."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

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
        pending = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in paths)}
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
        self, destination: Destination, datasets: list[Dataset], attempt: int
    ) -> dict[str, SendOutcome]:
        assoc = self._associate(destination, datasets)
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "no association"
            return {
                str(ds.SOPInstanceUID): _failed(ds, attempt, f"{reason} by {destination}")
                for ds in datasets
            }
        try:  # each C-STORE of the association with a Message ID of its own (PS3.7 9.3.1.1)
            return {
                str(ds.SOPInstanceUID): _store(assoc, ds, attempt, message_id=number)
                for number, ds in enumerate(datasets, start=1)
            }
        finally:
            if assoc.is_established:
                assoc.release()

    def _associate(self, destination: Destination, datasets: list[Dataset]) -> Association:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_seconds
        wanted = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
        for sop_class, syntax in sorted(wanted):
            ae.add_requested_context(
                sop_class, sorted({syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian})
            )
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


def _store(assoc: Association, ds: Dataset, attempt: int, *, message_id: int) -> SendOutcome:
    uid = str(ds.SOPInstanceUID)
    try:
        rsp = assoc.send_c_store(ds, msg_id=message_id)
    except (ValueError, RuntimeError) as exc:  # no accepted context, or association lost
        return _failed(ds, attempt, str(exc))
    status = int(rsp.Status) if "Status" in rsp else None
    if status in STORED_STATUSES:
        return SendOutcome(sop_instance_uid=uid, ok=True, status=status, attempts=attempt)
    error = "no response (timeout or abort)" if status is None else describe_status(rsp)
    return SendOutcome(sop_instance_uid=uid, ok=False, status=status, attempts=attempt, error=error)


def describe_status(rsp: Dataset) -> str:
    """A C-STORE response's status in words: its meaning (PS3.4 Annex B) and the peer's Error
    Comment, e.g. `status 0xA700 (Refused: Out of Resources): disk full`."""
    status = int(rsp.Status)
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", "unknown status"))[1]
    comment = str(rsp.get("ErrorComment", "") or "").strip()
    return f"status 0x{status:04X} ({meaning})" + (f": {comment}" if comment else "")


def _failed(ds: Dataset, attempt: int, error: str) -> SendOutcome:
    return SendOutcome(
        sop_instance_uid=str(ds.SOPInstanceUID),
        ok=False,
        status=None,
        attempts=attempt,
        error=error,
    )
