"""Result lifecycle end to end (DCMTK storescu as the modality, storescp as the PACS): a
reprocessed study comes back with the same SR and SC UIDs; a re-analysis with a different result
(a late image) is a new SR naming its predecessor; `dicom-node reprocess` is audited and refuses
what it cannot do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.errors import NodeError
from dicom_node.node import Node
from dicom_node.pipeline.assemble import promote_ready_studies
from dicom_node.pipeline.reprocess import request_reprocess
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Report
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


def test_reprocess_is_idempotent_and_a_changed_result_names_its_predecessor(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """1. a study is analysed: SR + SC reach the PACS; 2. `dicom-node reprocess` (audited, with
    the user) sends the same SR and SC UIDs again; 3. a late second image changes the result: a
    new SR in the same series names the first in its Predecessor Documents Sequence and passes
    dciodvfy; 4. reprocessing that result again gives that same new SR."""
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        settings = make_settings(
            destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
        )
        with Node(settings) as node:
            study_uid = str(generate_uid())
            first_image = chest_image(study_uid=study_uid, findings=("Effusion",), seed=3)
            assert (
                storescu(write_study(tmp_path / "a", [first_image]), port=node.port).returncode == 0
            )
            first_job = wait_finished(node.sessions, study_uid)
            first_objects = received_since(pacs, 0, 2)
            first = sop_uids(first_objects)

            env = {
                "DICOM_NODE_DATABASE_URL": settings.database_url,
                "DICOM_NODE_SPOOL_DIR": str(settings.spool_dir),
            }
            cli = reprocess_cli(env, study_uid)
            assert cli.returncode == 0, cli.stderr
            assert "queued" in cli.stdout
            again_job = wait_finished(node.sessions, study_uid, after=first_job.id)
            assert again_job.state == "done", again_job.detail
            assert sop_uids(received_since(pacs, 2, 2)) == first  # idempotent at the PACS

            late = chest_image(study_uid=study_uid, findings=("Cardiomegaly",), seed=5)
            assert storescu(write_study(tmp_path / "b", [late]), port=node.port).returncode == 0
            changed_job = wait_finished(node.sessions, study_uid, after=again_job.id)
            changed = {str(ds.Modality): ds for ds in received_since(pacs, 4, 3)}
            changed_sr = changed["SR"]

            request_reprocess(node.sessions, study_uid)
            last_job = wait_finished(node.sessions, study_uid, after=changed_job.id)
            repeated = {str(ds.Modality): ds for ds in received_since(pacs, 7, 3)}

            with node.sessions() as session:
                reports = session.scalars(select(Report).order_by(Report.id)).all()
                requested = session.scalars(
                    select(AuditEvent).where(AuditEvent.event_type == "study_reprocess")
                ).all()

    assert changed_sr.SOPInstanceUID != first["SR"]
    [first_sr] = [ds for ds in first_objects if ds.Modality == "SR"]
    assert changed_sr.SeriesInstanceUID == first_sr.SeriesInstanceUID
    [predecessor] = (
        changed_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    )
    assert predecessor.ReferencedSOPInstanceUID == first["SR"]
    assert dciodvfy_errors(changed_sr, tmp_path) == []
    assert repeated["SR"].SOPInstanceUID == changed_sr.SOPInstanceUID
    assert last_job.state == "done"

    assert [r.sop_instance_uid for r in reports] == [first["SR"], changed_sr.SOPInstanceUID]
    assert reports[1].predecessor_sop_instance_uid == first["SR"]
    assert [r.job_id for r in reports] == [first_job.id, changed_job.id]
    assert [e.job_id for e in requested] == [again_job.id, last_job.id]
    assert all(e.user_id and e.event_id == "110103" for e in requested)


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
