"""`dicom-node demo`: the whole loop on embedded defaults. A synthetic chest study (PA with
findings, plus a lateral the model must skip) is pushed by C-STORE to a node running on SQLite with
the demo model; a local receiver stands in for the PACS; findings and result files are printed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event as PynetdicomEvent
from sqlalchemy import select

from dicom_node.dimse.scu import DimseSender
from dicom_node.node import Node
from dicom_node.settings import Destination, load_settings
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import AuditEvent, Result, Skip
from dicom_node.store.spool import copy_atomic, write_atomic
from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import make_phantom

DEMO_FINDINGS = ("Cardiomegaly", "Effusion")


class LocalPacs:
    """A minimal C-STORE SCP that files what it receives under `folder/<study>/<sop>.dcm`."""

    def __init__(self, folder: Path, ae_title: str = "DEMOPACS") -> None:
        self.folder = folder
        self.ae_title = ae_title
        ae = AE(ae_title=ae_title)
        ae.maximum_pdu_size = 131072
        for sop_class in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._store)]
        server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        assert server is not None  # block=False always returns the server
        self.server = server
        self.port = int(self.server.server_address[1])

    def _store(self, event: PynetdicomEvent) -> int:
        ds = event.dataset
        path = self.folder / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
        try:  # once the node runs in this process, data sets are received into files
            copy_atomic(path, Path(event.dataset_path))
        except AttributeError:
            write_atomic(path, event.encoded_dataset())
        return 0x0000

    def received(self) -> list[Path]:
        return sorted(self.folder.rglob("*.dcm"))

    def close(self) -> None:
        self.server.shutdown()


def make_demo_study(folder: Path, seed: int) -> list[Path]:
    """A PA radiograph with the demo findings and a lateral of the same study."""
    rng = np.random.default_rng(seed)
    study_uid = str(generate_uid())
    series_uid = str(generate_uid())
    paths = []
    for number, (view, findings) in enumerate((("PA", DEMO_FINDINGS), ("LL", ())), start=1):
        phantom = make_phantom(rng, findings=findings)
        ds: Dataset = phantom_dataset(
            phantom,
            patient_id="DEMO-0001",
            patient_name="Demo^Phantom",
            study_uid=study_uid,
            series_uid=series_uid,
            view_position=view,
        )
        ds.InstanceNumber = number
        path = folder / f"{view}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def run_demo(workdir: Path, *, seed: int = 7, timeout: float = 180.0) -> int:
    if workdir.exists():
        shutil.rmtree(workdir)
    pacs = LocalPacs(workdir / "pacs")
    settings = load_settings(
        environ={},
        overrides={
            "port": 0,
            "http_enabled": False,  # the demo needs no HTTP side
            "database_url": f"sqlite:///{workdir / 'dicom-node.db'}",
            "spool_dir": workdir / "spool",
            "quiet_seconds": 1.0,
            "destinations": [{"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.port}],
        },
    )
    try:
        with Node(settings) as node:
            print(
                f"node {settings.ae_title} listening on 127.0.0.1:{node.port}; PACS on :{pacs.port}"
            )
            study = make_demo_study(workdir / "study", seed)
            push = DimseSender(ae_title="MODALITY", attempts=1).send(
                Destination(ae_title=settings.ae_title, host="127.0.0.1", port=node.port), study
            )
            print(
                f"pushed {sum(o.ok for o in push)}/{len(study)} image(s) by C-STORE from "
                f"{study[0].parent}/ (a synthetic PA with findings and a lateral)"
            )
            started = time.monotonic()
            study_uid = str(dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
            job = wait_finished(node.sessions, study_uid, timeout=timeout)
            print(f"job {job.id} {job.state} in {time.monotonic() - started:.1f} s: {job.detail}")
            _report(node, pacs, job.id)
            _next_steps(workdir, pacs)
            return 0 if job.state == "done" else 1
    finally:
        pacs.close()


def _report(node: Node, pacs: LocalPacs, job_id: int) -> None:
    with node.sessions() as session:
        results = session.scalars(select(Result).where(Result.job_id == job_id)).all()
        skips = session.scalars(select(Skip).where(Skip.job_id == job_id)).all()
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    if results:
        print(
            f"\nfindings ({results[0].model_name} {results[0].model_version}, synthetic demo model,"
            " not for diagnostic use):"
        )
    for row in sorted(results, key=lambda r: -r.probability):
        mark = "PRESENT" if row.present else "absent "
        print(f"  {mark} {row.label:<20} p={row.probability:.3f} (threshold {row.threshold:.3f})")
    for skip in skips:
        print(f"skipped {skip.sop_instance_uid}: {skip.reason}")
    print("\nresults received by the PACS (same study, new series):")
    for path in pacs.received():
        print(f"  {path}")
    print(f"\naudit trail: {len(events)} events: " + ", ".join(e.event_type for e in events))


def _next_steps(workdir: Path, pacs: LocalPacs) -> None:
    srs = [p for p in pacs.received() if dcmread(p, stop_before_pixels=True).Modality == "SR"]
    print("\nwhat to try next:")
    if srs:
        print(f"  dsrdump {srs[0]}                 # the SR's content tree (DCMTK)")
    print("  .venv/bin/dicom-node serve --config config/dicom-node.toml   # a node of your own")
    print(
        f"  .venv/bin/dicom-node send --port 11112 --aet DICOMNODE {workdir / 'study'}"
        "   # push the demo study to it"
    )
    print(f"  sqlite3 {workdir / 'dicom-node.db'} 'SELECT event_type, detail FROM audit_events'")
