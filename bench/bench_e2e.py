"""End-to-end latency: from the end of a modality's association to the SR and SC at the PACS.

    .venv/bin/python bench/bench_e2e.py [--studies 5] [--size 2500 2048] [--quiet 0.5]

For each transfer syntax, N one-image studies (a 16-bit-container, 12-bit DX phantom of the given
size) are sent by C-STORE to a node with the demo model on this machine's device; the time from
the association's release to the arrival of both result objects at a local receiver is measured.
The quiet period (the node's wait for more instances) is part of it and printed separately.
A figure, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom import AE

from dicom_node.node import Node
from dicom_node.synthetic.demo import LocalPacs
from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import make_phantom
from dicom_node.testing import node_settings


def radiograph(size: tuple[int, int], syntax: str) -> Dataset:
    phantom = make_phantom(np.random.default_rng(1), findings=("Effusion",), size=size)
    ds = phantom_dataset(
        phantom, patient_id="BENCH", patient_name="Bench^E2E", study_uid=str(generate_uid())
    )
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    return ds


def send(port: int, ds: Dataset) -> float:
    """C-STORE one dataset; return the time the association was released."""
    ae = AE(ae_title="BENCHMOD")
    ae.add_requested_context(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE", max_pdu=131072)
    status = assoc.send_c_store(ds)
    assoc.release()
    if int(status.Status) != 0:
        raise RuntimeError(f"C-STORE failed: 0x{int(status.Status):04X}")
    return time.perf_counter()


def wait_results(pacs: LocalPacs, study_uid: str, timeout: float = 120) -> float:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if len(list((pacs.folder / study_uid).glob("*.dcm"))) >= 2:
            return time.perf_counter()
        time.sleep(0.01)
    raise TimeoutError("results did not arrive")


def run(studies: int, size: tuple[int, int], quiet: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pacs = LocalPacs(root / "pacs")
        destination = {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}
        settings = node_settings(
            root,
            device="auto",  # the GPU where there is one
            quiet_seconds=quiet,
            poll_seconds=0.05,
            destinations=[destination],
        )
        with Node(settings) as node:
            print(f"{size[0]}x{size[1]} DX, {studies} one-image studies per syntax")
            print(f"quiet period {quiet} s")
            for name, syntax in (
                ("uncompressed", ExplicitVRLittleEndian),
                ("RLE", RLELossless),
                ("JPEG 2000", JPEG2000Lossless),
            ):
                latencies = []
                for _ in range(studies):
                    ds = radiograph(size, syntax)
                    released = send(node.port, ds)
                    latencies.append(wait_results(pacs, str(ds.StudyInstanceUID)) - released)
                median = statistics.median(latencies)
                print(
                    f"  {name:<13} release -> SR+SC at PACS: median {median:.2f} s "
                    f"({median - quiet:.2f} s after the quiet period)"
                )
        pacs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--size", type=int, nargs=2, default=(2500, 2048))
    parser.add_argument("--quiet", type=float, default=0.5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run(args.studies, tuple(args.size), args.quiet)


if __name__ == "__main__":
    main()
