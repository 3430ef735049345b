"""Who may hold an association: the peer registry (`peers`: each known sender's calling AE
title, the addresses it may come from, whether it must use DICOM TLS) and the limit of
associations per address. pynetdicom itself refuses a wrong called AE title and a calling AE
title outside `allowed_calling_aets` (A-ASSOCIATE-RJ); what it cannot check is refused here,
just after acceptance, by aborting the association. Every refusal is audited by the caller."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from collections.abc import Sequence

from pynetdicom.association import Association

from dicom_node.dimse.tls import peer_subject
from dicom_node.settings import KnownPeer, Settings


def refusal(assoc: Association, settings: Settings) -> str | None:
    """Why the association may not go on, or None."""
    host = str(assoc.requestor.address)
    held = sum(1 for other in assoc.ae.active_associations if other.requestor.address == host)
    if held > settings.max_associations_per_peer:
        return f"{held} associations from {host}: more than {settings.max_associations_per_peer}"
    if not settings.peers:
        return None
    calling = str(assoc.requestor.ae_title).strip()
    known = [peer for peer in settings.peers if peer.ae_title == calling]
    if not known:
        return f"calling AE title {calling!r} is not a known peer"
    allowed = [peer for peer in known if _allowed_from(peer, host)]
    if not allowed:
        return f"calling AE title {calling!r} is not allowed from {host}"
    if all(peer.require_tls for peer in allowed) and not over_tls(assoc):
        return f"calling AE title {calling!r} must use DICOM TLS"
    return None


def over_tls(assoc: Association) -> bool:
    """Whether the association runs over DICOM TLS."""
    return isinstance(_socket(assoc), ssl.SSLSocket)


def tls_subject(assoc: Association) -> str | None:
    """The subject of the peer's TLS certificate, when it presented one."""
    return peer_subject(_socket(assoc))


def _socket(assoc: Association) -> object:
    transport = assoc.dul.socket
    return transport.socket if transport is not None else None


def _allowed_from(peer: KnownPeer, host: str) -> bool:
    if not peer.addresses:
        return True
    address = ipaddress.ip_address(host)
    return any(address in network for network in _networks(peer.addresses))


@functools.lru_cache(maxsize=256)
def _networks(entries: Sequence[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """The networks of a peer's address list: CIDR networks and addresses as they are, host
    names by what they resolve to (looked up once)."""
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            try:
                resolved = {info[4][0] for info in socket.getaddrinfo(entry, None)}
            except OSError:
                continue  # a name that does not resolve admits nobody
            networks += [ipaddress.ip_network(str(ip)) for ip in resolved]
    return tuple(networks)
