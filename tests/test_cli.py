"""The `dicom-node` command as users and the Dockerfile run it: `serve` and `work` as separate
processes sharing the real PostgreSQL, configured by DICOM_NODE_* variables; `echo` and `send`;
clean shutdown audited; no patient data in what the processes log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from dicom_node.cli import main
from dicom_node.store.database import make_session_factory
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent
from dicom_node.testing import DEMO_BUNDLE
from tests.conftest import chest_image, write_study
from tests.peers import StoreSCP, free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DICOM_NODE = [sys.executable, "-m", "dicom_node.cli"]
PATIENT_NAME, PATIENT_ID, BIRTH_DATE = "Quimby^Zephyrine", "ZX-5521-PID", "19230417"


def _start(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*DICOM_NODE, command], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=60)


def test_serve_and_separate_work_process_share_postgres(postgres_url: str, tmp_path: Path) -> None:
    """`serve` (receive only, text log) and `work` (analysis, JSON log) run as two processes on
    one PostgreSQL database; a study pushed with `dicom-node send` (a third process) is analysed
    by the worker process and its SR and SC reach DCMTK storescp; SIGTERM stops both with
    node_stop audited. The work process's lines carry the job and study bound to them; none of
    the three processes logs the patient's name, ID or birth date, even at DEBUG."""
    port = free_port()
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        env = {
            **os.environ,
            "DICOM_NODE_PORT": str(port),
            "DICOM_NODE_HTTP_PORT": "0",
            "DICOM_NODE_DATABASE_URL": postgres_url,
            "DICOM_NODE_SPOOL_DIR": str(tmp_path / "spool"),
            "DICOM_NODE_MODEL_BUNDLE": str(DEMO_BUNDLE),
            "DICOM_NODE_DEVICE": "cpu",
            "DICOM_NODE_QUIET_SECONDS": "0.5",
            "DICOM_NODE_POLL_SECONDS": "0.2",
            "DICOM_NODE_LOG_LEVEL": "DEBUG",
            "DICOM_NODE_DESTINATIONS": json.dumps(
                [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
            ),
        }
        serve = _start("serve", {**env, "DICOM_NODE_WORKERS": "0"}, tmp_path / "serve.log")
        work = _start("work", {**env, "DICOM_NODE_LOG_FORMAT": "json"}, tmp_path / "work.log")
        try:
            wait_for_port(port, timeout=60)
            assert main(["echo", "--port", str(port), "--aet", "DICOMNODE"]) == 0
            study_uid = str(generate_uid())
            folder = tmp_path / "study"
            image = chest_image(study_uid=study_uid)
            image.PatientName, image.PatientID = PATIENT_NAME, PATIENT_ID
            image.PatientBirthDate = BIRTH_DATE
            write_study(folder, [image])
            send = subprocess.run(
                [*DICOM_NODE, "send", "--port", str(port), "--aet", "DICOMNODE", str(folder)],
                env={**env, "DICOM_NODE_LOG_LEVEL": "DEBUG"},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert send.returncode == 0, send.stderr
            watcher = create_engine(postgres_url)
            job = wait_finished(make_session_factory(watcher), study_uid, timeout=90)
            watcher.dispose()
            received = [dcmread(p) for p in pacs.wait_for(2)]
        finally:
            codes = (_stop(serve), _stop(work))
    assert codes == (0, 0)
    assert job.state == "done"
    assert job.lease_owner and str(work.pid) in job.lease_owner  # the work process did it
    assert {ds.StudyInstanceUID for ds in received} == {study_uid}
    engine = create_engine(postgres_url)
    with Session(engine) as session:
        kinds = session.scalars(select(AuditEvent.event_type)).all()
    engine.dispose()
    assert kinds.count("node_start") == 2 and kinds.count("node_stop") == 2
    work_lines = [json.loads(line) for line in (tmp_path / "work.log").read_text().splitlines()]
    finished = [line for line in work_lines if line.get("job") == job.id]
    assert finished and all(line["study"] == study_uid for line in finished)
    logs = (tmp_path / "serve.log").read_text() + (tmp_path / "work.log").read_text()
    logs += send.stdout + send.stderr
    assert "instance stored" in logs  # the processes did log (at DEBUG) ...
    for secret in ("Quimby", "Zephyrine", PATIENT_ID, BIRTH_DATE, "1923-04-17"):
        assert secret not in logs  # ... but never patient data


def test_invalid_configuration_stops_start_up_naming_the_key(tmp_path: Path) -> None:
    """`serve` refuses to start on an invalid setting, exit code 2, message naming the key."""
    env = {**os.environ, "DICOM_NODE_QUIET_SECONDS": "soon"}
    result = subprocess.run(
        [*DICOM_NODE, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "quiet_seconds" in result.stderr
