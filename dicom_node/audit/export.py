"""Reading the audit table for auditors: filters (patient, study, AE title, event, time range),
and export to CSV, JSON and DICOM audit message XML (PS3.15 A.5.1), with readers that load CSV
and JSON exports back into rows."""

from __future__ import annotations

import csv
import datetime as dt
import json
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session

from dicom_node.audit import AuditRecord
from dicom_node.audit.chain import ROW_FIELDS, Row, canonical_time
from dicom_node.audit.codes import DICOM_EVENTS, EVENT_IDS, LOCAL_SCHEME
from dicom_node.audit.participants import MessageContext, add_participants
from dicom_node.store.schema import AuditEvent

INT_FIELDS = frozenset({"id", "seq", "outcome_code", "job_id"})
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
FORMATS = ("csv", "json", "xml")


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditFilter:
    """What an auditor asks for; every given criterion must hold. `event` is a node event name
    (`instance_received`) or a DICOM Event ID (`110104`); `ae_title` matches calling or called."""

    patient_id: str | None = None
    study_instance_uid: str | None = None
    ae_title: str | None = None
    event: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def describe(self) -> str:
        parts = [
            f"{name}={_text(getattr(self, name))}"
            for name in self.__slots__
            if getattr(self, name) is not None
        ]
        return ", ".join(parts) or "all events"

    def query(self) -> Select[Any]:
        """The filtered rows in chain order."""
        columns = [getattr(AuditEvent, name) for name in ROW_FIELDS]
        query = select(*columns)
        for condition in self._conditions():
            query = query.where(condition)
        return query.order_by(AuditEvent.seq, AuditEvent.id)

    def _conditions(self) -> Iterator[Any]:
        if self.patient_id is not None:
            yield AuditEvent.patient_id == self.patient_id
        if self.study_instance_uid is not None:
            yield AuditEvent.study_instance_uid == self.study_instance_uid
        if self.ae_title is not None:
            yield or_(AuditEvent.calling_ae == self.ae_title, AuditEvent.called_ae == self.ae_title)
        if self.event is not None:
            column = AuditEvent.event_id if self.event.isdigit() else AuditEvent.event_type
            yield column == self.event
        if self.since is not None:
            yield AuditEvent.occurred_at >= self.since
        if self.until is not None:
            yield AuditEvent.occurred_at < self.until


def _text(value: Any) -> str:
    return canonical_time(value) if isinstance(value, dt.datetime) else str(value)


def fetch(session: Session, filters: AuditFilter, limit: int | None = None) -> Iterator[Row]:
    """Matching rows, streamed in chain order."""
    query = filters.query() if limit is None else filters.query().limit(limit)
    for row in session.execute(query.execution_options(yield_per=2000)):
        yield row._mapping


# ---- CSV and JSON ----------------------------------------------------------------------------


def _plain(name: str, value: Any) -> Any:
    return canonical_time(value) if name == "occurred_at" and value is not None else value


def _typed(name: str, value: Any) -> Any:
    if value is None or value == "":
        return None
    if name == "occurred_at":
        return dt.datetime.strptime(str(value), TIME_FORMAT).replace(tzinfo=dt.UTC)
    return int(value) if name in INT_FIELDS else str(value)


def write_csv(rows: Iterable[Row], stream: IO[str]) -> int:
    """One header line and one line per row; empty cells are nulls. Returns the row count."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(ROW_FIELDS)
    count = 0
    for row in rows:
        writer.writerow(["" if row[n] is None else _plain(n, row[n]) for n in ROW_FIELDS])
        count += 1
    return count


def read_csv(stream: IO[str]) -> list[dict[str, Any]]:
    return [{n: _typed(n, line[n]) for n in ROW_FIELDS} for line in csv.DictReader(stream)]


def write_json(rows: Iterable[Row], stream: IO[str]) -> int:
    """A JSON array of objects, written row by row. Returns the row count."""
    stream.write("[")
    count = 0
    for row in rows:
        item = {n: _plain(n, row[n]) for n in ROW_FIELDS}
        stream.write(("\n" if count == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
        count += 1
    stream.write("\n]\n")
    return count


def read_json(stream: IO[str]) -> list[dict[str, Any]]:
    return [{n: _typed(n, item[n]) for n in ROW_FIELDS} for item in json.load(stream)]


# ---- DICOM audit message XML -----------------------------------------------------------------


def _coded(parent: ET.Element, tag: str, value: str, scheme: str, meaning: str) -> ET.Element:
    return ET.SubElement(
        parent, tag, {"csd-code": value, "codeSystemName": scheme, "originalText": meaning}
    )


def audit_message(item: AuditRecord, ctx: MessageContext) -> ET.Element:
    """One AuditMessage: EventIdentification, ActiveParticipant+, AuditSourceIdentification,
    ParticipantObjectIdentification* (in the schema's order)."""
    message = ET.Element("AuditMessage")
    _event_identification(message, item)
    add_participants(message, item, ctx)
    return message


def _event_identification(message: ET.Element, item: AuditRecord) -> None:
    event = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": item.event_action,
            "EventDateTime": canonical_time(item.occurred_at),
            "EventOutcomeIndicator": str(item.outcome_code),
        },
    )
    code = EVENT_IDS[item.event_id]
    _coded(event, "EventID", code.value, code.scheme, code.meaning)
    spec = DICOM_EVENTS.get(item.event_type)
    if spec is not None and spec.type_code is not None:
        type_code = spec.type_code
        _coded(event, "EventTypeCode", type_code.value, type_code.scheme, type_code.meaning)
    meaning = f"{item.event_type.replace('_', ' ')} ({item.outcome})"
    _coded(event, "EventTypeCode", item.event_type, LOCAL_SCHEME, meaning)
    if item.detail:
        ET.SubElement(event, "EventOutcomeDescription").text = item.detail


def message_bytes(item: AuditRecord, ctx: MessageContext) -> bytes:
    """One AuditMessage as a UTF-8 XML document (the syslog payload)."""
    document: bytes = ET.tostring(audit_message(item, ctx), encoding="utf-8", xml_declaration=True)
    return document


def write_xml(rows: Iterable[Row], stream: IO[str], ctx: MessageContext) -> int:
    """An `AuditMessages` document holding one schema-shaped AuditMessage per row."""
    stream.write('<?xml version="1.0" encoding="UTF-8"?>\n<AuditMessages>\n')
    count = 0
    for row in rows:
        element = audit_message(AuditRecord.from_row(row), ctx)
        stream.write(ET.tostring(element, encoding="unicode") + "\n")
        count += 1
    stream.write("</AuditMessages>\n")
    return count


def write_export(
    fmt: str, rows: Iterable[Row], stream: IO[str], ctx: MessageContext | None = None
) -> int:
    if fmt == "csv":
        return write_csv(rows, stream)
    if fmt == "json":
        return write_json(rows, stream)
    if fmt == "xml":
        return write_xml(rows, stream, ctx or MessageContext(source_id=socket.gethostname()))
    raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
