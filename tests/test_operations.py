"""Operating the node: its HTTP side (health, readiness, metrics) and deliveries that reach
every destination without an operator, one destination never holding up another. Real
peers: a running node, DCMTK storescu and storescp, a throwaway PostgreSQL server, a TCP
listener that never answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from sqlalchemy import func, select

from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Delivery
from dicom_node.testing import node_settings
from tests.conftest import chest_image, write_study
from tests.peers import StoreSCP, free_port, storescu
from tests.postgres import PostgresCluster

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


def _wait(condition: Callable[[], bool], timeout: float, step: float = 0.02) -> float:
    """Seconds until `condition()` held; TimeoutError after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - started


def _status(url: str) -> int:
    return requests.get(url, timeout=2).status_code


def _audit_rows(node: Node) -> int:
    with node.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _send_study(node: Node, folder: Path, images: int = 1) -> str:
    from pydicom.uid import generate_uid

    study_uid = str(generate_uid())
    files = write_study(folder, [chest_image(study_uid=study_uid) for _ in range(images)])
    assert storescu(files, port=node.port).returncode == 0
    return study_uid


def test_healthz_readyz_and_metrics_answer_without_writing_audit_rows(tmp_path: Path) -> None:
    """A node with a worker: /healthz 200, /readyz 200 naming its five checks (database,
    spool, disk, model, listener), /metrics in the exposition format with the model's
    identity; fifty probes add no audit row."""
    with Node(node_settings(tmp_path)) as node:
        base = f"http://127.0.0.1:{node.http_port}"
        before = _audit_rows(node)
        for _ in range(25):
            assert _status(f"{base}/healthz") == 200
            assert _status(f"{base}/readyz") == 200
        body = requests.get(f"{base}/readyz", timeout=2).json()
        assert body["ready"] is True
        assert set(body["checks"]) == {"database", "spool", "disk", "model", "listener"}
        assert _audit_rows(node) == before
        metrics = requests.get(f"{base}/metrics", timeout=5)
        assert metrics.headers["content-type"].startswith("text/plain")
        assert 'dicom_node_model_info{name="cxr14-densenet121-demo"' in metrics.text
        assert 'dicom_node_ready_check{check="database"} 1.0' in metrics.text
        assert "dicom_node_spool_free_bytes" in metrics.text


def test_readyz_turns_unready_within_a_second_of_postgres_going_away_and_ready_again(
    tmp_path: Path,
) -> None:
    """The database server stopped (connections cut): /readyz answers 503 naming the database
    within a second, the listener still up; started again: 200 without a restart of the node."""
    with (
        PostgresCluster() as pg,
        Node(node_settings(tmp_path, database_url=pg.url(), workers=0)) as node,
    ):
        url = f"http://127.0.0.1:{node.http_port}/readyz"
        assert _status(url) == 200
        pg.stop_server()
        assert _wait(lambda: _status(url) == 503, timeout=5) < 1.0
        checks = requests.get(url, timeout=2).json()["checks"]
        assert checks["database"]["ok"] is False and checks["listener"]["ok"] is True
        pg.start_server()
        assert _wait(lambda: _status(url) == 200, timeout=10) < 5.0


def test_readyz_turns_unready_when_the_spool_disk_falls_below_its_headroom(tmp_path: Path) -> None:
    """min_free_disk_bytes set 256 MiB below the free space, then a 512 MiB file allocated on
    the same file system: unready (disk) within a second, and the Dockerfile's HEALTHCHECK
    command fails; the file removed: ready again."""
    free = shutil.disk_usage(tmp_path).free
    settings = node_settings(tmp_path, workers=0, min_free_disk_bytes=free - (256 << 20))
    filler = tmp_path / "filler.bin"
    with Node(settings) as node:
        url = f"http://127.0.0.1:{node.http_port}/readyz"
        assert _status(url) == 200
        assert _healthcheck(node) == 0
        with filler.open("wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, 512 << 20)
        try:
            assert _wait(lambda: _status(url) == 503, timeout=5) < 1.0
            disk = requests.get(url, timeout=2).json()["checks"]["disk"]
            assert disk["ok"] is False and "min_free_disk_bytes" in disk["detail"]
            assert _healthcheck(node) == 1
        finally:
            filler.unlink()
        assert _wait(lambda: _status(url) == 200, timeout=5) < 1.0


def _healthcheck(node: Node) -> int:
    """The exit status of the Dockerfile's HEALTHCHECK command against the node."""
    dockerfile = (REPO / "Dockerfile").read_text()
    line = next(x for x in dockerfile.splitlines() if x.startswith("HEALTHCHECK"))
    assert '"/opt/dicom-node/scripts/healthcheck.py"' in line
    env = {**os.environ, "DICOM_NODE_HTTP_PORT": str(node.http_port)}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "healthcheck.py")], env=env, check=False
    )
    return done.returncode


def test_results_arrive_exactly_once_without_an_operator_after_the_destination_was_down(
    tmp_path: Path,
) -> None:
    """The destination's port is closed while two studies are analysed; their deliveries fail
    and are retried on the schedule (at least two rounds each, audited); storescp then starts
    on that port: all four results arrive without any command, each exactly once, and stay
    sent (no further sending in the seconds after)."""
    port = free_port()
    settings = node_settings(
        tmp_path,
        destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": port}],
        send_attempts=1,
        retry_initial_seconds=0.3,
        retry_max_interval_seconds=0.6,
    )
    with Node(settings) as node:
        studies = [_send_study(node, tmp_path / f"in{n}") for n in range(2)]
        for study in studies:
            wait_finished(node.sessions, study, timeout=60)

        def failed_rounds() -> int:
            with node.sessions() as session:
                return int(
                    session.scalar(
                        select(func.count())
                        .select_from(AuditEvent)
                        .where(AuditEvent.event_type == "result_failed")
                    )
                    or 0
                )

        _wait(lambda: failed_rounds() >= 8, timeout=30, step=0.1)  # 4 results x 2 rounds
        with StoreSCP(tmp_path / "pacs", aet="PACS", port=port) as pacs:
            received = pacs.wait_for(4, timeout=30)
            time.sleep(2.0)  # several retry periods: nothing is sent again
            received = pacs.received()
            uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in received]
            assert len(uids) == 4 and len(set(uids)) == 4
            with node.sessions() as session:
                states = session.scalars(select(Delivery.state)).all()
            assert sorted(states) == ["sent"] * 4


class SilentListener:
    """A TCP listener that accepts connections and never answers (a hung PACS)."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def __enter__(self) -> SilentListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.socket.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    with SilentListener() as listener:
        yield listener


def test_a_destination_that_never_answers_delays_no_other_destination(
    tmp_path: Path, silent: SilentListener
) -> None:
    """Destinations: one that accepts TCP and never answers (send timeout 8 s), and storescp.
    Two studies analysed one after the other: each one's SR and SC reach storescp within two
    seconds of its job's end, while the silent destination's lane still waits."""
    with StoreSCP(tmp_path / "pacs", aet="PACS") as pacs:
        settings = node_settings(
            tmp_path,
            destinations=[
                {"ae_title": "HUNG", "host": "127.0.0.1", "port": silent.port},
                {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
            ],
            send_attempts=1,
            send_timeout_seconds=8,
        )
        with Node(settings) as node:
            for number in range(2):
                study = _send_study(node, tmp_path / f"in{number}")
                job = wait_finished_job(node, study)
                assert job is not None
                waited = _wait(lambda n=number: len(pacs.received()) >= 2 * (n + 1), timeout=10)
                assert waited < 2.0, f"study {number + 1}: {waited:.1f} s after its job"
            assert silent.accepted, "the silent destination was tried meanwhile"


def wait_finished_job(node: Node, study_uid: str) -> object:
    """The study's job once it has ended (its deliveries may still be pending in their lanes)."""
    from dicom_node.store.schema import Job

    def ended() -> bool:
        with node.sessions() as session:
            state = session.scalar(
                select(Job.state).where(Job.study_instance_uid == study_uid).order_by(Job.id.desc())
            )
        return state in {"done", "skipped", "failed"}

    _wait(ended, timeout=60, step=0.05)
    return True


def test_a_delivery_failing_past_the_retry_window_is_dead_lettered_audited_and_counted(
    tmp_path: Path,
) -> None:
    """Nothing listens at the destination and the window is one second: both results end
    `dead`, each with a `result_dead_lettered` audit row, and /metrics counts them."""
    settings = node_settings(
        tmp_path,
        destinations=[{"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}],
        send_attempts=1,
        retry_initial_seconds=0.2,
        retry_max_interval_seconds=0.4,
        retry_window_seconds=1.0,
    )
    with Node(settings) as node:
        _send_study(node, tmp_path / "in")

        def states() -> list[str]:
            with node.sessions() as session:
                return sorted(session.scalars(select(Delivery.state)).all())

        _wait(lambda: states() == ["dead", "dead"], timeout=60, step=0.1)
        with node.sessions() as session:
            dead = session.scalars(
                select(AuditEvent).where(AuditEvent.event_type == "result_dead_lettered")
            ).all()
        assert len(dead) == 2 and all(e.outcome == "failure" for e in dead)
        text = requests.get(f"http://127.0.0.1:{node.http_port}/metrics", timeout=5).text
        destination = settings.destinations[0]
        assert (
            f'dicom_node_deliveries_by_state{{destination="{destination}",state="dead"}} 2.0'
            in text
        )
