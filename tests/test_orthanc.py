"""The headline flow against a real Orthanc: Orthanc pushes a chest study to the node through its
REST API; the SR and the Grad-CAM SC come back into the same Orthanc study within 30 s on this
CPU-only machine; the audit table shows the full trail."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.db import AuditEvent, Job
from dicom_node.node import Node
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.peers import (
    OrthancServer,
    free_port,
    send_study,
    upload_files,
    wait_for_study_instances,
)

pytestmark = pytest.mark.integration

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture


def _wait_until_finished(node: Node, study_uid: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with node.sessions() as session:
            state = session.scalars(
                select(Job.state).where(Job.study_instance_uid == study_uid)
            ).first()
        if state in {"done", "skipped", "failed"}:
            return
        time.sleep(0.1)
    raise TimeoutError("job did not finish")


def test_orthanc_study_gets_sr_and_sc_back_within_30_seconds(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Upload a PA chest study to Orthanc, push it to the node by REST; within 30 s the same
    Orthanc study holds the source, the SR and the SC, received by C-STORE from the node."""
    node_port = free_port()
    with OrthancServer(
        modalities={"DICOMNODE": ("DICOMNODE", "127.0.0.1", node_port)}, graceful_stop=False
    ) as orthanc:
        settings = make_settings(
            port=node_port,
            allowed_calling_aets=["ORTHANC"],
            destinations=[
                {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
            ],
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            source = chest_image(study_uid=study_uid, findings=("Cardiomegaly", "Effusion"))
            upload_files(orthanc.api, write_study(tmp_path, [source]))
            started = time.monotonic()
            send_study(orthanc.api, modality="DICOMNODE", study_instance_uid=study_uid)
            instances = wait_for_study_instances(orthanc.api, study_uid, 3, timeout=30)
            elapsed = time.monotonic() - started
            _wait_until_finished(node, study_uid)  # results are recorded just after the C-STOREs
            with node.sessions() as session:
                events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()

    assert elapsed < 30
    classes = sorted(i.sop_class_uid for i in instances)
    assert classes == sorted([str(source.SOPClassUID), SR_CLASS, SC_CLASS])
    results = [i for i in instances if i.sop_class_uid in {SR_CLASS, SC_CLASS}]
    assert all(i.origin == "DicomProtocol" and i.remote_aet == "DICOMNODE" for i in results)
    assert len({i.series_instance_uid for i in instances}) == 3  # results in new series

    trail = [e.event_type for e in events]
    for step in (
        "node_start",
        "association_accepted",
        "instance_received",
        "study_ready",
        "job_started",
        "result_sent",
        "job_finished",
    ):
        assert step in trail, f"audit trail lacks {step}"
    received = next(e for e in events if e.event_type == "instance_received")
    assert received.calling_ae == "ORTHANC" and received.study_instance_uid == study_uid
    assert trail.count("result_sent") == 2
