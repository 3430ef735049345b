"""End-to-end latency: from the end of a modality's association to the SR and SC at the PACS.

    .venv/bin/python bench/bench_e2e.py [--studies 10] [--size 2500 2048] [--quiet 3]

`dicom-node serve` (its default settings: one worker, the demo model on this machine's device,
poll interval 0.5 s as the safety net) receives from pynetdicom in this process and delivers to
DCMTK `storescp` (another process, TCP_NODELAY). Printed, each minus the quiet period:

* idle: one-image studies one at a time (uncompressed, JPEG 2000), release -> SR and SC stored
  at the PACS, p50 / p95;
* back to back: `--studies` one-image studies sent one after another without waiting, p50 /
  p95 of each study's release -> results, and studies per second;
* study size: the time of an 8-image study against a one-image study (median of 3 each).

A figure, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from common import free_port, wait_for_port
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE

from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import make_phantom
from dicom_node.testing import DEMO_BUNDLE

STORESCP = "/usr/bin/storescp"


class Radiographs:
    """Phantom DX images of one size, made once and given fresh UIDs per use."""

    def __init__(self, size: tuple[int, int]) -> None:
        phantom = make_phantom(np.random.default_rng(1), findings=("Effusion",), size=size)
        self.template = phantom_dataset(
            phantom, patient_id="BENCH", patient_name="Bench^E2E", study_uid="1.2.3"
        )
        self.compressed: dict[str, bytes] = {}

    def study(self, images: int, syntax: str = ExplicitVRLittleEndian) -> list[Dataset]:
        study_uid = str(generate_uid())
        out = []
        for number in range(images):
            ds = copy.deepcopy(self.template)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, str(generate_uid())
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = number + 1
            if syntax != ExplicitVRLittleEndian:
                if syntax not in self.compressed:
                    probe = self.template.copy()
                    probe.compress(syntax)
                    self.compressed[syntax] = probe.PixelData
                ds.PixelData = self.compressed[syntax]
                ds.file_meta.TransferSyntaxUID = syntax
                ds["PixelData"].is_undefined_length = True
            out.append(ds)
        return out


def send(port: int, datasets: list[Dataset]) -> float:
    """C-STORE the datasets in one association; the time it was released."""
    ae = AE(ae_title="BENCHMOD")
    for sop_class, syntax in {(d.SOPClassUID, d.file_meta.TransferSyntaxUID) for d in datasets}:
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", max_pdu=131072)
    if not assoc.is_established:
        raise RuntimeError("association refused")
    for ds in datasets:
        status = assoc.send_c_store(ds)
        if int(status.Status) != 0:
            raise RuntimeError(f"C-STORE failed: 0x{int(status.Status):04X}")
    assoc.release()
    return time.perf_counter()


class Arrivals:
    """Watches storescp's folder (one subfolder per study): when each study's SR and SCs (one
    per image: the phantoms all show a finding) are all there."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.done: dict[str, float] = {}
        self.expected: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.005):
            for study in self.folder.glob("study_*"):
                uid = study.name.removeprefix("study_")
                if uid in self.done:
                    continue
                if len(list(study.iterdir())) >= self.expected.get(uid, 2):
                    self.done[uid] = time.perf_counter()

    def expect(self, study: list[Dataset]) -> None:
        self.expected[str(study[0].StudyInstanceUID)] = len(study) + 1

    def wait(self, study_uid: str, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        while study_uid not in self.done:
            if time.monotonic() > deadline:
                log = (self.folder.parent / "node.log").read_text()[-3000:]
                raise TimeoutError(f"no results for {study_uid}; the node's log:\n{log}")
            time.sleep(0.002)
        return self.done[study_uid]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def storescp(folder: Path) -> Iterator[int]:
    port = free_port()
    folder.mkdir(parents=True)
    proc = subprocess.Popen(
        [
            STORESCP,
            "-od",
            str(folder),
            "-su",
            "study",
            "--max-pdu",
            "131072",
            "-aet",
            "PACS",
            str(port),
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def node(folder: Path, pacs_port: int, quiet: float, workers: int) -> Iterator[int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    destination = f'[{{"ae_title": "PACS", "host": "127.0.0.1", "port": {pacs_port}}}]'
    env.update(
        {
            "DICOM_NODE_PORT": str(port),
            "DICOM_NODE_HTTP_PORT": "0",
            "DICOM_NODE_DATABASE_URL": f"sqlite:///{folder / 'node.db'}",
            "DICOM_NODE_SPOOL_DIR": str(folder / "spool"),
            "DICOM_NODE_MODEL_BUNDLE": str(DEMO_BUNDLE),
            "DICOM_NODE_QUIET_SECONDS": str(quiet),
            "DICOM_NODE_WORKERS": str(workers),
            "DICOM_NODE_DESTINATIONS": destination,
            "DICOM_NODE_MIN_FREE_DISK_BYTES": str(64 << 20),
            "DICOM_NODE_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
    )
    log = (folder / "node.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "serve"], env=env, stdout=log, stderr=log
    )
    try:
        wait_for_port(port)
        time.sleep(2.0)  # the model loaded, the worker polling
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95


def one_at_a_time(
    port: int, arrivals: Arrivals, images: Radiographs, syntax: str, *, n: int, quiet: float
) -> list[float]:
    out = []
    for _ in range(n):
        study = images.study(1, syntax)
        released = send(port, study)
        out.append(arrivals.wait(str(study[0].StudyInstanceUID)) - released - quiet)
    return out


def back_to_back(
    port: int, arrivals: Arrivals, images: Radiographs, n: int, quiet: float
) -> tuple[list[float], float]:
    studies = [images.study(1) for _ in range(n)]
    started = time.perf_counter()
    released = [send(port, study) for study in studies]
    done = [arrivals.wait(str(s[0].StudyInstanceUID)) for s in studies]
    latencies = [d - r - quiet for d, r in zip(done, released, strict=True)]
    return latencies, n / (max(done) - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=10)
    parser.add_argument("--size", type=int, nargs=2, default=(2500, 2048))
    parser.add_argument("--quiet", type=float, default=3.0, help="the node's quiet_seconds")
    parser.add_argument("--workers", type=int, default=1, help="the node's workers (default 1)")
    parser.add_argument("--keep", type=Path, help="copy the node's log here")
    args = parser.parse_args()
    images = Radiographs(tuple(args.size))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with (
            storescp(root / "pacs") as pacs_port,
            node(root, pacs_port, args.quiet, args.workers) as port,
        ):
            arrivals = Arrivals(root / "pacs")
            one_at_a_time(
                port, arrivals, images, ExplicitVRLittleEndian, n=1, quiet=args.quiet
            )  # warm
            print(
                f"{args.size[0]}x{args.size[1]} DX, quiet period {args.quiet:g} s (subtracted), "
                f"{args.workers} worker(s)"
            )
            print("| measure | p50 s | p95 s |")
            print("|---|---:|---:|")
            for name, syntax in (
                ("uncompressed", ExplicitVRLittleEndian),
                ("JPEG 2000", JPEG2000Lossless),
            ):
                p50, p95 = percentiles(
                    one_at_a_time(port, arrivals, images, syntax, n=args.studies, quiet=args.quiet)
                )
                print(f"| one-image study, idle, {name} | {p50:.3f} | {p95:.3f} |")
            latencies, rate = back_to_back(port, arrivals, images, 2 * args.studies, args.quiet)
            p50, p95 = percentiles(latencies)
            print(
                f"| {2 * args.studies} one-image studies back to back ({rate:.2f} studies/s) "
                f"| {p50:.3f} | {p95:.3f} |"
            )
            single, eight = [], []
            for _ in range(3):
                for count, bucket in ((1, single), (8, eight)):
                    study = images.study(count)
                    arrivals.expect(study)
                    released = send(port, study)
                    bucket.append(
                        arrivals.wait(str(study[0].StudyInstanceUID)) - released - args.quiet
                    )
            one, many = statistics.median(single), statistics.median(eight)
            print()
            print(
                f"8-image study {many:.3f} s against one image {one:.3f} s: {many / one:.2f}x "
                f"(+{(many - one) / 7 * 1000:.0f} ms per image)"
            )
            arrivals.close()
        if args.keep:
            args.keep.write_bytes((root / "node.log").read_bytes())


if __name__ == "__main__":
    main()
