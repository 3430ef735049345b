"""The headline flow against a real Orthanc: Orthanc pushes a chest study to the node through its
REST API; the SR and the Grad-CAM SC come back into the same Orthanc study within 30 s on this
CPU-only machine; the audit table shows the full trail; the Orthanc Web Viewer shows the SC the
node sent (heatmap colour where the SC has it); a reprocessed study leaves Orthanc with the same
three instances (the resent SR and SC have the same UIDs)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.uid import KeyObjectSelectionDocumentStorage, generate_uid
from sqlalchemy import select

from dicom_node.node import Node
from dicom_node.pipeline.reprocess import request_reprocess
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Job, Skip
from dicom_node.testing import node_settings
from structured_reports.overlay import overlay_layout
from tests.conftest import chest_image, write_study
from tests.peers import (
    COMPREHENSIVE_3D_SR_STORAGE,
    OrthancServer,
    StoredInstance,
    free_port,
    list_study_instances,
    send_study,
    upload_files,
    wait_for_study_instances,
)
from tests.real_world import gsps_for, kos_for
from tests.webviewer import (
    CHROMIUM,
    coloured,
    find_sc,
    heatmap_pixels,
    radiograph_on_screen,
    screenshot,
    viewer_url,
)

pytestmark = pytest.mark.integration

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
SOURCE_SIZE = (512, 512)  # below sc_max_side: the SC shows the radiograph at this size


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Flow:
    """The state after Orthanc pushed one study to the node and got its results back."""

    orthanc: OrthancServer
    node: Node
    study_uid: str
    source_class: str
    instances: list[StoredInstance]
    elapsed: float
    events: list[AuditEvent]


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """Upload a PA chest study to Orthanc, push it to the node by REST, wait for the results."""
    root = tmp_path_factory.mktemp("orthanc-flow")
    node_port = free_port()
    with OrthancServer(
        modalities={"DICOMNODE": ("DICOMNODE", "127.0.0.1", node_port)}, graceful_stop=False
    ) as orthanc:
        destination = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        settings = node_settings(
            root, port=node_port, allowed_calling_aets=["ORTHANC"], destinations=[destination]
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            source = chest_image(
                study_uid=study_uid, findings=("Cardiomegaly", "Effusion"), size=SOURCE_SIZE
            )
            upload_files(orthanc.api, write_study(root / "study", [source]))
            started = time.monotonic()
            send_study(orthanc.api, modality="DICOMNODE", study_instance_uid=study_uid)
            instances = wait_for_study_instances(orthanc.api, study_uid, 3, timeout=30)
            elapsed = time.monotonic() - started
            wait_finished(
                node.sessions, study_uid, timeout=30
            )  # results are recorded just after the C-STOREs
            with node.sessions() as session:
                events = list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all())
            yield Flow(
                orthanc=orthanc,
                node=node,
                study_uid=study_uid,
                source_class=str(source.SOPClassUID),
                instances=instances,
                elapsed=elapsed,
                events=events,
            )


def test_orthanc_study_gets_sr_and_sc_back_within_30_seconds(flow: Flow) -> None:
    """Within 30 s the same Orthanc study holds the source, the SR and the SC, received by
    C-STORE from the node; the audit trail shows every step."""
    instances = flow.instances
    assert flow.elapsed < 30
    classes = sorted(i.sop_class_uid for i in instances)
    assert classes == sorted([flow.source_class, SR_CLASS, SC_CLASS])
    results = [i for i in instances if i.sop_class_uid in {SR_CLASS, SC_CLASS}]
    assert all(i.origin == "DicomProtocol" and i.remote_aet == "DICOMNODE" for i in results)
    assert len({i.series_instance_uid for i in instances}) == 3  # results in new series

    trail = [e.event_type for e in flow.events]
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
    received = next(e for e in flow.events if e.event_type == "instance_received")
    assert received.calling_ae == "ORTHANC" and received.study_instance_uid == flow.study_uid
    assert trail.count("result_sent") == 2


def test_orthanc_web_viewer_shows_the_sc_with_its_heatmap(flow: Flow, tmp_path: Path) -> None:
    """Headless Chromium opens the Orthanc Web Viewer on the SC series the node C-STOREd: the
    SC's radiograph area on screen is not blank, and where the SC's pixels carry heatmap colour
    the screen is coloured too (the viewer decoded and drew the RGB SC faithfully)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)")
    [sc_instance] = [i for i in flow.instances if i.sop_class_uid == SC_CLASS]
    api = flow.orthanc.api
    series_id = api.instances.get(sc_instance.orthanc_id).series.orthanc_id
    response = requests.get(
        f"{flow.orthanc.http_url}/instances/{sc_instance.orthanc_id}/file", timeout=30
    )
    sc = dcmread(io.BytesIO(response.content))
    layout = overlay_layout(SOURCE_SIZE, flow.node.services.bundle.identity)  # type: ignore[union-attr]
    assert layout.canvas_width == sc.Columns  # the SC was drawn from the 512 x 512 radiograph
    rows, cols = heatmap_pixels(sc.pixel_array, layout)
    assert rows.size > 100, "the node's SC should carry a heatmap for this phantom"

    screen = screenshot(viewer_url(flow.orthanc.http_url, series_id), tmp_path / "viewer.png")
    placement = find_sc(screen, sc.Columns)
    radiograph = radiograph_on_screen(screen, placement, layout)
    assert radiograph.size and float(radiograph.std()) > 20.0, "the viewport is blank"
    sample = np.random.default_rng(0).choice(rows.size, size=min(500, rows.size), replace=False)
    y, x = placement.to_screen(rows[sample], cols[sample])
    inside = (y >= 0) & (y < screen.shape[0]) & (x >= 0) & (x < screen.shape[1])
    assert inside.mean() > 0.9, "the SC is not fully on screen"
    shown = coloured(screen[y[inside], x[inside]], spread=25)
    assert shown.mean() > 0.8, f"only {shown.mean():.0%} of the heatmap is coloured on screen"


def test_reprocessed_study_adds_a_new_sr_version_and_a_rejection_note_in_orthanc(
    flow: Flow,
) -> None:
    """`reprocess` makes the node read the study again: Orthanc receives a new SR version, the
    unchanged SC again (same UID) and the rejection note withdrawing the first SR (three more
    successful result_sent rows); it then holds the three instances it had and those two."""
    before = sorted(
        i.sop_instance_uid for i in list_study_instances(flow.orthanc.api, flow.study_uid)
    )
    with flow.node.sessions() as session:
        last = session.scalars(select(Job.id).order_by(Job.id.desc())).first() or 0
    job_id = request_reprocess(flow.node.sessions, flow.study_uid)
    job = wait_finished(flow.node.sessions, flow.study_uid, after=last, timeout=30)
    assert job.id == job_id and job.state == "done", job.detail
    with flow.node.sessions() as session:
        sent = session.scalars(
            select(AuditEvent).where(
                AuditEvent.event_type == "result_sent", AuditEvent.job_id == job_id
            )
        ).all()
    assert [(e.outcome, e.called_ae) for e in sent] == [("success", "ORTHANC")] * 3
    after = {
        i.sop_instance_uid: i.sop_class_uid
        for i in list_study_instances(flow.orthanc.api, flow.study_uid)
    }
    assert set(before) < set(after) and len(after) == 5
    added = sorted(after[uid] for uid in set(after) - set(before))
    assert added == sorted(
        [str(KeyObjectSelectionDocumentStorage), str(COMPREHENSIVE_3D_SR_STORAGE)]
    )


def test_study_level_push_with_presentation_state_and_key_object(
    flow: Flow, tmp_path: Path
) -> None:
    """Orthanc pushes a whole study at study level (REST /modalities/{id}/store): a PA, a
    lateral, a GSPS and a KOS. The push succeeds; the PA is analysed, the lateral skipped, the
    GSPS and KOS recorded as received and not analysed; the SR and SC come back into that study.
    Pushed again, now holding the node's SR and SC, nothing is analysed again: no new job, the
    node's results are recorded as its own and not stored, the sources as duplicates."""
    api, node = flow.orthanc.api, flow.node
    study_uid = str(generate_uid())
    pa = chest_image(study_uid=study_uid, findings=("Effusion",), size=SOURCE_SIZE)
    lateral = chest_image(study_uid=study_uid, view_position="LL", seed=2, size=SOURCE_SIZE)
    files = write_study(tmp_path / "study", [pa, lateral])
    files += [gsps_for(pa, tmp_path), kos_for(pa, tmp_path)]
    upload_files(api, files)
    send_study(api, modality="DICOMNODE", study_instance_uid=study_uid)
    job = wait_finished(node.sessions, study_uid, timeout=60)
    instances = wait_for_study_instances(api, study_uid, 6, timeout=30)
    assert job.state == "done", job.detail
    classes = sorted(i.sop_class_uid for i in instances)
    assert classes.count(SR_CLASS) == 1 and classes.count(SC_CLASS) == 1
    with node.sessions() as session:
        rows = session.scalars(select(Skip).where(Skip.job_id == job.id)).all()
        skips = {row.sop_instance_uid: row.reason for row in rows}
    assert "not frontal" in skips[str(lateral.SOPInstanceUID)]
    assert sum(reason.startswith("not an image") for reason in skips.values()) == 2

    send_study(api, modality="DICOMNODE", study_instance_uid=study_uid)  # with our SR and SC
    time.sleep(node.settings.quiet_seconds + 2.0)
    with node.sessions() as session:
        jobs = session.scalars(select(Job).where(Job.study_instance_uid == study_uid)).all()
        received = session.scalars(
            select(AuditEvent).where(
                AuditEvent.study_instance_uid == study_uid,
                AuditEvent.event_type == "instance_received",
                AuditEvent.id > max(e.id for e in flow.events),
            )
        ).all()
    assert [j.id for j in jobs] == [job.id]  # the study was not analysed again
    outcomes = sorted(e.outcome for e in received)
    assert outcomes.count("skipped") == 2  # the node's own SR and SC, recognised
    assert outcomes.count("duplicate") == 4 and outcomes.count("success") == 4
