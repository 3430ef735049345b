"""Critical-finding notifications against real receivers on loopback: the signed webhook (an
HTTP server) and the HL7 ORU^R01 over MLLP (a socket server answering hl7apy ACKs); planning
once per SR and kind, retries after a refusal, the dead letter, audit rows and metrics."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import http.server
import json
import logging
import shutil
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dicom_validators import chest_radiograph
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message
from peers import free_port
from prometheus_client import REGISTRY
from pydicom import Dataset
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session, sessionmaker
from test_sr import analysed_image

from dicom_node.errors import ConfigError
from dicom_node.model.bundle import METADATA, BundleError, load_bundle
from dicom_node.notify import (
    HL7,
    WEBHOOK,
    Notifier,
    NotifyError,
    critical_findings,
    critical_thresholds,
    oru_r01,
    plan_notifications,
    post,
    send_mllp,
    signature,
)
from dicom_node.notify.hl7 import check_ack, control_id
from dicom_node.settings import Settings
from dicom_node.store.database import make_session_factory, open_database
from dicom_node.store.schema import AuditEvent, Job, Notification, Study, utcnow
from dicom_node.testing import DEMO_BUNDLE, node_settings, tiny_bundle
from structured_reports.results import ModelIdentity, StudyResult

MODEL = ModelIdentity(name="cxr14-densenet121", version="1.2.0", weights_sha256="ab" * 32)
SR_UID = "2.25.1234567890"
SECRET = "s3cret-shared-key"
# Pneumothorax of image 1 is 0.409 and of image 2 0.055 (tests/test_sr.py, seeds 1 and 2).
CRITICAL = {"Pneumothorax": 0.3}
MLLP_START, MLLP_END = b"\x0b", b"\x1c\x0d"


# ---- the study, the database, the settings ---------------------------------------------------


def study_result(critical: dict[str, float] | None = None) -> tuple[StudyResult, Dataset]:
    """Two analysed frontal radiographs of one study and the header of the first."""
    dx, cr = chest_radiograph(number=1), chest_radiograph(number=2, modality="CR", view="AP")
    result = StudyResult(
        study_instance_uid=str(dx.StudyInstanceUID),
        model=MODEL,
        images=(analysed_image(dx, 1), analysed_image(cr, 2)),
        critical=critical or {},
    )
    return result, dx


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return open_database(f"sqlite:///{tmp_path / 'n.db'}")


@pytest.fixture
def job_id(sessions: sessionmaker[Session]) -> int:
    """A study row and its done job (the notification rows refer to the job)."""
    result, _ = study_result()
    now = utcnow()
    with sessions.begin() as session:
        session.add(
            Study(
                study_instance_uid=result.study_instance_uid,
                state="ready",
                first_received_at=now,
                last_instance_at=now,
                calling_ae="MOD",
            )
        )
        session.flush()
        job = Job(study_instance_uid=result.study_instance_uid, state="done", created_at=now)
        session.add(job)
        session.flush()
        return job.id


def settings_for(
    tmp_path: Path, *, webhook: str | None = None, hl7_port: int | None = None, **more: Any
) -> Settings:
    values: dict[str, Any] = {"notify_timeout_seconds": 2.0, "retry_initial_seconds": 0.5}
    if webhook is not None:
        values.update(webhook_url=webhook, webhook_secret=SECRET)
    if hl7_port is not None:
        values.update(hl7_host="127.0.0.1", hl7_port=hl7_port)
    values.update(more)
    return node_settings(tmp_path, **values)


def plan(
    sessions: sessionmaker[Session],
    job_id: int,
    settings: Settings,
    *,
    critical: dict[str, float] = CRITICAL,
    sr_uid: str = SR_UID,
) -> list[int]:
    result, header = study_result(critical)
    with sessions.begin() as session:
        return plan_notifications(
            session,
            job_id=job_id,
            study=result,
            sr_sop_instance_uid=sr_uid,
            header=header,
            critical=critical,
            settings=settings,
        )


def rows(sessions: sessionmaker[Session]) -> list[Notification]:
    with sessions() as session:
        return list(session.scalars(select(Notification).order_by(Notification.id)))


def audit_rows(sessions: sessionmaker[Session]) -> list[AuditEvent]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.event_type.like("notification_%"))
                .order_by(AuditEvent.seq)
            )
        )


def wait_until_due(sessions: sessionmaker[Session]) -> None:
    [row] = rows(sessions)
    assert row.due_at is not None
    time.sleep(max(0.0, (row.due_at - utcnow()).total_seconds()) + 0.05)


def segments(element: Any, name: str) -> list[Any]:
    """The segments called `name` of an hl7apy message or group, depth first."""
    found = []
    for child in element.children:
        if child.classname == "Group":
            found.extend(segments(child, name))
        elif child.name == name:
            found.append(child)
    return found


def parse_strictly(text: str) -> Any:
    """The ER7 message parsed by hl7apy against the v2.5.1 structure (groups, strict)."""
    return parse_message(text, find_groups=True, validation_level=VALIDATION_LEVEL.STRICT)


def counted(kind: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "dicom_node_notifications_total", {"kind": kind, "outcome": outcome}
    )
    return value or 0.0


# ---- the receivers -----------------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """An HTTP server on loopback: records each POST, answers the next planned status (200)."""

    url: str
    received: list[tuple[http.client.HTTPMessage, bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    state = WebhookReceiver(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(state.delay)
            state.received.append((self.headers, body))  # names case-insensitive
            status = state.statuses.pop(0) if state.statuses else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/critical?token=abc"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@dataclass
class MllpReceiver:
    """An MLLP listener on loopback: unframes each message, records it, answers an hl7apy ACK
    with the next planned (MSA-1, MSA-3) (AA)."""

    port: int
    received: list[str] = field(default_factory=list)
    answers: list[tuple[str, str]] = field(default_factory=list)


def ack(message: str, code: str, text: str) -> str:
    """The ACK of `message` built with hl7apy: MSH answering its sender, MSA-1 `code`, MSA-2
    its control ID, MSA-3 `text`."""
    incoming = parse_message(message, find_groups=False)
    reply = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.TOLERANT)
    reply.msh.msh_3 = incoming.msh.msh_5.to_er7()
    reply.msh.msh_5 = incoming.msh.msh_3.to_er7()
    reply.msh.msh_9 = "ACK^R01^ACK"
    reply.msh.msh_10 = "ACK0001"
    reply.msh.msh_11 = "P"
    reply.msh.msh_12 = "2.5.1"
    reply.msa.msa_1 = code
    reply.msa.msa_2 = incoming.msh.msh_10.to_er7()
    if text:
        reply.msa.msa_3 = text
    return str(reply.to_er7())


@pytest.fixture
def mllp() -> Iterator[MllpReceiver]:
    state = MllpReceiver(port=0)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            buffer = b""
            while MLLP_END not in buffer:
                chunk = self.request.recv(65536)
                if not chunk:
                    return
                buffer += chunk
            assert buffer.startswith(MLLP_START)
            message = buffer[1 : buffer.index(MLLP_END)].decode("utf-8")
            state.received.append(message)
            code, text = state.answers.pop(0) if state.answers else ("AA", "")
            self.request.sendall(MLLP_START + ack(message, code, text).encode() + MLLP_END)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


# ---- which findings are critical ---------------------------------------------------------------


def test_critical_findings_are_each_label_once_at_its_highest_probability() -> None:
    """Pneumothorax reaches 0.3 on image 1 only (0.409; 0.055 on image 2): one finding, with the
    critical threshold, its SNOMED CT code and image 1's UID; Hernia at 0.999 is not critical."""
    result, header = study_result()
    [finding] = critical_findings(result, {"Pneumothorax": 0.3, "Hernia": 0.999})
    assert (finding.label, finding.code_value, finding.code_scheme) == (
        "Pneumothorax",
        "36118008",
        "SCT",
    )
    assert finding.threshold == 0.3
    assert finding.probability == pytest.approx(0.4091991363691613)
    assert finding.image_sop_instance_uid == str(header.SOPInstanceUID)
    both = critical_findings(result, {"Pneumothorax": 0.05})
    assert [f.image_sop_instance_uid for f in both] == [str(header.SOPInstanceUID)]


def test_critical_thresholds_setting_overrides_the_bundle() -> None:
    """None: the bundle's table; a table (even empty): that one; an unknown label or a value
    outside (0, 1): ConfigError naming the setting."""
    bundle, labels = {"Pneumothorax": 0.79}, ("Pneumothorax", "Effusion")
    assert dict(critical_thresholds(None, bundle, labels)) == bundle
    assert dict(critical_thresholds({}, bundle, labels)) == {}
    assert dict(critical_thresholds({"Effusion": 0.9}, bundle, labels)) == {"Effusion": 0.9}
    with pytest.raises(ConfigError, match=r"critical_findings.*Hernia"):
        critical_thresholds({"Hernia": 0.5}, bundle, labels)
    with pytest.raises(ConfigError, match=r"critical_findings\.Effusion"):
        critical_thresholds({"Effusion": 1.5}, bundle, labels)


def test_demo_bundle_names_pneumothorax_critical_at_its_threshold() -> None:
    """The demo bundle's critical table: Pneumothorax at the label's own threshold."""
    bundle = load_bundle(DEMO_BUNDLE)
    pneumothorax = bundle.thresholds[bundle.labels.index("Pneumothorax")]
    assert dict(bundle.critical_findings) == {"Pneumothorax": pneumothorax}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"Hernia": 0.5}, "does not predict"),
        ({"Effusion": 1.5}, r"critical_findings\.Effusion' must lie in \(0, 1\)"),
        ({"Effusion": True}, r"critical_findings\.Effusion' must be"),
        (["Effusion"], "critical_findings' must be dict"),
    ],
    ids=["unknown label", "out of range", "not a number", "not a table"],
)
def test_bundle_critical_findings_are_validated(
    tmp_path: Path, table: object, message: str
) -> None:
    """A bundle's critical_findings with an unknown label or a bad threshold is refused, the
    message naming metadata.json and the key."""
    tiny_bundle(tmp_path / "ok")
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "ok", bad)
    doc = json.loads((bad / METADATA).read_text())
    doc["dicom_node"]["critical_findings"] = table
    (bad / METADATA).write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)
    assert dict(load_bundle(tmp_path / "ok").critical_findings) == {}


# ---- planning ----------------------------------------------------------------------------------


def test_study_below_critical_thresholds_plans_nothing(
    tmp_path: Path, sessions: sessionmaker[Session], job_id: int
) -> None:
    """No finding at or above its critical threshold: no row, whatever is configured."""
    settings = settings_for(tmp_path, webhook="http://127.0.0.1:9/x", hl7_port=2575)
    assert plan(sessions, job_id, settings, critical={"Pneumothorax": 0.95}) == []
    assert plan(sessions, job_id, settings, critical={}) == []
    assert rows(sessions) == []


def test_planning_twice_for_one_sr_gives_one_row_per_kind(
    tmp_path: Path, sessions: sessionmaker[Session], job_id: int
) -> None:
    """A re-run that makes the same SR plans nothing new; a new SR version plans again."""
    settings = settings_for(tmp_path, webhook="http://127.0.0.1:9/x", hl7_port=2575)
    first = plan(sessions, job_id, settings)
    assert len(first) == 2
    assert plan(sessions, job_id, settings) == []
    planned = rows(sessions)
    assert sorted(row.kind for row in planned) == [HL7, WEBHOOK]
    assert {(row.state, row.attempts, row.sr_sop_instance_uid) for row in planned} == {
        ("pending", 0, SR_UID)
    }
    assert {row.target for row in planned} == {"http://127.0.0.1:9/x", "127.0.0.1:2575"}
    assert len(plan(sessions, job_id, settings, sr_uid="2.25.99")) == 2


def test_only_configured_receivers_are_planned(
    tmp_path: Path, sessions: sessionmaker[Session], job_id: int
) -> None:
    """Neither webhook_url nor hl7_host: nothing; only hl7_host: an HL7 row only."""
    assert plan(sessions, job_id, settings_for(tmp_path)) == []
    plan(sessions, job_id, settings_for(tmp_path, hl7_port=2575))
    assert [row.kind for row in rows(sessions)] == [HL7]


# ---- the webhook ---------------------------------------------------------------------------


def test_webhook_delivers_a_signed_body(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    job_id: int,
    webhook: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One POST: the JSON body names the study, order, patient, SR, finding and model; the
    HMAC-SHA256 recomputed over the received bytes equals the signature header; the row is sent,
    audited (host and port, not the URL's token) and counted; no patient data in the logs."""
    caplog.set_level(logging.DEBUG)
    settings = settings_for(tmp_path, webhook=webhook.url)
    plan(sessions, job_id, settings)
    before = counted(WEBHOOK, "sent")
    assert Notifier(sessions, settings, model=MODEL.label).run_once() == 1
    [(headers, body)] = webhook.received
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-DicomNode-Signature"], expected)
    assert headers["X-DicomNode-Event"] == "critical-finding"
    document = json.loads(body)
    result, header = study_result()
    assert document["study_instance_uid"] == result.study_instance_uid
    assert (document["accession_number"], document["patient_id"]) == ("ACC-42", "PID-000123")
    assert document["sr_sop_instance_uid"] == SR_UID
    [finding] = document["findings"]
    assert finding["label"] == "Pneumothorax"
    assert finding["code"] == {"value": "36118008", "scheme": "SCT", "meaning": "Pneumothorax"}
    assert finding["probability"] == round(0.4091991363691613, 6)
    assert finding["threshold"] == 0.3
    assert finding["image_sop_instance_uid"] == str(header.SOPInstanceUID)
    assert document["model"] == {
        "name": MODEL.name,
        "version": MODEL.version,
        "weights_sha256": MODEL.weights_sha256,
        "device_uid": MODEL.device_uid,
    }
    assert document["synthetic_demo"] is False
    assert body == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    [row] = rows(sessions)
    assert (row.state, row.attempts, row.last_error, row.payload.encode()) == (
        "sent",
        1,
        None,
        body,
    )
    [event] = audit_rows(sessions)
    port = webhook.url.split(":")[2].split("/")[0]
    assert (event.event_type, event.outcome, event.job_id) == (
        "notification_sent",
        "success",
        job_id,
    )
    assert event.peer_address == f"127.0.0.1:{port}"
    assert event.study_instance_uid == result.study_instance_uid
    assert event.model == MODEL.label
    assert "token" not in (event.detail or "")
    assert counted(WEBHOOK, "sent") == before + 1
    assert "PID-000123" not in caplog.text and "Doe" not in caplog.text


def test_webhook_500_is_retried_after_backoff_and_delivered_once(
    tmp_path: Path, sessions: sessionmaker[Session], job_id: int, webhook: WebhookReceiver
) -> None:
    """HTTP 500: the row is failed with the status as last error and due after
    retry_initial_seconds, audited as a failure; nothing is sent before then; after it, one
    successful delivery of the same bytes."""
    settings = settings_for(tmp_path, webhook=webhook.url)
    plan(sessions, job_id, settings)
    webhook.statuses.append(500)
    notifier = Notifier(sessions, settings)
    assert notifier.run_once() == 1
    [row] = rows(sessions)
    assert (row.state, row.attempts) == ("failed", 1)
    assert "HTTP 500" in (row.last_error or "")
    assert row.due_at is not None and row.due_at > utcnow()
    assert notifier.run_once() == 0
    wait_until_due(sessions)
    assert notifier.run_once() == 1
    assert [row.state for row in rows(sessions)] == ["sent"]
    assert len(webhook.received) == 2 and webhook.received[0][1] == webhook.received[1][1]
    events = [(e.event_type, e.outcome) for e in audit_rows(sessions)]
    assert events == [("notification_failed", "failure"), ("notification_sent", "success")]


def test_two_notifiers_send_a_row_once(
    tmp_path: Path, sessions: sessionmaker[Session], job_id: int, webhook: WebhookReceiver
) -> None:
    """Two senders on one database at the same time (two processes' notifiers): the claim lets
    one of them send; the receiver gets one POST."""
    settings = settings_for(tmp_path, webhook=webhook.url)
    plan(sessions, job_id, settings)
    webhook.delay = 0.3
    other = make_session_factory(create_engine(f"sqlite:///{tmp_path / 'n.db'}"))
    counts: list[int] = []
    threads = [
        threading.Thread(target=lambda s=s: counts.append(Notifier(s, settings).run_once()))
        for s in (sessions, other)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(counts) == [0, 1]
    assert len(webhook.received) == 1


def test_webhook_errors_are_notify_errors(webhook: WebhookReceiver) -> None:
    """A closed port, a 4xx and a redirect (not followed: the signed body goes to the
    configured URL only) all raise NotifyError; a 2xx returns its status."""
    with pytest.raises(NotifyError, match="unreachable"):
        post(f"http://127.0.0.1:{free_port()}/x", b"{}", SECRET, 2.0)
    webhook.statuses.extend([404, 307, 204])
    with pytest.raises(NotifyError, match="HTTP 404"):
        post(webhook.url, b"{}", SECRET, 2.0)
    with pytest.raises(NotifyError, match="HTTP 307"):
        post(webhook.url, b"{}", SECRET, 2.0)
    assert post(webhook.url, b"{}", SECRET, 2.0) == 204
    with pytest.raises(NotifyError, match="http"):
        post("file:///etc/passwd", b"{}", SECRET, 2.0)
    assert signature(b"{}", "k") == "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()


# ---- HL7 -------------------------------------------------------------------------------------


def test_oru_r01_reaches_the_mllp_receiver(
    tmp_path: Path, sessions: sessionmaker[Session], job_id: int, mllp: MllpReceiver
) -> None:
    """The receiver parses (hl7apy) an ORU^R01 v2.5.1 with the configured applications, the
    patient's ID and name, the accession number as order numbers, a preliminary result, the
    finding (CE, SCT 36118008, flag AA), its probability (NM) and the study and SR UIDs; its
    ACK AA makes the row sent."""
    settings = settings_for(tmp_path, hl7_port=mllp.port)
    plan(sessions, job_id, settings)
    assert Notifier(sessions, settings).run_once() == 1
    [text] = mllp.received
    message = parse_strictly(text)
    msh = message.msh
    assert msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert msh.msh_12.to_er7() == "2.5.1"
    assert (msh.msh_3.to_er7(), msh.msh_5.to_er7()) == ("DICOM-NODE", "RIS")
    [pid] = segments(message, "PID")
    assert pid.pid_3.to_er7() == "PID-000123^^^HOSP"
    assert pid.pid_5.to_er7() == "Doe^Jane^^^Ms"
    [obr] = segments(message, "OBR")
    assert (obr.obr_2.to_er7(), obr.obr_3.to_er7(), obr.obr_25.to_er7()) == ("ACC-42",) * 2 + ("P",)
    obx = {segment.obx_2.to_er7(): segment for segment in segments(message, "OBX")}
    assert obx["CE"].obx_5.to_er7() == "36118008^Pneumothorax^SCT"
    assert obx["CE"].obx_8.to_er7() == "AA"
    assert obx["NM"].obx_5.to_er7() == "0.409199"
    assert obx["ST"].obx_5.to_er7() == study_result()[0].study_instance_uid
    notes = " ".join(segment.nte_3.to_er7() for segment in segments(message, "NTE"))
    assert SR_UID in notes and "critical threshold 0.300" in notes and MODEL.weights_sha256 in notes
    [row] = rows(sessions)
    assert (row.state, row.target) == ("sent", f"127.0.0.1:{mllp.port}")
    [event] = audit_rows(sessions)
    assert (event.event_type, event.peer_address) == ("notification_sent", row.target)


def test_hl7_ae_fails_with_the_receivers_text_then_is_resent(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    job_id: int,
    mllp: MllpReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ACK AE: failed, last error with the MSA-3 text (the log without it: a receiver's text may
    name the patient), due later; the retry (same message control ID: the receiver can drop a
    duplicate) is accepted with AA."""
    caplog.set_level(logging.INFO)
    settings = settings_for(tmp_path, hl7_port=mllp.port)
    plan(sessions, job_id, settings)
    mllp.answers.append(("AE", "Unknown order"))
    notifier = Notifier(sessions, settings)
    assert notifier.run_once() == 1
    [row] = rows(sessions)
    assert row.state == "failed" and row.due_at is not None and row.due_at > utcnow()
    assert "AE" in (row.last_error or "") and "Unknown order" in (row.last_error or "")
    assert "answered AE" in caplog.text and "Unknown order" not in caplog.text
    wait_until_due(sessions)
    assert notifier.run_once() == 1
    assert [row.state for row in rows(sessions)] == ["sent"]
    first, second = (parse_message(t, find_groups=False) for t in mllp.received)
    assert first.msh.msh_10.to_er7() == second.msh.msh_10.to_er7()


def test_ack_rejections_and_silence_are_notify_errors(tmp_path: Path, mllp: MllpReceiver) -> None:
    """AR with its text, an ACK of another message and a closed port raise NotifyError."""
    result, header = study_result(CRITICAL)
    message = oru_r01(
        study=result,
        findings=critical_findings(result, CRITICAL),
        header=header,
        sr_sop_instance_uid=SR_UID,
        settings=settings_for(tmp_path, hl7_port=mllp.port),
        now=dt.datetime.now(dt.UTC),
    )
    mllp.answers.append(("AR", "Unsupported message type"))
    with pytest.raises(NotifyError, match="AR: Unsupported message type"):
        send_mllp("127.0.0.1", mllp.port, message, 2.0)
    with pytest.raises(NotifyError, match="acknowledged message"):
        check_ack(ack(message, "AA", ""), control_id("2.25.777"))  # the ACK of another SR's
    check_ack(ack(message, "CA", ""), control_id(SR_UID))  # enhanced mode: accepted
    with pytest.raises(NotifyError, match="unreachable"):
        send_mllp("127.0.0.1", free_port(), message, 2.0)


def test_hl7_delimiters_in_values_are_escaped(tmp_path: Path) -> None:
    """A Patient ID with | and & and an accession number with ^ stay one value each: the
    message parses strictly and the values come back escaped (\\F\\, \\T\\, \\S\\)."""
    result, header = study_result(CRITICAL)
    header.PatientID = "A|B&C"
    header.AccessionNumber = "X^Y"
    text = oru_r01(
        study=result,
        findings=critical_findings(result, CRITICAL),
        header=header,
        sr_sop_instance_uid=SR_UID,
        settings=settings_for(tmp_path, hl7_port=2575),
        now=dt.datetime.now(dt.UTC),
    )
    message = parse_strictly(text)
    [pid], [obr] = segments(message, "PID"), segments(message, "OBR")
    assert pid.pid_3.cx_1.to_er7() == "A\\F\\B\\T\\C"
    assert obr.obr_3.to_er7() == "X\\S\\Y"


def test_a_payload_that_cannot_be_built_is_dead_not_a_failed_job(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    job_id: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hl7apy refusing a value does not raise into the job's transaction: the HL7 row is dead
    with the reason, audited; the webhook row of the same SR is planned as usual."""

    def refuse(**_: Any) -> str:
        raise ValueError("a value hl7apy refuses")

    monkeypatch.setattr("dicom_node.notify.outbox.oru_r01", refuse)
    settings = settings_for(tmp_path, webhook="http://127.0.0.1:9/x", hl7_port=2575)
    assert len(plan(sessions, job_id, settings)) == 2
    states = {row.kind: (row.state, row.last_error) for row in rows(sessions)}
    assert states[WEBHOOK] == ("pending", None)
    assert states[HL7][0] == "dead" and "hl7apy refuses" in (states[HL7][1] or "")
    [event] = audit_rows(sessions)
    assert (event.event_type, event.outcome) == ("notification_failed", "failure")


# ---- the dead letter and the loop --------------------------------------------------------------


def test_failure_after_the_retry_window_dead_letters(
    tmp_path: Path, sessions: sessionmaker[Session], job_id: int
) -> None:
    """A notification older than retry_window_seconds that fails again is dead: no due time,
    audited as a failure saying dead-lettered, counted as dead, not tried again."""
    settings = settings_for(tmp_path, hl7_port=free_port(), retry_window_seconds=60.0)
    plan(sessions, job_id, settings)
    with sessions.begin() as session:
        session.execute(update(Notification).values(created_at=utcnow() - dt.timedelta(seconds=61)))
    before = counted(HL7, "dead")
    notifier = Notifier(sessions, settings)
    assert notifier.run_once() == 1
    [row] = rows(sessions)
    assert (row.state, row.due_at, row.attempts) == ("dead", None, 1)
    [event] = audit_rows(sessions)
    assert (event.event_type, event.outcome) == ("notification_failed", "failure")
    assert "dead-lettered" in (event.detail or "")
    assert counted(HL7, "dead") == before + 1
    assert notifier.run_once() == 0


def test_run_sends_when_woken_and_survives_a_broken_database(
    tmp_path: Path,
    sessions: sessionmaker[Session],
    job_id: int,
    webhook: WebhookReceiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """run() sends a row planned while it waits as soon as it is woken, and stops when told;
    run() on a database that cannot be opened logs and goes on, never raising."""
    settings = settings_for(tmp_path, webhook=webhook.url)
    stop, wake = threading.Event(), threading.Event()
    loop = threading.Thread(target=Notifier(sessions, settings).run, args=(stop, wake))
    loop.start()
    plan(sessions, job_id, settings)
    wake.set()
    deadline = time.monotonic() + 5
    while not webhook.received and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loop.join(5)
    assert not loop.is_alive() and len(webhook.received) == 1

    broken = make_session_factory(create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"))
    stop = threading.Event()
    loop = threading.Thread(target=Notifier(broken, settings).run, args=(stop,))
    loop.start()
    time.sleep(0.3)
    stop.set()
    loop.join(5)
    assert not loop.is_alive()
    assert "sending due notifications failed" in caplog.text


# ---- through a running node --------------------------------------------------------------------


def test_a_study_crossing_a_critical_threshold_notifies_once_by_webhook_and_hl7(
    tmp_path: Path, webhook: WebhookReceiver, mllp: MllpReceiver
) -> None:
    """A running node with the demo model, a webhook receiver and an MLLP listener: a study
    whose radiograph shows a pneumothorax (critical in the demo bundle) produces exactly one
    signed webhook and one ORU^R01 naming the study, the finding, its probability and the
    model; its SR at the PACS carries the critical-finding flag. A study with only
    cardiomegaly (not critical) produces no notification."""
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from dicom_node.node import Node
    from dicom_node.store.jobs import wait_finished
    from tests.conftest import chest_image, write_study
    from tests.peers import StoreSCP, storescu

    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        settings = node_settings(
            tmp_path,
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}],
            webhook_url=webhook.url,
            webhook_secret=SECRET,
            hl7_host="127.0.0.1",
            hl7_port=mllp.port,
        )
        with Node(settings) as node:
            studies = {}
            for name, findings in (("critical", ("Pneumothorax",)), ("plain", ("Cardiomegaly",))):
                uid = str(generate_uid())
                image = chest_image(study_uid=uid, findings=findings)
                image.AccessionNumber = f"A-{name}"
                assert (
                    storescu(write_study(tmp_path / name, [image]), port=node.port).returncode == 0
                )
                wait_finished(node.sessions, uid, timeout=60)
                studies[name] = uid
            deadline = time.monotonic() + 20
            while (not webhook.received or not mllp.received) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(1.0)  # nothing more comes
            with node.sessions() as session:
                notified = session.scalars(select(Notification)).all()
        srs = [
            dcmread(path)
            for path in pacs.received()
            if dcmread(path, stop_before_pixels=True).Modality == "SR"
        ]
    assert len(webhook.received) == 1 and len(mllp.received) == 1
    assert {(n.study_instance_uid, n.state) for n in notified} == {(studies["critical"], "sent")}
    headers, body = webhook.received[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-DicomNode-Signature"], expected)
    document = json.loads(body)
    assert document["study_instance_uid"] == studies["critical"]
    assert document["accession_number"] == "A-critical"
    [finding] = document["findings"]
    assert finding["label"] == "Pneumothorax" and finding["probability"] >= finding["threshold"]
    assert document["model"]["name"] == "cxr14-densenet121-demo"
    assert document["synthetic_demo"] is True
    oru = parse_strictly(mllp.received[0])
    assert oru.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert "36118008" in mllp.received[0] and studies["critical"] in mllp.received[0]
    flagged = {str(sr.StudyInstanceUID) for sr in srs if "CRITICAL-FINDING" in str(sr)}
    assert flagged == {studies["critical"]}
