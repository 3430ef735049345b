"""Send and deliveries: C-STORE to DCMTK storescp, per-instance status checks, retries with
exponential backoff, failed deliveries kept visible and re-sent by `dicom-node retry`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation
from sqlalchemy import select

from dicom_node.cli import main
from dicom_node.dimse.scu import DimseSender
from dicom_node.pipeline.deliver import deliver, failed_delivery_ids
from dicom_node.settings import Destination
from dicom_node.store.database import make_engine, make_session_factory, upgrade_schema
from dicom_node.store.schema import AuditEvent, Delivery, Job, Study, utcnow
from tests.conftest import chest_image, write_study
from tests.peers import StoreSCP

pytestmark = pytest.mark.integration


class FlakyPacs:
    """A pynetdicom SCP that answers `statuses` in turn (then success) to C-STOREs."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.stored: list[str] = []
        self.message_ids: list[int] = []
        ae = AE(ae_title="FLAKY")
        ae.add_supported_context(DigitalXRayImageStorageForPresentation)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.destination = Destination(
            ae_title="FLAKY", host="127.0.0.1", port=self.server.server_address[1]
        )

    def _store(self, event: Any) -> int:
        self.message_ids.append(int(event.request.MessageID))
        status = self.statuses.pop(0) if self.statuses else 0x0000
        if status == 0x0000:
            self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return status


@pytest.fixture
def files(tmp_path: Path, study_uid: str) -> list[Path]:
    return write_study(
        tmp_path / "out", [chest_image(study_uid=study_uid, seed=s) for s in range(2)]
    )


def test_send_to_dcmtk_storescp_stores_every_file(tmp_path: Path, files: list[Path]) -> None:
    """Both files reach DCMTK storescp in one association and are reported stored."""
    with StoreSCP(tmp_path / "pacs") as pacs:
        destination = Destination(ae_title=pacs.aet, host="127.0.0.1", port=pacs.port)
        outcomes = DimseSender(ae_title="DICOMNODE").send(destination, files)
        received = pacs.wait_for(2)
    assert all(o.ok and o.status == 0 for o in outcomes)
    assert len(received) == 2


def test_failure_status_is_retried_with_exponential_backoff(files: list[Path]) -> None:
    """0xA700 then 0xC000 are failures, retried after 1x then 2x the backoff; then stored."""
    pacs = FlakyPacs([0xA700, 0xA700, 0xC000])
    delays: list[float] = []
    sender = DimseSender(ae_title="DICOMNODE", attempts=4, backoff_seconds=0.5, sleep=delays.append)
    try:
        outcomes = sender.send(pacs.destination, files)
    finally:
        pacs.server.shutdown()
    assert all(o.ok for o in outcomes)
    assert delays == [0.5, 1.0]
    assert sorted(pacs.stored) == sorted(o.sop_instance_uid for o in outcomes)


def test_send_command_skips_non_dicom_files_and_names_failures(
    files: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`dicom-node send FOLDER` warns about each non-DICOM file and sends the rest; a refused
    instance is printed with its status, the status's meaning and the peer's comment."""
    folder = files[0].parent
    (folder / "README.txt").write_text("notes, not DICOM")
    (folder / "DICOMDIR-like.bin").write_bytes(b"\x00" * 200)
    pacs = FlakyPacs([0xA700] * 100)
    try:
        code = main(["send", "--port", str(pacs.destination.port), "--aet", "FLAKY", str(folder)])
    finally:
        pacs.server.shutdown()
    printed = capsys.readouterr()
    assert code == 1
    assert "skipped" in printed.err and "README.txt: not a DICOM file" in printed.err
    assert "DICOMDIR-like.bin: not a DICOM file" in printed.err
    failures = [line for line in printed.out.splitlines() if "FAILED" in line]
    assert len(failures) == 2
    assert all("status 0xA700 (Refused: Out of Resources)" in line for line in failures)
    assert "2 of 2 instance(s) not stored" in printed.err


def test_each_c_store_of_an_association_has_its_own_message_id(files: list[Path]) -> None:
    """The SCU numbers the C-STOREs of one association 1, 2, ... (PS3.7 9.3.1.1), not 1 each."""
    pacs = FlakyPacs([])
    sender = DimseSender(ae_title="DICOMNODE", attempts=1)
    try:
        outcomes = sender.send(pacs.destination, files)
    finally:
        pacs.server.shutdown()
    assert all(o.ok for o in outcomes)
    assert pacs.message_ids == [1, 2]


def test_persistent_failure_is_reported_not_success(files: list[Path]) -> None:
    """A peer always answering 0xA700 yields failed outcomes with that status after all attempts."""
    pacs = FlakyPacs([0xA700] * 100)
    sender = DimseSender(ae_title="DICOMNODE", attempts=3, backoff_seconds=0, sleep=lambda _: None)
    try:
        outcomes = sender.send(pacs.destination, files)
    finally:
        pacs.server.shutdown()
    assert [(o.ok, o.status, o.attempts) for o in outcomes] == [(False, 0xA700, 3)] * 2


def test_unreachable_destination_fails_every_instance(files: list[Path]) -> None:
    """No listener on the port: every instance fails with a reason, nothing claims success."""
    from tests.peers import free_port

    destination = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    sender = DimseSender(ae_title="DICOMNODE", attempts=2, backoff_seconds=0, timeout_seconds=2)
    outcomes = sender.send(destination, files)
    assert len(outcomes) == 2
    assert not any(o.ok for o in outcomes)
    assert all(o.error for o in outcomes)


def _pending_deliveries(url: str, files: list[Path], destination: Destination) -> list[int]:
    engine = make_engine(url)
    upgrade_schema(engine)
    sessions = make_session_factory(engine)
    now = utcnow()
    with sessions.begin() as session:
        headers: list[Dataset] = []
        from pydicom import dcmread

        headers = [dcmread(p, stop_before_pixels=True) for p in files]
        study = str(headers[0].StudyInstanceUID)
        session.add(
            Study(
                study_instance_uid=study,
                state="ready",
                open_associations=0,
                first_received_at=now,
                last_instance_at=now,
                calling_ae="MOD",
            )
        )
        session.flush()
        session.add(Job(study_instance_uid=study, state="running", attempts=1, created_at=now))
        session.flush()
        rows = [
            Delivery(
                job_id=1,
                study_instance_uid=study,
                sop_instance_uid=str(h.SOPInstanceUID),
                sop_class_uid=str(h.SOPClassUID),
                path=str(p),
                destination_ae=destination.ae_title,
                destination_host=destination.host,
                destination_port=destination.port,
                state="pending",
                attempts=0,
                updated_at=now,
            )
            for h, p in zip(headers, files, strict=True)
        ]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def test_failed_delivery_stays_failed_and_retry_command_sends_it(
    tmp_path: Path, files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries to a dead peer are recorded failed and audited; `dicom-node retry` later
    delivers them to the now running peer and records them sent."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    with StoreSCP(tmp_path / "pacs") as pacs:
        port = pacs.port
    destination = Destination(ae_title="STORESCP", host="127.0.0.1", port=port)
    ids = _pending_deliveries(url, files, destination)
    sessions = make_session_factory(make_engine(url))
    dead = DimseSender(ae_title="DICOMNODE", attempts=1, timeout_seconds=2)
    assert deliver(sessions, dead, ids, model="m 1") == (0, 2)
    assert sorted(failed_delivery_ids(sessions)) == sorted(ids)

    with StoreSCP(tmp_path / "pacs2", port=port) as pacs:
        monkeypatch.setenv("DICOM_NODE_DATABASE_URL", url)
        monkeypatch.setenv("DICOM_NODE_SEND_ATTEMPTS", "1")
        assert main(["retry"]) == 0
        assert len(pacs.wait_for(2)) == 2
    with sessions() as session:
        states = session.scalars(select(Delivery.state)).all()
        events = session.scalars(select(AuditEvent.event_type).order_by(AuditEvent.id)).all()
    assert states == ["sent", "sent"]
    assert events == ["result_failed"] * 2 + ["result_sent"] * 2
