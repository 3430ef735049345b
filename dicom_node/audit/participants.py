"""Who and what took part in an audit event, as PS3.15 A.5 message parts: active participants
with their roles (source, destination, application, launcher), the audit source, and participant
objects (patient, study with SOP classes and instance counts, the audit log, an alert subject)."""

from __future__ import annotations

import base64
import ipaddress
import socket
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from dicom_node.audit import AuditRecord
from dicom_node.audit.codes import (
    APPLICATION_SERVER,
    DICOM_EVENTS,
    NODE_ID,
    PATIENT_NUMBER,
    ROLE_APPLICATION,
    ROLE_APPLICATION_LAUNCHER,
    ROLE_DESTINATION,
    ROLE_SOURCE,
    STUDY_INSTANCE_UID,
    URI,
    Code,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageContext:
    """What the rows do not hold: the node's identity and the audit log's name."""

    source_id: str  # AuditSourceID: the node's AE title
    local_ae: str | None = None  # our AE title where the row does not name it
    hostname: str = field(default_factory=socket.gethostname)
    log_uri: str = "audit_events"  # the audit log (database URL without password)
    enterprise_site: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Participant:
    user_id: str
    requestor: bool
    role: Code | None = None
    ae_title: str | None = None
    user_name: str | None = None
    address: str | None = None

    def add_to(self, message: ET.Element) -> None:
        attributes = {"UserID": self.user_id}
        if self.ae_title:
            attributes["AlternativeUserID"] = f"AETITLES={self.ae_title}"
        if self.user_name:
            attributes["UserName"] = self.user_name
        attributes["UserIsRequestor"] = "true" if self.requestor else "false"
        if self.address:
            attributes["NetworkAccessPointID"] = self.address
            attributes["NetworkAccessPointTypeCode"] = "2" if _is_ip(self.address) else "1"
        element = ET.SubElement(message, "ActiveParticipant", attributes)
        if self.role is not None:
            _coded(element, "RoleIDCode", self.role)


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {"csd-code": code.value, "codeSystemName": code.scheme, "originalText": code.meaning},
    )


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _host(address: str | None) -> str | None:
    """The host of "host:port" (or "[v6]:port")."""
    if not address:
        return None
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address
    return host.strip("[]")


def add_participants(message: ET.Element, item: AuditRecord, ctx: MessageContext) -> None:
    """ActiveParticipant+, AuditSourceIdentification, ParticipantObjectIdentification*."""
    for participant in participants(item, ctx):
        participant.add_to(message)
    source = ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": ctx.source_id})
    if ctx.enterprise_site:
        source.set("AuditEnterpriseSiteID", ctx.enterprise_site)
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": APPLICATION_SERVER})
    _add_objects(message, item, ctx)


def participants(item: AuditRecord, ctx: MessageContext) -> list[Participant]:
    direction = DICOM_EVENTS[item.event_type].direction
    node = Participant(
        user_id=item.process or ctx.hostname,
        requestor=False,
        ae_title=(item.called_ae if direction != "outbound" else None) or ctx.local_ae,
        user_name=f"dicom-node ({item.model})" if item.model else "dicom-node",
        address=ctx.hostname,
    )
    peer = Participant(
        user_id=(item.calling_ae if direction != "outbound" else item.called_ae)
        or _host(item.peer_address)
        or "unknown",
        requestor=direction != "outbound",
        ae_title=item.calling_ae if direction != "outbound" else item.called_ae,
        address=_host(item.peer_address),
    )
    if direction == "inbound":
        return [_with(peer, role=ROLE_SOURCE), _with(node, role=ROLE_DESTINATION)]
    if direction == "outbound":
        return [
            _with(node, role=ROLE_SOURCE, requestor=True),
            _with(peer, role=ROLE_DESTINATION, requestor=False),
        ]
    if direction == "security":
        return [node, peer]  # the reporting process, then the node that tried
    if direction == "audit":
        return [_launcher(item, ctx) or _with(node, requestor=True)]
    return _local(item, node, ctx)


def _local(item: AuditRecord, node: Participant, ctx: MessageContext) -> list[Participant]:
    launcher = _launcher(item, ctx)
    if item.event_id != "110100":  # the model reading instances: the process, or who asked
        return [_with(node, requestor=True)] if launcher is None else [launcher, node]
    application = _with(node, role=ROLE_APPLICATION)
    return [application] if launcher is None else [application, launcher]


def _launcher(item: AuditRecord, ctx: MessageContext) -> Participant | None:
    if not item.user_id:
        return None
    role = ROLE_APPLICATION_LAUNCHER if item.event_id == "110100" else None
    return Participant(user_id=item.user_id, requestor=True, role=role, address=ctx.hostname)


def _with(participant: Participant, **changes: object) -> Participant:
    values = {name: getattr(participant, name) for name in Participant.__slots__}
    values.update(changes)
    return Participant(**values)


# ---- participant objects ---------------------------------------------------------------------


def _object(
    message: ET.Element,
    object_id: str,
    type_code: str,
    role: str | None,
    *,
    id_type: Code,
    name: str,
) -> ET.Element:
    attributes = {"ParticipantObjectID": object_id, "ParticipantObjectTypeCode": type_code}
    if role is not None:
        attributes["ParticipantObjectTypeCodeRole"] = role
    element = ET.SubElement(message, "ParticipantObjectIdentification", attributes)
    _coded(element, "ParticipantObjectIDTypeCode", id_type)
    ET.SubElement(element, "ParticipantObjectName").text = name
    return element


def _add_objects(message: ET.Element, item: AuditRecord, ctx: MessageContext) -> None:
    direction = DICOM_EVENTS[item.event_type].direction
    if direction == "audit":
        log = _object(message, ctx.log_uri, "2", "13", id_type=URI, name="Security Audit Log")
        if item.detail:
            value = base64.b64encode(item.detail.encode("utf-8")).decode("ascii")
            ET.SubElement(log, "ParticipantObjectDetail", {"type": "Action", "value": value})
        return
    if direction == "security" and (item.calling_ae or item.peer_address):
        subject = f"{item.calling_ae or ''}@{item.peer_address or ''}"
        _object(message, subject, "2", None, id_type=NODE_ID, name=item.calling_ae or subject)
    if item.study_instance_uid:
        _study(message, item)
    if item.patient_id:
        # The node keeps no patient names: the name repeats the Patient ID.
        _object(message, item.patient_id, "1", "1", id_type=PATIENT_NUMBER, name=item.patient_id)


def _study(message: ET.Element, item: AuditRecord) -> None:
    uid = item.study_instance_uid or ""
    study = _object(message, uid, "2", "3", id_type=STUDY_INSTANCE_UID, name=uid)
    counts = item.counts
    if not counts:
        return
    description = ET.SubElement(study, "ParticipantObjectDescription")
    for sop_class, number in counts.items():
        element = ET.SubElement(
            description, "SOPClass", {"UID": sop_class, "NumberOfInstances": str(number)}
        )
        if item.sop_instance_uid and sop_class == item.sop_class_uid:
            ET.SubElement(element, "Instance", {"UID": item.sop_instance_uid})
