"""Receive: the C-STORE SCP against real peers (DCMTK storescu/echoscu, pynetdicom SCU) over
loopback: statuses, spool files, instance rows and audit events."""

from __future__ import annotations

import shutil
import sqlite3
import time
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation
from sqlalchemy import select

from dicom_node.node import Node
from dicom_node.store.schema import AuditEvent, Instance, Study
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.peers import echoscu, storescu

pytestmark = pytest.mark.integration


def _events(node: Node, event_type: str) -> list[AuditEvent]:
    with node.sessions() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)).all()
        )


def _store_with_pynetdicom(port: int, ds: object, calling: str = "PYSCU") -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def _study_after_release(node: Node, study_uid: str) -> Study:
    """The release handler runs just after storescu has its answer: wait for it briefly."""
    deadline = time.monotonic() + 5
    while True:
        with node.sessions() as session:
            study = session.get_one(Study, study_uid)
        if study.open_associations == 0 or time.monotonic() > deadline:
            return study
        time.sleep(0.02)


def test_c_echo_from_dcmtk_succeeds(receiver: Node) -> None:
    """DCMTK echoscu gets a successful C-ECHO from the node."""
    result = echoscu(port=receiver.port)
    assert result.returncode == 0, result.stderr


def test_c_store_from_dcmtk_is_spooled_committed_and_audited(
    receiver: Node, tmp_path: Path, study_uid: str
) -> None:
    """storescu succeeds; the spool holds the exact dataset, with a row and an audit event."""
    ds = chest_image(study_uid=study_uid)
    files = write_study(tmp_path / "in", [ds])
    result = storescu(files, port=receiver.port, calling="MODALITY1")
    assert result.returncode == 0, result.stderr
    with receiver.sessions() as session:
        row = session.get_one(Instance, str(ds.SOPInstanceUID))
    study = _study_after_release(receiver, study_uid)
    stored = dcmread(row.path)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert row.calling_ae == "MODALITY1"
    assert study.state == "receiving" and study.open_associations == 0
    (event,) = _events(receiver, "instance_received")
    assert event.outcome == "success"
    assert event.calling_ae == "MODALITY1"
    assert event.peer_address and event.peer_address.startswith("127.0.0.1:")
    assert event.study_instance_uid == study_uid
    assert event.patient_id == "TEST-PID-4711"
    assert _events(receiver, "association_accepted")


def test_other_classes_are_accepted_and_kept_without_their_pixels(receiver: Node) -> None:
    """A CT image (a class the model never reads) is accepted with 0x0000 and recorded; the
    spool keeps its header without the pixel data, and the audit row says so."""
    ct = Path(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    result = storescu([ct], port=receiver.port)
    assert result.returncode == 0, result.stderr
    source = dcmread(ct)
    with receiver.sessions() as session:
        row = session.get_one(Instance, str(source.SOPInstanceUID))
    stored = dcmread(row.path)
    assert not row.pixels_kept and "PixelData" not in stored
    assert stored.PatientID == source.PatientID and stored.Rows == source.Rows
    (event,) = _events(receiver, "instance_received")
    assert "without its pixel data" in (event.detail or "")


def test_unknown_calling_ae_is_rejected_and_audited(
    make_settings: SettingsFactory, tmp_path: Path, study_uid: str
) -> None:
    """With allowed_calling_aets set, another AE title is rejected and the rejection audited."""
    with Node(make_settings(allowed_calling_aets=["ORTHANC"]), workers=0) as node:
        files = write_study(tmp_path / "in", [chest_image(study_uid=study_uid)])
        refused = storescu(files, port=node.port, calling="INTRUDER")
        allowed = storescu(files, port=node.port, calling="ORTHANC")
        assert refused.returncode != 0
        assert allowed.returncode == 0, allowed.stderr
        (event,) = _events(node, "association_rejected")
        assert event.calling_ae == "INTRUDER"
        assert event.outcome == "failure"


def test_invalid_study_uid_gets_c221_and_node_keeps_serving(receiver: Node, study_uid: str) -> None:
    """A Study Instance UID that is not a UID is refused with 0xC221, audited, not spooled."""
    bad = chest_image(study_uid=study_uid)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # pydicom may warn about the invalid value we set on purpose
        bad.StudyInstanceUID = "1.2.03/../../etc"
    assert _store_with_pynetdicom(receiver.port, bad) == 0xC221
    (event,) = _events(receiver, "instance_rejected")
    assert "0xC221" in (event.detail or "")
    assert not (receiver.settings.spool_dir / "instances").exists()
    good = chest_image(study_uid=study_uid, seed=1)
    assert _store_with_pynetdicom(receiver.port, good) == 0x0000


def test_duplicate_sop_instance_is_idempotent(receiver: Node, study_uid: str) -> None:
    """The same instance twice: success both times, one row, the second audited as duplicate."""
    ds = chest_image(study_uid=study_uid)
    assert _store_with_pynetdicom(receiver.port, ds) == 0x0000
    assert _store_with_pynetdicom(receiver.port, ds) == 0x0000
    with receiver.sessions() as session:
        assert len(session.scalars(select(Instance)).all()) == 1
    outcomes = sorted(e.outcome for e in _events(receiver, "instance_received"))
    assert outcomes == ["duplicate", "success"]


def test_wrong_called_ae_title_is_rejected_and_audited(receiver: Node, tmp_path: Path) -> None:
    """An association calling another AE title than the node's is refused (A-ASSOCIATE-RJ) and
    the refusal audited naming the called AE title."""
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="SOMEONE-ELSE")
    assert assoc.is_rejected
    (event,) = _events(receiver, "association_rejected")
    assert "SOMEONE-ELSE" in (event.detail or "") and event.outcome == "failure"


def test_changed_instance_under_a_known_uid_replaces_it_and_keeps_the_first(
    receiver: Node, study_uid: str
) -> None:
    """The same SOP Instance UID with other content: accepted (0x0000), the new content stored,
    the first kept beside it, and the audit row says it replaced an instance."""
    first = chest_image(study_uid=study_uid)
    assert _store_with_pynetdicom(receiver.port, first) == 0x0000
    changed = chest_image(study_uid=study_uid, seed=9)
    changed.SOPInstanceUID, changed.SeriesInstanceUID = (
        first.SOPInstanceUID,
        first.SeriesInstanceUID,
    )
    assert _store_with_pynetdicom(receiver.port, changed) == 0x0000
    with receiver.sessions() as session:
        row = session.get_one(Instance, str(first.SOPInstanceUID))
    assert dcmread(row.path).PixelData == changed.PixelData
    [kept] = Path(row.path).parent.glob("*.replaced-*.dcm")
    assert dcmread(kept).PixelData == first.PixelData
    details = [e.detail or "" for e in _events(receiver, "instance_received")]
    assert sum("replaces the instance received before" in d for d in details) == 1


def test_unwritable_spool_gets_a700_and_nothing_is_recorded(
    make_settings: SettingsFactory, tmp_path: Path, study_uid: str
) -> None:
    """When the spool cannot be written (here it became a file after start-up) the sender gets
    0xA700 (retry later), and no row is made."""
    spool = tmp_path / "spool"
    with Node(make_settings(spool_dir=spool), workers=0) as node:
        shutil.rmtree(spool)
        spool.write_text("a file where the spool folder should be")
        assert _store_with_pynetdicom(node.port, chest_image(study_uid=study_uid)) == 0xA700
        with node.sessions() as session:
            assert session.scalars(select(Instance)).all() == []
        (event,) = _events(node, "instance_rejected")
        assert "0xA700" in (event.detail or "")


def test_database_failure_gets_a700(receiver: Node, tmp_path: Path, study_uid: str) -> None:
    """When the instance row cannot be committed the sender gets 0xA700, not success."""
    database = str(receiver.settings.database_url).removeprefix("sqlite:///")
    with sqlite3.connect(database) as connection:
        connection.execute("ALTER TABLE instances RENAME TO instances_gone")
    assert _store_with_pynetdicom(receiver.port, chest_image(study_uid=study_uid)) == 0xA700
