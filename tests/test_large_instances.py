"""Large instances against the real `dicom-node serve` process: receiving is bounded in memory
(pynetdicom writes the data set to a file as it arrives; the node reads its header only), an
image over the pixel budget is stored, not decoded, and its study still gets an SR saying why."""

from __future__ import annotations

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
from tests.conftest import chest_image, node_env
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
    env = node_env(tmp_path, port, quiet_seconds="3")  # memory is read before analysis starts
    database = env["DICOM_NODE_DATABASE_URL"]
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


STUDY_IMAGES = 51  # 51 x 20 MiB: the 996 MB study of the issue


def _twenty_mib_study(study_uid: str, folder: Path) -> list[Path]:
    """51 frontal chest DX of 3240 x 3240 x 16 bits (20 MiB each) in one study: a phantom
    upsampled four times, shifted per image."""
    base = chest_image(study_uid=study_uid, size=(810, 810), seed=1).pixel_array
    pixels = np.repeat(np.repeat(base, 4, axis=0), 4, axis=1).astype(np.uint16)
    folder.mkdir()
    paths = []
    for number in range(STUDY_IMAGES):
        ds = chest_image(study_uid=study_uid, size=(64, 64), seed=number)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = np.roll(pixels, number * 7, axis=1).tobytes()
        ds.InstanceNumber = number + 1
        path = folder / f"{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_a_1_gb_study_of_51_images_is_analysed_in_bounded_memory(tmp_path: Path) -> None:
    """A study of 51 radiographs of 20 MiB each (1 GiB, sent by DCMTK storescu in one
    association) is analysed whole by `dicom-node serve`: the job ends done with all 51 images
    read, and the process's resident memory, sampled from before the send to the job's end,
    grows by less than the study's size (images are decoded one at a time, batches are bounded
    by max_batch; it was OOM-killed in a 6 GB cgroup before)."""
    study_uid = str(generate_uid())
    paths = _twenty_mib_study(study_uid, tmp_path / "study")
    size = sum(path.stat().st_size for path in paths)
    port = free_port()
    env = node_env(tmp_path, port)
    serve = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def send_and_analyse() -> object:
        sent = storescu(paths, port=port, timeout=300)
        assert sent.returncode == 0, sent.stderr
        sessions = open_database(env["DICOM_NODE_DATABASE_URL"])
        return wait_finished(sessions, study_uid, timeout=600)

    try:
        wait_for_port(port, timeout=60)
        time.sleep(1.0)  # the model and the workers are up
        before = _rss(serve.pid)
        job, highest = _highest_rss_while(serve.pid, send_and_analyse)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
    assert job.state == "done", job.detail  # type: ignore[attr-defined]
    assert job.detail.startswith(f"{STUDY_IMAGES} image(s)")  # type: ignore[attr-defined]
    grown = highest - before
    assert grown < size, f"peak memory +{grown >> 20} MiB for a {size >> 20} MiB study"
