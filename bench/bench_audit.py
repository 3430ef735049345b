"""What the audit trail costs on the C-STORE path: N C-STOREs of a small DX over loopback into a
receive-only node, with the audit chain on and with the audit write switched off.

    .venv/bin/python bench/bench_audit.py [--count 300] [--rounds 3] [--database-url URL]

Prints images/s of each variant (median of the rounds, variants alternating) and the ratio of
their times. A figure, not a test: nothing is asserted.
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
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]

from dicom_node import audit
from dicom_node.node import Node
from dicom_node.settings import load_settings
from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import make_phantom


def datasets(count: int, size: int) -> list[Dataset]:
    """`count` small DX instances of one study (same pixels, distinct UIDs)."""
    phantom = make_phantom(np.random.default_rng(0), findings=(), size=(size, size))
    study = str(generate_uid())
    template = phantom_dataset(
        phantom, patient_id="BENCH-1", patient_name="Bench^Mark", study_uid=study
    )
    result = []
    for _ in range(count):
        ds = template.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        result.append(ds)
    return result


def store_all(port: int, items: list[Dataset]) -> float:
    """Send every dataset in one association; return the seconds it took."""
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMNODE")
    if not assoc.is_established:
        raise RuntimeError("no association with the node")
    started = time.perf_counter()
    for ds in items:
        status = assoc.send_c_store(ds)
        if int(status.Status) != 0:
            raise RuntimeError(f"C-STORE failed: 0x{int(status.Status):04X}")
    elapsed = time.perf_counter() - started
    assoc.release()
    return elapsed


def one_round(items: list[Dataset], database_url: str | None, audited: bool) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as folder:
        root = Path(folder)
        settings = load_settings(
            environ={},
            overrides={
                "port": 0,
                "database_url": database_url or f"sqlite:///{root / 'node.db'}",
                "spool_dir": root / "spool",
                "log_level": "WARNING",
            },
        )
        fresh = [ds.copy() for ds in items]
        for ds in fresh:
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        with Node(settings, workers=0) as node:
            audit._set_enabled(audited)
            try:
                return store_all(node.port, fresh)
            finally:
                audit._set_enabled(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="C-STOREs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--database-url", help="default: a fresh SQLite file per round")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    items = datasets(args.count, args.size)
    one_round(items[:20], args.database_url, audited=True)  # warm up
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for audited in (False, True):
            times[audited].append(one_round(items, args.database_url, audited))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    backend = (args.database_url or "sqlite").split(":")[0]
    shape = f"{args.size}x{args.size}"
    print(f"{args.count} C-STOREs of a {shape} DX, {backend}, median of {args.rounds} rounds")
    print(f"audit off:   {args.count / off:8.1f} images/s  ({off:.2f} s)")
    print(f"audit chain: {args.count / on:8.1f} images/s  ({on:.2f} s)")
    print(f"time ratio chain/off: {on / off:.3f}  (overhead {100 * (on / off - 1):+.1f} %)")


if __name__ == "__main__":
    main()
