"""Storage commitment against a real Orthanc (its Storage Commitment SCP): after the node sends
a study's results it asks Orthanc to commit to keeping them (N-ACTION); Orthanc answers with an
N-EVENT-REPORT on a new association to the node, and each delivery is recorded committed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Delivery
from dicom_node.testing import node_settings
from tests.conftest import chest_image, write_study
from tests.peers import (
    ORTHANC_BIN,
    OrthancServer,
    free_port,
    missing_binaries,
    storescu,
    wait_for_study_instances,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(missing_binaries(ORTHANC_BIN)), reason="Orthanc not installed"),
]


def test_orthancs_commitment_of_every_result_is_recorded_in_the_deliveries(
    tmp_path: Path,
) -> None:
    """A destination with storage_commitment = true (Orthanc, which knows the node as a
    modality allowed storage commitment): a study's SR and SC are sent, committed by Orthanc's
    N-EVENT-REPORT, and their deliveries end `committed` with the commitment time and a
    `result_committed` audit row each (success); Orthanc holds both objects."""
    node_port = free_port()
    node_modality = {
        "AET": "DICOMNODE",
        "Host": "127.0.0.1",
        "Port": node_port,
        "AllowStorageCommitment": True,
    }
    with OrthancServer(
        config_overrides={"DicomModalities": {"DICOMNODE": node_modality}}, graceful_stop=False
    ) as orthanc:
        destination = {
            "ae_title": orthanc.aet,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "storage_commitment": True,
        }
        settings = node_settings(tmp_path, port=node_port, destinations=[destination])
        with Node(settings) as node:
            study_uid = str(generate_uid())
            files = write_study(tmp_path / "in", [chest_image(study_uid=study_uid)])
            assert storescu(files, port=node.port).returncode == 0
            wait_finished(node.sessions, study_uid, timeout=60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with node.sessions() as session:
                    rows = session.scalars(select(Delivery)).all()
                if rows and all(r.state == "committed" for r in rows):
                    break
                time.sleep(0.1)
            with node.sessions() as session:
                events = session.scalars(
                    select(AuditEvent).where(AuditEvent.event_type == "result_committed")
                ).all()
            held = {i.sop_instance_uid for i in wait_for_study_instances(orthanc.api, study_uid, 2)}
    assert len(rows) == 2, [(r.state, r.last_error) for r in rows]
    assert {r.state for r in rows} == {"committed"}, [(r.state, r.last_error) for r in rows]
    assert all(r.commitment_uid and r.committed_at for r in rows)
    assert len({r.commitment_uid for r in rows}) == 1  # one transaction for the association
    assert sorted(e.sop_instance_uid for e in events) == sorted(r.sop_instance_uid for r in rows)
    assert all(e.outcome == "success" and e.called_ae == orthanc.aet for e in events)
    assert {r.sop_instance_uid for r in rows} <= held


def test_results_whose_commitment_never_comes_are_sent_again(tmp_path: Path) -> None:
    """A destination (pynetdicom SCP) that stores and takes the N-ACTION but never sends its
    report, commitment timeout 1 s: each result is stored again (the same SOP Instance UIDs)
    and commitment asked again under a new Transaction UID; meanwhile the deliveries stay
    `committing`, never `committed`."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    from dicom_node.dimse.commitment import StorageCommitmentPushModel

    stored: list[str] = []
    transactions: list[str] = []

    def on_store(event: evt.Event) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def on_action(event: evt.Event) -> tuple[int, None]:
        transactions.append(str(event.action_information.TransactionUID))
        return 0x0000, None

    scp = AE(ae_title="SILENTPACS")
    scp.supported_contexts = AllStoragePresentationContexts
    scp.add_supported_context(StorageCommitmentPushModel)
    server = scp.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_N_ACTION, on_action)],
    )
    try:
        port = int(server.server_address[1])
        destination = {
            "ae_title": "SILENTPACS",
            "host": "127.0.0.1",
            "port": port,
            "storage_commitment": True,
        }
        settings = node_settings(
            tmp_path, destinations=[destination], commitment_timeout_seconds=1.0
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            files = write_study(tmp_path / "in", [chest_image(study_uid=study_uid)])
            assert storescu(files, port=node.port).returncode == 0
            wait_finished(node.sessions, study_uid, timeout=60)
            deadline = time.monotonic() + 30
            while len(transactions) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            with node.sessions() as session:
                states = {r.state for r in session.scalars(select(Delivery)).all()}
    finally:
        server.shutdown()
    assert len(transactions) >= 2 and len(set(transactions)) == len(transactions)
    first = stored[:2]
    assert len(set(first)) == 2 and stored[2:4] == first  # the same two objects again
    assert states <= {"committing", "pending"}
