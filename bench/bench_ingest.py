"""Ingest against DCMTK: instances per second of `dicom-node serve` (receive only) and of DCMTK
`storescp -od` (the reference), in the same run, interleaved rounds, medians.

    .venv/bin/python bench/bench_ingest.py [--rounds 5] [--cases 0.5x200x1 15x20x1 15x20x4 50x6x1]

A third receiver, bench/bare_scp.py (pynetdicom answering 0x0000 at once: no parse, spool,
fsync or database), shows the floor any pynetdicom-based receiver stands on.

Each case is SIZE_MB x INSTANCES x ASSOCIATIONS: DCMTK `storescu` sends that many DX instances
of that size over that many concurrent associations (128 KiB PDUs; storescu and storescp with
TCP_NODELAY=1: Debian's DCMTK leaves Nagle's algorithm on otherwise), each association its own
instances. The time is storescu's wall time (all associations). The node starts afresh each
round (new SQLite database and spool) and so does storescp (new folder): no round sees
duplicates. storescp writes files without fsync; the node fsyncs every instance and commits
its row and audit event before it answers 0x0000.

The peak memory of each receiver is sampled every 5 ms while the largest case is sent, and
printed as growth over its resident set before the send, against the instance size.
A figure, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import free_port, wait_for_port
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

STORESCP, STORESCU = "/usr/bin/storescp", "/usr/bin/storescu"
PDU = 131072


@dataclass(frozen=True)
class Case:
    size_mb: float
    instances: int
    associations: int

    @property
    def name(self) -> str:
        return f"{self.size_mb:g} MB x {self.instances}, {self.associations} association(s)"


def parse_case(text: str) -> Case:
    size, count, assocs = text.split("x")
    return Case(float(size), int(count), int(assocs))


def make_instances(folder: Path, case: Case) -> list[list[Path]]:
    """`case.instances` DX files of about `size_mb` MB, split into one list per association."""
    side = int(((case.size_mb * 1e6) / 2) ** 0.5)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (side, side), dtype=np.uint16).tobytes()
    study = str(generate_uid())
    paths: list[Path] = []
    for number in range(case.instances):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = DigitalXRayImageStorageForPresentation
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, str(generate_uid())
        ds.PatientID, ds.PatientName, ds.Modality = "BENCH", "Bench^Ingest", "DX"
        ds.BodyPartExamined, ds.ViewPosition, ds.InstanceNumber = "CHEST", "PA", number + 1
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        path = folder / f"{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return [paths[k :: case.associations] for k in range(case.associations)]


@contextmanager
def storescp(folder: Path) -> Iterator[tuple[int, int]]:
    """DCMTK storescp -od folder on a free port: (port, pid)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [STORESCP, "-od", str(folder), "--max-pdu", str(PDU), "-aet", "DICOMNODE", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},  # else each response waits for Nagle
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def node(folder: Path) -> Iterator[tuple[int, int]]:
    """`dicom-node serve` with no worker, SQLite and spool in `folder`: (port, pid)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env.update(
        {
            "DICOM_NODE_PORT": str(port),
            "DICOM_NODE_HTTP_PORT": "0",
            "DICOM_NODE_DATABASE_URL": f"sqlite:///{folder / 'node.db'}",
            "DICOM_NODE_SPOOL_DIR": str(folder / "spool"),
            "DICOM_NODE_WORKERS": "0",
            "DICOM_NODE_QUIET_SECONDS": "3600",  # receive only: no study becomes ready
            "DICOM_NODE_MIN_FREE_DISK_BYTES": str(64 << 20),
            "DICOM_NODE_LOG_LEVEL": "WARNING",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stacks = (
                subprocess.run(
                    ["py-spy", "dump", "-p", str(proc.pid)],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                if shutil.which("py-spy")
                else ""
            )
            Path("bench-ingest-hung-stop.txt").write_text(stacks)
            print("warning: serve did not stop within 60 s of SIGTERM; killed", file=sys.stderr)
            proc.kill()
            proc.wait()


def send(port: int, groups: list[list[Path]]) -> float:
    """storescu, one process (association) per group at once; wall seconds until all ended."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                STORESCU,
                "-aet",
                "BENCH",
                "-aec",
                "DICOMNODE",
                "--max-pdu",
                str(PDU),
                "--required",
                "127.0.0.1",
                str(port),
                *map(str, group),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for group in groups
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-400:]}")
    return time.perf_counter() - started


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_growth(pid: int, work: Callable[[], float]) -> tuple[float, int]:
    """(work's result, highest resident set of pid minus the one before), sampled every 5 ms."""
    before, highest, done = rss(pid), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            highest[0] = max(highest[0], rss(pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = work()
    finally:
        done.set()
        thread.join()
    return result, max(0, highest[0] - before)


@contextmanager
def bare(folder: Path) -> Iterator[tuple[int, int]]:
    """bench/bare_scp.py: pynetdicom answering 0x0000 at once, the floor of a pynetdicom SCP."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("bare_scp.py")), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port, proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=30)


RECEIVERS = {"node": node, "storescp": storescp, "bare pynetdicom": bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="+", default=["0.5x200x1", "15x20x1", "15x20x4", "50x6x1"])
    args = parser.parse_args()
    cases = [parse_case(c) for c in args.cases]
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        files = {
            case: make_instances(_fresh(work / f"in-{n}"), case) for n, case in enumerate(cases)
        }
        largest = max(cases, key=lambda c: c.size_mb)
        times: dict[tuple[Case, str], list[float]] = {}
        peaks: dict[str, list[int]] = {name: [] for name in RECEIVERS}
        for round_number in range(args.rounds):
            order = list(RECEIVERS) if round_number % 2 == 0 else list(reversed(RECEIVERS))
            for case in cases:
                for name in order:
                    target = _fresh(work / "out") / name
                    target.mkdir()
                    with RECEIVERS[name](target) as (port, pid):
                        if case == largest:
                            groups = files[case]
                            seconds, grown = peak_growth(pid, lambda: send(port, groups))  # noqa: B023
                            peaks[name].append(grown)
                        else:
                            seconds = send(port, files[case])
                    times.setdefault((case, name), []).append(seconds)
            print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
        report(cases, times, peaks, largest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def report(
    cases: list[Case],
    times: dict[tuple[Case, str], list[float]],
    peaks: dict[str, list[int]],
    largest: Case,
) -> None:
    print(
        "| case | dicom-node inst/s | storescp inst/s | bare pynetdicom inst/s "
        "| node / storescp (time) | bare pynetdicom / storescp (time) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for case in cases:
        node_t = statistics.median(times[(case, "node")])
        ref_t = statistics.median(times[(case, "storescp")])
        bare_t = statistics.median(times[(case, "bare pynetdicom")])
        print(
            f"| {case.name} | {case.instances / node_t:.1f} | {case.instances / ref_t:.1f} "
            f"| {case.instances / bare_t:.1f} | {node_t / ref_t:.2f} | {bare_t / ref_t:.2f} |"
        )
    size = largest.size_mb * 1e6
    print()
    print(f"Peak memory growth while receiving {largest.name} (median of the rounds):")
    for name, values in peaks.items():
        grown = statistics.median(values)
        print(f"- {name}: +{grown / 2**20:.1f} MiB, {grown / size:.2f}x the instance")


if __name__ == "__main__":
    main()
