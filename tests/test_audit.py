"""The audit trail written by real DICOM traffic, in the DICOM PS3.15 A.5 vocabulary: application
start/stop, begin transferring, instances transferred (in and out), instances accessed by the
model, security alerts, audit log used; query and export (CSV/JSON read back equal, XML shaped
as the A.5.1 schema)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditRecord
from dicom_node.audit import chain as audit_chain
from dicom_node.audit import export as audit_export
from dicom_node.audit.participants import MessageContext
from dicom_node.node import Node
from dicom_node.store.schema import AuditEvent, Job
from dicom_node.testing import tiny_bundle as make_tiny_bundle
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.peers import StoreSCP, echoscu, storescu
from tests.test_audit_chain import events, run_cli, write_config

pytestmark = pytest.mark.integration

DX = str(DigitalXRayImageStorageForPresentation)
PATIENT = "TEST-PID-4711"
MESSAGE_ORDER = (
    "EventIdentification",
    "ActiveParticipant",
    "AuditSourceIdentification",
    "ParticipantObjectIdentification",
)


# ---- helpers (imported by the other audit tests) ---------------------------------------------


def message_of(row: AuditEvent, **context: Any) -> ET.Element:
    """The DICOM audit message of a row, parsed back from its bytes."""
    record = AuditRecord.from_row({n: getattr(row, n) for n in audit_chain.ROW_FIELDS})
    ctx = MessageContext(source_id="DICOMNODE", local_ae="DICOMNODE", **context)
    return ET.fromstring(audit_export.message_bytes(record, ctx))


def check_message_shape(message: ET.Element) -> None:
    """The A.5.1 schema's required parts, in its order, with the mandatory attributes."""
    assert message.tag == "AuditMessage"
    tags = [child.tag for child in message]
    assert tags[0] == "EventIdentification"
    assert tags.count("AuditSourceIdentification") == 1
    assert "ActiveParticipant" in tags
    ranks = [MESSAGE_ORDER.index(tag) for tag in tags]
    assert ranks == sorted(ranks), tags
    event = message.find("EventIdentification")
    assert event is not None
    assert {"EventDateTime", "EventOutcomeIndicator"} <= set(event.attrib)
    assert event.get("EventActionCode") in {"C", "R", "U", "D", "E"}
    event_id = event.find("EventID")
    assert event_id is not None and event_id.get("codeSystemName") == "DCM"
    for participant in message.findall("ActiveParticipant"):
        assert participant.get("UserID") and participant.get("UserIsRequestor") in {"true", "false"}
    for obj in message.findall("ParticipantObjectIdentification"):
        assert obj.get("ParticipantObjectID")
        assert [c.tag for c in obj][:2] == ["ParticipantObjectIDTypeCode", "ParticipantObjectName"]
    source = message.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID")


def roles(message: ET.Element) -> dict[str, ET.Element]:
    """Active participants by their RoleIDCode."""
    found = {}
    for participant in message.findall("ActiveParticipant"):
        role = participant.find("RoleIDCode")
        if role is not None:
            found[str(role.get("csd-code"))] = participant
    return found


def objects(message: ET.Element) -> dict[str, ET.Element]:
    """Participant objects by their ID type code."""
    found = {}
    for obj in message.findall("ParticipantObjectIdentification"):
        id_type = obj.find("ParticipantObjectIDTypeCode")
        assert id_type is not None
        found[str(id_type.get("csd-code"))] = obj
    return found


def tiny_bundle(path: Path) -> Path:
    """A valid MONAI bundle of a very small DenseNet121 with random weights (fast on CPU)."""
    return make_tiny_bundle(path).path


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


# ---- receiving: 110100, 110102, 110104, 110113 ---------------------------------------------


@pytest.fixture
def traffic(
    make_settings: SettingsFactory, tmp_path: Path, study_uid: str
) -> Iterator[sessionmaker[Session]]:
    """A receive-only node that got a C-ECHO, two DX by storescu and a refused calling AE."""
    # a quiet period longer than the fixture: no study_ready row appears, however slow the
    # machine (it did when the node stopped after the 0.5 s default)
    settings = make_settings(allowed_calling_aets=["MODALITY", "ECHOSCU"], quiet_seconds=60.0)
    files = write_study(tmp_path / "in", [chest_image(study_uid=study_uid, seed=s) for s in (0, 1)])
    with Node(settings, workers=0) as node:
        assert echoscu(port=node.port).returncode == 0
        stored = storescu(files, port=node.port, calling="MODALITY")
        assert stored.returncode == 0, stored.stderr
        assert storescu(files[:1], port=node.port, calling="INTRUDER").returncode != 0
        wait_for(lambda: len(events(node.sessions, event_id="110113")) == 1, 10)
    yield node.sessions


def test_application_start_and_stop_are_110100(traffic: sessionmaker[Session]) -> None:
    """Node start and stop: Application Activity with Application Start/Stop type codes."""
    start, stop = events(traffic, event_id="110100")
    assert (start.event_type, stop.event_type) == ("node_start", "node_stop")
    message = message_of(start)
    check_message_shape(message)
    types = [t.get("csd-code") for t in message.iter("EventTypeCode")]
    assert "110120" in types
    assert "110121" in [t.get("csd-code") for t in message_of(stop).iter("EventTypeCode")]
    assert set(roles(message)) == {"110150", "110151"}  # application and its launcher


def test_associations_are_begin_transferring_110102(traffic: sessionmaker[Session]) -> None:
    """Each accepted association (echoscu, storescu) is Begin Transferring, source = caller."""
    begun = events(traffic, event_id="110102")
    assert sorted(e.calling_ae or "" for e in begun) == ["ECHOSCU", "MODALITY"]
    message = message_of(begun[-1])
    check_message_shape(message)
    source = roles(message)["110153"]
    assert source.get("AlternativeUserID") == f"AETITLES={begun[-1].calling_ae}"
    assert source.get("NetworkAccessPointID") == "127.0.0.1"
    assert roles(message)["110152"].get("AlternativeUserID") == "AETITLES=DICOMNODE"


def test_received_instances_are_110104_with_patient_study_and_sop_class(
    traffic: sessionmaker[Session], study_uid: str
) -> None:
    """Each stored DX: Instances Transferred, action C, source MODALITY, destination the node,
    participant objects patient and study with the SOP class, count and instance UID."""
    received = events(traffic, event_type="instance_received")
    assert len(received) == 2
    row = received[0]
    assert (row.event_id, row.event_action, row.outcome_code) == ("110104", "C", 0)
    message = message_of(row)
    check_message_shape(message)
    assert set(roles(message)) == {"110152", "110153"}
    assert roles(message)["110153"].get("UserIsRequestor") == "true"
    found = objects(message)
    assert found["2"].get("ParticipantObjectID") == PATIENT
    study = found["110180"]
    assert study.get("ParticipantObjectID") == study_uid
    sop_class = study.find("ParticipantObjectDescription/SOPClass")
    assert sop_class is not None
    assert (sop_class.get("UID"), sop_class.get("NumberOfInstances")) == (DX, "1")
    instance = sop_class.find("Instance")
    assert instance is not None and instance.get("UID") == row.sop_instance_uid


def test_refused_calling_ae_is_a_security_alert_110113(traffic: sessionmaker[Session]) -> None:
    """An unknown calling AE: Security Alert, Node Authentication, minor failure, the intruder
    named as performing participant and alert subject."""
    (alert,) = events(traffic, event_id="110113")
    assert (alert.calling_ae, alert.outcome_code) == ("INTRUDER", 4)
    message = message_of(alert)
    check_message_shape(message)
    event = message.find("EventIdentification")
    assert event is not None and event.get("EventOutcomeIndicator") == "4"
    assert "110126" in [t.get("csd-code") for t in message.iter("EventTypeCode")]
    users = [p.get("UserID") for p in message.findall("ActiveParticipant")]
    assert "INTRUDER" in users
    assert objects(message)["110182"].findtext("ParticipantObjectName") == "INTRUDER"


def test_traffic_leaves_an_intact_chain(traffic: sessionmaker[Session]) -> None:
    """Everything the node wrote verifies, positions 1..n without gaps."""
    with traffic() as session:
        report = audit_chain.verify(session)
    assert report.ok, report.problems
    assert report.checked == report.head_seq == len(events(traffic))


# ---- analysing and sending: 110103, 110104 outbound ------------------------------------------


def test_model_reading_and_results_sent_are_110103_and_110104(
    make_settings: SettingsFactory, tmp_path: Path, study_uid: str
) -> None:
    """A study through the whole loop (tiny model, DCMTK storescp as PACS): the model's reading
    is Instances Accessed with the patient, study, SOP class counts and model; each result sent
    is Instances Transferred (action R), the node as source and the PACS as destination."""
    bundle = tiny_bundle(tmp_path / "bundle")
    files = write_study(tmp_path / "in", [chest_image(study_uid=study_uid, size=(128, 128))])
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
        settings = make_settings(model_bundle=bundle, destinations=[destination], sc_max_side=64)
        with Node(settings, workers=1) as node:
            assert storescu(files, port=node.port, calling="MODALITY").returncode == 0
            wait_for(lambda: len(events(node.sessions, event_type="job_finished")) == 1, 120)
    with node.sessions() as session:
        assert session.scalars(select(Job.state)).all() == ["done"]
    started = events(node.sessions, event_type="job_started")[0]
    assert (started.event_id, started.event_action, started.patient_id) == ("110103", "R", PATIENT)
    assert started.model and started.model.startswith("tiny 0.0.1")
    message = message_of(started)
    check_message_shape(message)
    sop_class = objects(message)["110180"].find("ParticipantObjectDescription/SOPClass")
    assert sop_class is not None and sop_class.get("NumberOfInstances") == "1"
    sent = events(node.sessions, event_type="result_sent")
    assert len(sent) == 2  # the SR and the Grad-CAM SC
    assert {(e.event_id, e.event_action, e.called_ae) for e in sent} == {("110104", "R", "PACS")}
    out = message_of(sent[0])
    check_message_shape(out)
    assert roles(out)["110153"].get("UserIsRequestor") == "true"  # the node sent
    assert roles(out)["110152"].get("AlternativeUserID") == "AETITLES=PACS"
    assert objects(out)["2"].get("ParticipantObjectID") == PATIENT


# ---- query and export: 110101 ----------------------------------------------------------------


def test_query_filters_and_is_audited(traffic: sessionmaker[Session], tmp_path: Path) -> None:
    """Query by patient, study, AE title, event and time; each query is an Audit Log Used."""
    url = str(traffic.kw["bind"].url)
    config = write_config(tmp_path / "node.toml", url)
    code, out = run_cli("query", "--config", str(config), "--patient-id", PATIENT)
    assert code == 0 and "(2 row(s))" in out
    code, out = run_cli("query", "--config", str(config), "--ae-title", "INTRUDER")
    assert "(1 row(s))" in out and "association_rejected" in out
    code, out = run_cli("query", "--config", str(config), "--event", "110102")
    assert "(2 row(s))" in out
    code, out = run_cli(
        "query", "--config", str(config), "--since", "2000-01-01", "--until", "2001-01-01"
    )
    assert "(0 row(s))" in out
    used = events(traffic, event_id="110101")
    assert len(used) == 4
    assert f"patient_id={PATIENT}" in (used[0].detail or "")
    assert used[0].user_id and "@" in used[0].user_id
    message = message_of(used[0], log_uri=url)
    check_message_shape(message)
    log_object = objects(message)["12"]
    assert log_object.get("ParticipantObjectID") == url
    assert log_object.get("ParticipantObjectTypeCodeRole") == "13"


def test_csv_and_json_exports_read_back_equal(
    traffic: sessionmaker[Session], tmp_path: Path
) -> None:
    """CSV and JSON exports load back into exactly the rows in the table."""
    config = write_config(tmp_path / "node.toml", str(traffic.kw["bind"].url))
    for fmt, reader in (("csv", audit_export.read_csv), ("json", audit_export.read_json)):
        with traffic() as session:
            everything = audit_export.fetch(session, audit_export.AuditFilter())
            expected = [dict(row) for row in everything]
        path = tmp_path / f"audit.{fmt}"
        assert run_cli("export", "--config", str(config), "--format", fmt, "-o", str(path))[0] == 0
        with path.open(encoding="utf-8", newline="") as stream:
            assert reader(stream) == expected
    assert [e.event_type for e in events(traffic, event_id="110101")] == ["audit_log_used"] * 2


def test_xml_export_parses_as_dicom_audit_messages(
    traffic: sessionmaker[Session], tmp_path: Path, study_uid: str
) -> None:
    """The XML export holds one schema-shaped AuditMessage per matching row."""
    config = write_config(tmp_path / "node.toml", str(traffic.kw["bind"].url))
    path = tmp_path / "audit.xml"
    args = ("export", "--config", str(config), "--format", "xml", "--study", study_uid)
    assert run_cli(*args, "-o", str(path))[0] == 0
    root = ET.parse(path).getroot()
    messages = root.findall("AuditMessage")
    assert len(messages) == 2
    for message in messages:
        check_message_shape(message)
        event_id = message.find("EventIdentification/EventID")
        assert event_id is not None and event_id.get("csd-code") == "110104"
        source = message.find("AuditSourceIdentification")
        assert source is not None and source.get("AuditSourceID") == "DICOMNODE"
