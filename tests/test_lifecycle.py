"""Result lifecycle end to end (DCMTK storescu as the modality, storescp as the PACS): SR versions
numbered within their series, each naming its predecessor, the older ones withdrawn by an IOCM
rejection note; unchanged images keep their SCs byte for byte; `dicom-node reprocess` and
`dicom-node retract` are audited and refuse what they cannot do; a crashed job's re-run sends
the same bytes again."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from sqlalchemy import select, update

from dicom_node.errors import NodeError
from dicom_node.node import Node
from dicom_node.pipeline.assemble import promote_ready_studies
from dicom_node.pipeline.reprocess import request_reprocess
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Delivery, Job, Result, utcnow
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.dicom_validators import dciodvfy_errors
from tests.peers import StoreSCP, storescu

pytestmark = pytest.mark.integration


def received_since(pacs: StoreSCP, count: int, n: int, timeout: float = 30.0) -> list[Dataset]:
    """The `n` objects the PACS received after its first `count` receptions."""
    files = pacs.wait_for(count + n, timeout=timeout)
    return [dcmread(path) for path in files[count : count + n]]


def sop_uids(datasets: list[Dataset]) -> dict[str, str]:
    return {str(ds.Modality): str(ds.SOPInstanceUID) for ds in datasets}


def reprocess_cli(
    settings_env: dict[str, str], study_uid: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """`dicom-node reprocess STUDY_UID` as an operator runs it, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "reprocess", study_uid, *options],
        env={**os.environ, **settings_env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _study_objects(pacs: StoreSCP, study_uid: str) -> dict[str, list[Dataset]]:
    """What the PACS holds of the study, by modality: each SOP Instance once, as last received."""
    latest = {}
    for path in pacs.received():
        ds = dcmread(path)
        if ds.StudyInstanceUID == study_uid:
            latest[str(ds.SOPInstanceUID)] = ds
    found: dict[str, list[Dataset]] = {}
    for ds in latest.values():
        kind = "SC" if ds.SOPClassUID == SecondaryCaptureImageStorage else str(ds.Modality)
        found.setdefault(kind, []).append(ds)
    return found


def _withdrawn_by(kos: Dataset) -> set[str]:
    return {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in kos.ContentSequence
        if "ReferencedSOPSequence" in item
    }


def _predecessor(sr: Dataset) -> str | None:
    if "PredecessorDocumentsSequence" not in sr:
        return None
    series = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    return str(series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)


def test_reprocess_twice_numbers_sr_versions_and_withdraws_the_older_ones(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """1. a study is analysed: SR 1 and its SC reach the PACS; 2. `dicom-node reprocess` (an
    operator's process, audited with the user) gives SR 2 naming SR 1, and a rejection note
    withdrawing SR 1; 3. reprocess again: SR 3 naming SR 2, a note withdrawing SR 2. The SR series
    holds InstanceNumbers 1, 2, 3; the unchanged image keeps its SC (same UID, same bytes);
    every SR and note passes dciodvfy."""
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        settings = make_settings(
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
        )
        env = {
            "DICOM_NODE_DATABASE_URL": settings.database_url,
            "DICOM_NODE_SPOOL_DIR": str(settings.spool_dir),
        }
        with Node(settings) as node:
            study_uid = str(generate_uid())
            image = chest_image(study_uid=study_uid, findings=("Effusion",), seed=3)
            assert storescu(write_study(tmp_path / "a", [image]), port=node.port).returncode == 0
            job = wait_finished(node.sessions, study_uid)
            [sc] = _wait_modality(pacs, study_uid, "SC")
            sc_bytes = Path(_path_of(pacs, sc)).read_bytes()
            jobs = [job.id]
            for _ in range(2):
                cli = reprocess_cli(env, study_uid)
                assert cli.returncode == 0, cli.stderr
                done = wait_finished(node.sessions, study_uid, after=jobs[-1])
                assert done.state == "done", done.detail
                jobs.append(done.id)
            held = _wait_count(pacs, study_uid, {"SR": 3, "KO": 2, "SC": 1})
            [kept] = held["SC"]
            kept_bytes = Path(_path_of(pacs, kept)).read_bytes()
            with node.sessions() as session:
                requested = session.scalars(
                    select(AuditEvent).where(AuditEvent.event_type == "study_reprocess")
                ).all()
    srs = sorted(held["SR"], key=lambda ds: int(ds.InstanceNumber))
    assert [int(ds.InstanceNumber) for ds in srs] == [1, 2, 3]
    assert len({ds.SeriesInstanceUID for ds in srs}) == 1
    assert [_predecessor(ds) for ds in srs] == [None, srs[0].SOPInstanceUID, srs[1].SOPInstanceUID]
    notes = sorted(held["KO"], key=lambda ds: int(ds.InstanceNumber))
    assert [_withdrawn_by(kos) for kos in notes] == [
        {srs[0].SOPInstanceUID},
        {srs[1].SOPInstanceUID},
    ]
    for ds in [*srs, *notes]:
        assert dciodvfy_errors(ds, tmp_path) == []
    assert kept.SOPInstanceUID == sc.SOPInstanceUID
    assert kept_bytes == sc_bytes
    assert [e.job_id for e in requested] == jobs[1:]
    assert all(e.user_id and e.event_id == "110103" for e in requested)


def test_late_image_keeps_the_unchanged_images_sc_and_withdraws_the_old_sr(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """A late second image changes the study's result: a new SR (InstanceNumber 2) names the
    first, a rejection note withdraws only the first SR; the first image, analysed again in a
    batch of two, keeps its SC UID and bytes; the new image's SC is number 2 of its series."""
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        settings = make_settings(
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            first = chest_image(study_uid=study_uid, findings=("Effusion",), seed=3)
            assert storescu(write_study(tmp_path / "a", [first]), port=node.port).returncode == 0
            job = wait_finished(node.sessions, study_uid)
            [first_sc] = _wait_modality(pacs, study_uid, "SC")
            first_bytes = Path(_path_of(pacs, first_sc)).read_bytes()
            late = chest_image(study_uid=study_uid, findings=("Cardiomegaly",), seed=5)
            assert storescu(write_study(tmp_path / "b", [late]), port=node.port).returncode == 0
            wait_finished(node.sessions, study_uid, after=job.id)
            held = _wait_count(pacs, study_uid, {"SR": 2, "SC": 2, "KO": 1})
            now_bytes = Path(_path_of(pacs, first_sc)).read_bytes()
    srs = sorted(held["SR"], key=lambda ds: int(ds.InstanceNumber))
    assert [int(ds.InstanceNumber) for ds in srs] == [1, 2]
    assert _predecessor(srs[1]) == srs[0].SOPInstanceUID
    [kos] = held["KO"]
    assert _withdrawn_by(kos) == {srs[0].SOPInstanceUID}
    scs = {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID): ds for ds in held["SC"]}
    assert scs[str(first.SOPInstanceUID)].SOPInstanceUID == first_sc.SOPInstanceUID
    assert now_bytes == first_bytes
    assert int(scs[str(late.SOPInstanceUID)].InstanceNumber) == 2


def test_retract_withdraws_every_result_and_a_new_reading_gets_new_uids(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """`dicom-node retract STUDY_UID` sends one rejection note naming the SR and SC (audited,
    with the user); retracting again is refused; a reprocess afterwards makes a new SR and SC
    whose UIDs are new (a PACS refuses a withdrawn UID) and whose numbers go on."""
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        settings = make_settings(
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
        )
        env = {
            "DICOM_NODE_DATABASE_URL": settings.database_url,
            "DICOM_NODE_SPOOL_DIR": str(settings.spool_dir),
            "DICOM_NODE_DESTINATIONS": json.dumps(
                [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
            ),
        }
        with Node(settings) as node:
            study_uid = str(generate_uid())
            image = chest_image(study_uid=study_uid, seed=4)
            assert storescu(write_study(tmp_path / "a", [image]), port=node.port).returncode == 0
            job = wait_finished(node.sessions, study_uid)
            before = _wait_count(pacs, study_uid, {"SR": 1, "SC": 1})
            retract = _cli(env, "retract", study_uid)
            assert retract.returncode == 0, retract.stderr
            assert "2 result object(s) withdrawn" in retract.stdout
            again = _cli(env, "retract", study_uid)
            assert again.returncode == 1 and "no results left" in again.stderr
            request_reprocess(node.sessions, study_uid)
            wait_finished(node.sessions, study_uid, after=job.id + 1)
            held = _wait_count(pacs, study_uid, {"SR": 2, "SC": 2, "KO": 1})
            with node.sessions() as session:
                [event] = session.scalars(
                    select(AuditEvent).where(AuditEvent.event_type == "results_retracted")
                ).all()
    [kos] = held["KO"]
    old = {before["SR"][0].SOPInstanceUID, before["SC"][0].SOPInstanceUID}
    assert _withdrawn_by(kos) == old
    assert dciodvfy_errors(kos, tmp_path) == []
    new_sr = [ds for ds in held["SR"] if ds.SOPInstanceUID not in old]
    assert len(new_sr) == 1 and int(new_sr[0].InstanceNumber) == 2
    assert _predecessor(new_sr[0]) is None  # the withdrawn SR is no predecessor
    assert {ds.SOPInstanceUID for ds in held["SC"]} - old
    assert event.user_id and event.event_action == "D"


def test_crash_rerun_resends_the_same_bytes(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """A worker died after recording its results (its lease expired): the re-run of that job
    sends the very same SR and SC bytes under the same UIDs, and leaves one set of findings."""
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        settings = make_settings(
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            image = chest_image(study_uid=study_uid, seed=6)
            assert storescu(write_study(tmp_path / "a", [image]), port=node.port).returncode == 0
            job = wait_finished(node.sessions, study_uid)
            first = _wait_count(pacs, study_uid, {"SR": 1, "SC": 1})
            sent = _bytes_of(pacs, first)
            receptions = len(pacs.received())
            with node.sessions.begin() as session:
                session.execute(
                    update(Job)
                    .where(Job.id == job.id)
                    .values(state="running", lease_expires_at=utcnow() - dt.timedelta(seconds=1))
                )
                session.execute(
                    update(Delivery).where(Delivery.job_id == job.id).values(state="pending")
                )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with node.sessions() as session:
                    rerun = session.get_one(Job, job.id)
                    if rerun.state == "done" and rerun.attempts == 2:
                        break
                time.sleep(0.1)
            pacs.wait_for(receptions + 2)  # the re-run sent both again
            wait_finished(node.sessions, study_uid)  # and its lane recorded them sent
            again = _wait_count(pacs, study_uid, {"SR": 1, "SC": 1})
            resent = _bytes_of(pacs, again)
            with node.sessions() as session:
                findings = session.scalars(select(Result).where(Result.job_id == job.id)).all()
                deliveries = session.scalars(
                    select(Delivery).where(Delivery.job_id == job.id)
                ).all()
    assert resent == sent
    assert len(findings) == 14  # one set, not two
    assert len(deliveries) == 2 and {d.state for d in deliveries} == {"sent"}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _bytes_of(pacs: StoreSCP, held: dict[str, list[Dataset]]) -> dict[str, bytes]:
    return {
        str(ds.SOPInstanceUID): Path(_path_of(pacs, ds)).read_bytes()
        for objects in held.values()
        for ds in objects
    }


def _path_of(pacs: StoreSCP, ds: Dataset) -> str:
    paths = [p for p in pacs.received() if str(ds.SOPInstanceUID) in Path(p).name]
    return str(paths[-1])


def _wait_modality(pacs: StoreSCP, study_uid: str, modality: str) -> list[Dataset]:
    return _wait_count(pacs, study_uid, {modality: 1})[modality]


def _wait_count(
    pacs: StoreSCP, study_uid: str, counts: dict[str, int], timeout: float = 60.0
) -> dict[str, list[Dataset]]:
    deadline = time.monotonic() + timeout
    while True:
        held = _study_objects(pacs, study_uid)
        if all(len(held.get(m, [])) >= n for m, n in counts.items()):
            return held
        if time.monotonic() > deadline:
            raise TimeoutError(f"the PACS holds { ({m: len(v) for m, v in held.items()}) }")
        time.sleep(0.1)


def test_reprocess_refuses_unknown_invalid_and_busy_studies(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Invalid UID, unknown study, a study still being received, a study whose job is queued:
    NodeError naming why; the CLI (with --config) prints it and exits 1."""
    from dicom_node.store.database import open_database

    settings = make_settings()
    sessions = open_database(settings.database_url)
    with pytest.raises(NodeError, match="not a valid"):
        request_reprocess(sessions, "1.02.x")
    with pytest.raises(NodeError, match="not stored"):
        request_reprocess(sessions, "1.2.3.4")
    with Node(settings, workers=0) as node:  # receives, never analyses: a job stays queued
        study_uid = str(generate_uid())
        storescu(write_study(tmp_path / "s", [chest_image(study_uid=study_uid)]), port=node.port)
        with pytest.raises(NodeError, match="still being received"):
            request_reprocess(node.sessions, study_uid)
        deadline = time.monotonic() + 10
        while not promote_ready_studies(node.sessions, quiet_seconds=0):
            assert time.monotonic() < deadline, "the study never became ready"
            time.sleep(0.1)
        with pytest.raises(NodeError, match="already queued or running"):
            request_reprocess(node.sessions, study_uid)
    config = tmp_path / "node.toml"
    config.write_text(f'database_url = "{settings.database_url}"\n')
    cli = reprocess_cli({}, "1.2.3.4", "--config", str(config))
    assert cli.returncode == 1
    assert "not stored on this node" in cli.stderr
