"""Scale-out across hosts, on one machine: two receive-only `serve` processes on different ports
and two `work` processes, each process seeing the shared spool under a mount path of its own
(symbolic links to one folder), all on one PostgreSQL database. The receivers' mount paths
are removed before the workers analyse: the workers find every file through the relative
paths the database keeps."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.store.database import open_database
from dicom_node.store.schema import Delivery, Instance, Job, Result
from tests.conftest import chest_image, node_env, write_study
from tests.peers import STORESCU_BIN, StoreSCP, free_port, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
STUDIES_PER_RECEIVER = 2
LEASE_SECONDS = 4


def _start(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", command], env=env, stdout=out, stderr=out
        )


def _wait(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def test_two_receivers_and_two_workers_on_other_mount_paths_analyse_each_study_once(
    postgres_url: str, tmp_path: Path
) -> None:
    """Studies sent to both receivers at once are each analysed exactly once (one job done,
    one set of 14 findings per image) and each result delivered once to storescp; no stored
    path is absolute; the first worker, SIGKILLed while it holds a job, loses the lease and
    the second finishes that job."""
    real = tmp_path / "spool-real"
    real.mkdir()
    mounts = {name: tmp_path / f"mnt-{name}" for name in ("recv1", "recv2", "work1", "work2")}
    for mount in mounts.values():
        mount.symlink_to(real, target_is_directory=True)
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        destinations = json.dumps([{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}])

        def env(name: str, port: int, **extra: str) -> dict[str, str]:
            return node_env(
                tmp_path,
                port,
                database_url=postgres_url,
                spool_dir=str(mounts[name]),
                destinations=destinations,
                lease_seconds=str(LEASE_SECONDS),
                **extra,
            )

        ports = [free_port(), free_port()]
        processes = [
            _start("serve", env("recv1", ports[0], workers="0"), tmp_path / "recv1.log"),
            _start("serve", env("recv2", ports[1], workers="0"), tmp_path / "recv2.log"),
        ]
        try:
            for port in ports:
                wait_for_port(port, timeout=90)
            studies = _send_to_both(tmp_path, ports)
            sessions = open_database(postgres_url)

            def stored() -> int:
                with sessions() as session:
                    return int(session.scalar(select(func.count()).select_from(Instance)) or 0)

            _wait(lambda: stored() == len(studies), timeout=60)
            for name in ("recv1", "recv2"):  # the receivers' mount paths are gone now
                mounts[name].unlink()
            first = _start("work", env("work1", free_port()), tmp_path / "work1.log")
            processes.append(first)

            def running_by_first() -> bool:
                with sessions() as session:
                    owners = session.scalars(select(Job.lease_owner).where(Job.state == "running"))
                    return any(o and f":{first.pid}:" in o for o in owners)

            _wait(running_by_first, timeout=120)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
            second = _start("work", env("work2", free_port()), tmp_path / "work2.log")
            processes.append(second)

            def all_done() -> bool:
                with sessions() as session:
                    states = session.scalars(select(Job.state)).all()
                    pending = session.scalar(
                        select(func.count()).select_from(Delivery).where(Delivery.state != "sent")
                    )
                return len(states) >= len(studies) and set(states) == {"done"} and pending == 0

            _wait(all_done, timeout=240)
            received = [dcmread(p, stop_before_pixels=True) for p in pacs.received()]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=60)
    jobs, paths, findings = _final_state(sessions)
    assert sorted(j.study_instance_uid for j in jobs) == sorted(studies)  # one job per study
    assert any(j.attempts == 2 for j in jobs)  # the job taken over from the killed worker
    assert findings == 14 * len(studies)
    assert paths and not any(p.startswith("/") for p in paths)
    uids = [str(ds.SOPInstanceUID) for ds in received]
    assert len(uids) == len(set(uids)) == 2 * len(studies)  # an SR and an SC each, once
    assert {str(ds.StudyInstanceUID) for ds in received} == set(studies)


def _send_to_both(tmp_path: Path, ports: list[int]) -> list[str]:
    """STUDIES_PER_RECEIVER one-image studies to each receiver, both storescu at once."""
    studies: list[str] = []
    senders = []
    for number, port in enumerate(ports):
        files = []
        for k in range(STUDIES_PER_RECEIVER):
            uid = str(generate_uid())
            studies.append(uid)
            files += write_study(
                tmp_path / f"in-{number}-{k}", [chest_image(study_uid=uid, seed=k)]
            )
        senders.append(
            subprocess.Popen(
                [str(STORESCU_BIN), "-aec", "DICOMNODE", "127.0.0.1", str(port), *map(str, files)]
            )
        )
    assert all(s.wait(timeout=60) == 0 for s in senders)
    return studies


def _final_state(sessions: sessionmaker[Session]) -> tuple[list[Job], list[str], int]:
    """The jobs, the stored spool paths (as the database keeps them) and the findings' count."""
    with sessions() as session:
        jobs = list(session.scalars(select(Job)).all())
        paths = [
            *session.scalars(select(Instance.path)).all(),
            *session.scalars(select(Delivery.path)).all(),
        ]
        findings = int(session.scalar(select(func.count()).select_from(Result)) or 0)
    sessions.kw["bind"].dispose()
    return jobs, paths, findings
