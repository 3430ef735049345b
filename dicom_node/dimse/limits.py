"""Bounds on what a peer can make the node read: no PDU longer than the node accepts, and no PDU
read for longer than the association allows.

pynetdicom reads a PDU by trusting its length field and looping on `recv` until that many bytes
came: an A-ASSOCIATE-RQ claiming 4 GiB was read for 256 MB before the node closed it, and one
dripped at a byte every five seconds held its connection for minutes (the ARTIM timer is only
looked at between PDUs). `bounded_read_pdu` replaces its PDU reader (`install`): a P-DATA-TF PDU
may be as long as the maximum PDU the node advertised, any other PDU 1 MiB (an A-ASSOCIATE-RQ
offering every storage class in every transfer syntax is about 60 KB), and the whole PDU must
arrive within the ACSE timeout before the association is established, within the network
timeout after. A PDU over either limit ends the connection (Evt17/Evt19, as pynetdicom's own
reader does for a broken one), without reading the rest.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any

from pynetdicom.dul import DULServiceProvider

log = logging.getLogger(__name__)

MAX_CONTROL_PDU = 1 << 20  # A-ASSOCIATE, A-RELEASE, A-ABORT PDUs
UNLIMITED_PDATA = 32 << 20  # a P-DATA-TF PDU when the node advertised no maximum (0)
_PDU_TYPES = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07})
_P_DATA_TF = 0x04


def pdu_limit(dul: DULServiceProvider, pdu_type: int) -> int:
    """The longest PDU of `pdu_type` this association accepts."""
    if pdu_type != _P_DATA_TF:
        return MAX_CONTROL_PDU
    assoc = dul.assoc
    own = assoc.acceptor if assoc.is_acceptor else assoc.requestor
    return int(own.maximum_length or 0) or UNLIMITED_PDATA


def read_deadline(dul: DULServiceProvider) -> float:
    """When the PDU being read must be complete (monotonic clock)."""
    assoc = dul.assoc
    timeout = assoc.network_timeout if assoc.is_established else assoc.acse_timeout
    return time.monotonic() + float(timeout or 60.0)


def bounded_read_pdu(dul: DULServiceProvider) -> None:
    """pynetdicom's `_read_pdu_data`, with the length and time bounds of the module docstring."""
    deadline = read_deadline(dul)
    header = _read(dul, 6, deadline)
    if header is None or len(header) < 6:
        dul.event_queue.put("Evt17")  # transport closed or too slow
        return
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type not in _PDU_TYPES:
        dul.event_queue.put("Evt19")
        return
    if length > pdu_limit(dul, pdu_type):
        log.warning(
            "PDU of type 0x%02X claims %d bytes, more than accepted: closed", pdu_type, length
        )
        dul.event_queue.put("Evt17")
        return
    body = _read(dul, length, deadline)
    if body is None or len(body) != length:
        log.warning("PDU not received in time or in full: connection closed")
        dul.event_queue.put("Evt17")
        return
    try:
        pdu, event = dul._decode_pdu(header + body)
    except Exception:  # pynetdicom's reader answers any undecodable PDU with Evt19
        log.warning("undecodable PDU of type 0x%02X", pdu_type)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put(event)
    dul._recv_pdu.put(pdu)


def _read(dul: DULServiceProvider, count: int, deadline: float) -> bytearray | None:
    """`count` bytes from the association's socket, or what came before the peer closed it;
    None when the deadline passed."""
    sock: Any = dul.socket.socket if dul.socket is not None else None
    if sock is None:
        return None
    data = bytearray()
    previous = sock.gettimeout()
    try:
        while len(data) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            chunk = sock.recv(min(count - len(data), 65536))
            if not chunk:
                break
            data.extend(chunk)
    except TimeoutError:
        return None
    except OSError:
        return data
    finally:
        sock.settimeout(previous)
    return data


def install() -> None:
    """Make every association of this process read PDUs through `bounded_read_pdu`."""
    DULServiceProvider._read_pdu_data = bounded_read_pdu  # type: ignore[method-assign,assignment]
