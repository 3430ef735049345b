"""A `dicom-node work` process killed with SIGKILL in the middle of a job, for real: while it
analyses a study, and while its SR is being stored by the destination. A second work process
takes the job up once the lease has expired; the re-run leaves one set of findings, every
delivery sent, and the destination holds the results under the first run's UIDs only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.uid import Comprehensive3DSRStorage, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.database import open_database
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Delivery, Job, Result
from tests.conftest import chest_image, node_env, write_study
from tests.peers import free_port, storescu, wait_for_port

pytestmark = pytest.mark.integration

LEASE_SECONDS = 3.0
IMAGES = 4  # a few seconds of analysis on CPU: room to kill the worker in the middle


class SlowPacs:
    """A pynetdicom storage SCP over loopback that takes `delay` s to answer each C-STORE
    (a PACS under load), keeping what it received: (SOP class, SOP instance UID) per C-STORE."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[tuple[str, str]] = []
        self.storing = threading.Event()  # set when a C-STORE has arrived and is being stored
        self.port = free_port()
        self._ae = AE(ae_title="PACS")
        self._ae.supported_contexts = AllStoragePresentationContexts

    def _on_store(self, event: evt.Event) -> int:
        self.storing.set()
        time.sleep(self.delay)
        ds = event.dataset
        self.received.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        return 0x0000

    def __enter__(self) -> SlowPacs:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()


def _start(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
def pacs() -> Iterator[SlowPacs]:
    with SlowPacs(delay=0.5) as running:  # room to kill the sender while it waits
        yield running


def _running(sessions: sessionmaker[Session], study_uid: str) -> bool:
    with sessions() as session:
        job = session.scalars(select(Job).where(Job.study_instance_uid == study_uid)).first()
        return job is not None and job.state == "running"


def _wait(condition: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


@pytest.mark.parametrize("moment", ["analysing", "sending"])
def test_a_worker_killed_mid_job_is_replaced_and_the_rerun_leaves_one_set(
    pacs: SlowPacs, tmp_path: Path, moment: str
) -> None:
    """SIGKILL of the work process while it analyses a 4-image study ('analysing'), or while
    the destination stores its first result object ('sending'). A second work process takes
    over after the lease: it re-runs the job (analysing: done on its second attempt), or its
    delivery lane sends the results the dead one was sending (sending: the job was done on its
    first attempt). Either way: 14 findings per image (one set), every delivery sent, and the
    destination received no result object under a UID the first run did not choose (re-sent
    objects are the same instances)."""
    port = free_port()
    destinations = [{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}]
    env = node_env(
        tmp_path, port, lease_seconds=str(LEASE_SECONDS), destinations=json.dumps(destinations)
    )
    database = env["DICOM_NODE_DATABASE_URL"]
    serve = _start("serve", {**env, "DICOM_NODE_WORKERS": "0"}, tmp_path / "serve.log")
    first = _start("work", env, tmp_path / "work1.log")
    second: subprocess.Popen[bytes] | None = None
    sessions = open_database(database)
    study_uid = str(generate_uid())
    try:
        wait_for_port(port, timeout=60)
        images = [
            chest_image(study_uid=study_uid, seed=n, size=(1024, 1024)) for n in range(IMAGES)
        ]
        sent = storescu(write_study(tmp_path / "study", images), port=port)
        assert sent.returncode == 0, sent.stderr
        if moment == "analysing":
            _wait(lambda: _running(sessions, study_uid))
        else:
            _wait(pacs.storing.is_set)
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=10) == -signal.SIGKILL
        with sessions() as session:
            left = session.scalars(select(Job.state)).one()
        assert left == ("running" if moment == "analysing" else "done")  # left behind
        chosen_by_first = set(pacs.received)
        second = _start("work", env, tmp_path / "work2.log")
        job = wait_finished(sessions, study_uid, timeout=120)
        with sessions() as session:
            findings = session.scalars(select(Result).where(Result.job_id == job.id)).all()
            deliveries = session.scalars(select(Delivery).where(Delivery.job_id == job.id)).all()
            senders = set(
                session.scalars(
                    select(AuditEvent.process).where(AuditEvent.event_type == "result_sent")
                ).all()
            )
    finally:
        for process in (serve, first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    assert second is not None
    assert job.state == "done" and job.attempts == (2 if moment == "analysing" else 1)
    if moment == "analysing":
        assert job.lease_owner and str(second.pid) in job.lease_owner
    assert any(process and process.endswith(f":{second.pid}") for process in senders)
    assert len(findings) == 14 * IMAGES  # one set, not two
    assert len({(r.sop_instance_uid, r.label) for r in findings}) == 14 * IMAGES
    assert deliveries and {d.state for d in deliveries} == {"sent"}
    srs = {uid for sop_class, uid in pacs.received if sop_class == Comprehensive3DSRStorage}
    assert len(srs) == 1  # one report, whether or not the first run had sent it
    assert chosen_by_first <= set(pacs.received)
    assert len(set(pacs.received)) == len(deliveries)  # nothing beyond the recorded objects
