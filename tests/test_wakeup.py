"""Readiness without polling: with a poll interval far longer than the test, a study released
by its association is queued as soon as its quiet period ends (the receiving process's timer)
and analysed at once by a worker in the same process (a wake-up) or in a `dicom-node work`
process on PostgreSQL (LISTEN/NOTIFY)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.node import Node
from dicom_node.pipeline.wakeup import Wakeup
from dicom_node.store.database import open_database
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import Job, Study
from tests.conftest import SettingsFactory, chest_image, node_env, write_study
from tests.peers import StoreSCP, free_port, storescu, wait_for_port

pytestmark = pytest.mark.integration

POLL = 60.0  # polling alone would take a minute


def _wait_listening(
    sessions: sessionmaker[Session], process: subprocess.Popen[bytes], timeout: float
) -> None:
    """Wait until a connection of the database has run LISTEN (the work process's notification
    listener is in place: its model is loaded, its workers start)."""
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN %'"
    )
    while True:
        with sessions() as session:
            if session.scalar(query):
                return
        assert process.poll() is None, "the work process ended"
        if time.monotonic() > deadline:
            raise TimeoutError("no LISTEN on the database")
        time.sleep(0.05)


def test_a_wakeup_between_a_look_and_the_wait_is_not_lost() -> None:
    """A notify that comes after a worker read the generation and before it waits ends the
    wait at once."""
    wakeup = Wakeup()
    seen = wakeup.generation
    wakeup.notify()
    started = time.monotonic()
    wakeup.wait(seen, timeout=5.0)
    assert time.monotonic() - started < 0.5


def test_a_study_is_queued_and_analysed_when_its_quiet_period_ends(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Quiet period 1 s, poll interval 60 s: the study is ready within 0.3 s of its quiet
    period after the association's release, and its job starts at once."""
    with Node(make_settings(quiet_seconds=1.0, poll_seconds=POLL)) as node:
        time.sleep(0.5)  # the worker's first look at the queue is over: it waits now
        study_uid = str(generate_uid())
        sent = storescu(
            write_study(tmp_path / "s", [chest_image(study_uid=study_uid)]), port=node.port
        )
        released = time.monotonic()
        assert sent.returncode == 0, sent.stderr
        job = wait_finished(node.sessions, study_uid, timeout=30)
        finished = time.monotonic()
        with node.sessions() as session:
            study = session.get_one(Study, study_uid)
            queued = session.scalars(select(Job.created_at).where(Job.id == job.id)).one()
    assert job.state == "done", job.detail
    assert study.ready_at is not None
    waited = (study.ready_at - study.last_instance_at).total_seconds()
    assert 1.0 <= waited < 1.3, waited  # from the last instance: quiet period + the release
    assert job.started_at is not None and (job.started_at - queued).total_seconds() < 0.3
    assert finished - released < 20


@pytest.mark.postgres
def test_a_work_process_on_postgres_is_woken_by_notify(postgres_url: str, tmp_path: Path) -> None:
    """A receive-only `serve` and a `work` process (poll interval 60 s) on PostgreSQL: the
    study queued by the receiver's timer is claimed by the work process within a second."""
    port = free_port()
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        destinations = json.dumps([{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}])
        env = node_env(
            tmp_path,
            port,
            database_url=postgres_url,
            quiet_seconds="0.5",
            poll_seconds=str(POLL),
            destinations=destinations,
        )
        command = [sys.executable, "-m", "dicom_node.cli"]
        serve = subprocess.Popen([*command, "serve"], env={**env, "DICOM_NODE_WORKERS": "0"})
        work = subprocess.Popen([*command, "work"], env=env)
        try:
            wait_for_port(port, timeout=60)
            sessions = open_database(postgres_url)  # migrated by the receiver by now
            _wait_listening(sessions, work, timeout=60)
            study_uid = str(generate_uid())
            image = chest_image(study_uid=study_uid)
            assert storescu(write_study(tmp_path / "s", [image]), port=port).returncode == 0
            job = wait_finished(sessions, study_uid, timeout=30)
            with sessions() as session:
                ready_at = session.get_one(Study, study_uid).ready_at
            sessions.kw["bind"].dispose()
        finally:
            for process in (serve, work):
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    assert job.state == "done", job.detail
    assert job.lease_owner and str(work.pid) in job.lease_owner
    assert ready_at is not None and job.started_at is not None
    assert (job.started_at - ready_at).total_seconds() < 1.0
