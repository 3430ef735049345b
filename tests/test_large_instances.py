"""Large instances against the real `dicom-node serve` process: receiving is bounded in memory
(pynetdicom writes the data set to a file as it arrives; the node reads its header only), an
image over the pixel budget is stored, not decoded, and its study still gets an SR saying why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from pydicom.uid import generate_uid

from dicom_node.store.database import open_database
from dicom_node.store.jobs import wait_finished
from dicom_node.testing import DEMO_BUNDLE
from tests.conftest import chest_image
from tests.peers import free_port, storescu, wait_for_port

pytestmark = pytest.mark.integration

T = TypeVar("T")
SIDE = 10240  # 10240 x 10240 x 16 bits: a 200 MiB instance of 105 megapixels


def _rss(pid: int) -> int:
    """The process's resident set now (VmRSS), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _highest_rss_while(pid: int, work: Callable[[], T]) -> tuple[T, int]:
    """`work()`'s result, and the highest resident set of `pid` sampled every 5 ms meanwhile."""
    highest, done = [_rss(pid)], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            highest[0] = max(highest[0], _rss(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        return work(), highest[0]
    finally:
        done.set()
        sampler.join()


def test_a_200_mib_instance_is_received_in_bounded_memory_and_answered(tmp_path: Path) -> None:
    """DCMTK storescu sends a 200 MiB radiograph to `dicom-node serve`: it is stored (0x0000)
    while the node's resident memory (sampled every 5 ms) grows by far less than the instance
    (it grew by about three times the instance when pynetdicom held it); the image declares more
    pixels than max_decoded_pixels, so it is not decoded and the job ends skipped with the
    reason (the study's SR says it)."""
    study_uid = str(generate_uid())
    ds = chest_image(study_uid=study_uid, size=(64, 64))
    ds.Rows = ds.Columns = SIDE
    ds.PixelData = np.zeros((SIDE, SIDE), np.uint16).tobytes()
    big = tmp_path / "big.dcm"
    ds.save_as(big, enforce_file_format=True)
    del ds
    port = free_port()
    database = f"sqlite:///{tmp_path / 'node.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env.update(
        {
            "DICOM_NODE_PORT": str(port),
            "DICOM_NODE_DATABASE_URL": database,
            "DICOM_NODE_SPOOL_DIR": str(tmp_path / "spool"),
            "DICOM_NODE_MODEL_BUNDLE": str(DEMO_BUNDLE),
            "DICOM_NODE_DEVICE": "cpu",
            "DICOM_NODE_QUIET_SECONDS": "3",  # memory is read before analysis starts
            "DICOM_NODE_POLL_SECONDS": "0.2",
            "DICOM_NODE_MIN_FREE_DISK_BYTES": str(64 << 20),
        }
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=60)
        time.sleep(1.0)  # the model and the workers are up
        before = _rss(serve.pid)
        sent, highest = _highest_rss_while(serve.pid, lambda: storescu([big], port=port))
        assert sent.returncode == 0, sent.stderr
        grown = highest - before
        job = wait_finished(open_database(database), study_uid, timeout=120)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    size = big.stat().st_size
    assert grown < size // 4, f"peak memory +{grown >> 20} MiB for a {size >> 20} MiB instance"
    assert job.state == "skipped" and "max_decoded_pixels" in (job.detail or ""), job.detail
