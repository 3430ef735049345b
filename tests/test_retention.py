"""Retention of received data: a study answered longer ago than `spool_retention_days` has its
received files removed from the spool (the command and the node's own hourly run), its rows and
results kept, one "DICOM Study Deleted" audit row, the audit chain still verifiable; a recent
study is left alone; a purged study cannot be reprocessed."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from dicom_node.audit import chain
from dicom_node.errors import NodeError
from dicom_node.node import Node
from dicom_node.pipeline.reprocess import request_reprocess
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Instance, Job, Result, utcnow
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.peers import storescu

pytestmark = pytest.mark.integration


def test_old_studies_leave_the_spool_and_their_records_stay(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Two analysed studies, one answered 40 days ago: `dicom-node purge-spool` removes the old
    one's files only, marks its instances purged, audits it once, keeps its findings; the audit
    chain verifies; reprocessing it is refused with the reason."""
    # The node itself purges nothing (its own hourly purge could run right after the update
    # below and leave the command nothing to do); the command runs with the 30-day default.
    settings = make_settings(spool_retention_days=None)
    with Node(settings) as node:
        old, recent = str(generate_uid()), str(generate_uid())
        for uid in (old, recent):
            files = write_study(tmp_path / uid, [chest_image(study_uid=uid)])
            assert storescu(files, port=node.port).returncode == 0
            assert wait_finished(node.sessions, uid, timeout=60).state == "done"
        with node.sessions.begin() as session:
            session.execute(
                update(Job)
                .where(Job.study_instance_uid == old)
                .values(finished_at=utcnow() - dt.timedelta(days=40))
            )
            paths = {  # the rows' paths as the node resolves them (stored relative to the spool)
                uid: [
                    row.path
                    for row in session.scalars(
                        select(Instance).where(Instance.study_instance_uid == uid)
                    ).all()
                ]
                for uid in (old, recent)
            }
    env = {
        **os.environ,
        "DICOM_NODE_DATABASE_URL": settings.database_url,
        "DICOM_NODE_SPOOL_DIR": str(settings.spool_dir),
    }
    purge = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "purge-spool"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert purge.returncode == 0, purge.stderr
    assert "of 1 study(ies)" in purge.stdout
    assert not any(Path(p).exists() for p in paths[old])
    assert all(Path(p).exists() for p in paths[recent])
    with Node(settings, workers=0) as node:
        with node.sessions() as session:
            purged = session.scalars(
                select(Instance).where(Instance.study_instance_uid == old)
            ).all()
            assert purged and all(row.purged_at is not None for row in purged)
            findings = session.scalars(select(Result).where(Result.study_instance_uid == old)).all()
            assert len(findings) == 14
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.event_type == "instances_purged")
            ).all()
            assert [(e.study_instance_uid, e.event_id, e.event_action) for e in events] == [
                (old, "110105", "D")
            ]
            assert chain.verify(session).ok
        with pytest.raises(NodeError, match="retention policy"):
            request_reprocess(node.sessions, old)
