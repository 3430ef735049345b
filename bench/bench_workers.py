"""Scale-out: studies per second with 1, 2 and 4 `dicom-node work` processes behind one
receive-only `serve`, on one throwaway PostgreSQL (tests/postgres.py), results to DCMTK
storescp. Each round sends the same STUDIES one-image studies (new UIDs) in one association
and times from the first byte sent until every job is done and every result delivered.

    PYTHONPATH=. .venv/bin/python bench/bench_workers.py [--studies 16] [--rounds 2]

A figure, not a test: nothing is asserted. Prints studies/s per worker count and the speed-up
against one worker in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, wait_for_port
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, select, text

from dicom_node.store.database import make_session_factory
from dicom_node.store.schema import Delivery, Job
from dicom_node.synthetic.phantom_dicom import phantom_dataset
from dicom_node.synthetic.phantoms import make_phantom
from dicom_node.testing import DEMO_BUNDLE
from tests.postgres import PostgresCluster

STORESCP, STORESCU = "/usr/bin/storescp", "/usr/bin/storescu"


def make_studies(folder: Path, count: int) -> list[Path]:
    import numpy as np

    folder.mkdir(parents=True)
    paths = []
    for n in range(count):
        phantom = make_phantom(np.random.default_rng(n), findings=("Cardiomegaly",))
        ds = phantom_dataset(
            phantom, patient_id=f"B{n}", patient_name="Bench^Mark", study_uid=str(generate_uid())
        )
        path = folder / f"{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def env_for(root: Path, url: str, port: int, pacs_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    values = {
        "PORT": str(port),
        "HTTP_PORT": "0",
        "DATABASE_URL": url,
        "SPOOL_DIR": str(root / "spool"),
        "MODEL_BUNDLE": str(DEMO_BUNDLE),
        "DEVICE": "cpu",
        "QUIET_SECONDS": "0.5",
        "LOG_LEVEL": "WARNING",
        "MIN_FREE_DISK_BYTES": str(64 << 20),
        "DESTINATIONS": json.dumps([{"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}]),
        **{k.upper(): v for k, v in extra.items()},
    }
    env.update({f"DICOM_NODE_{k}": v for k, v in values.items()})
    return env


def one_round(root: Path, url: str, workers: int, files: list[Path]) -> float:
    """Seconds from the first C-STORE until all studies are done and delivered."""
    pacs_port, port = free_port(), free_port()
    (root / "pacs").mkdir(parents=True)
    pacs = subprocess.Popen(
        [STORESCP, "-od", str(root / "pacs"), "-aet", "PACS", str(pacs_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs = [_node("serve", env_for(root, url, port, pacs_port, workers="0"))]
    procs += [_node("work", env_for(root, url, free_port(), pacs_port)) for _ in range(workers)]
    sessions = make_session_factory(create_engine(url))
    try:
        wait_for_port(port)
        wait_for_port(pacs_port)
        time.sleep(3.0)  # the work processes load the model
        started = time.perf_counter()
        subprocess.run(
            [STORESCU, "-aec", "DICOMNODE", "127.0.0.1", str(port), *map(str, files)],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        while True:
            with sessions() as session:
                done = session.scalar(
                    select(func.count()).select_from(Job).where(Job.state == "done")
                )
                open_ = session.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.state != "sent")
                )
                total = session.scalar(select(func.count()).select_from(Delivery))
            if done == len(files) and open_ == 0 and total:
                return time.perf_counter() - started
            time.sleep(0.05)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=60)
        pacs.terminate()
        pacs.wait(timeout=10)
        sessions.kw["bind"].dispose()


def _node(command: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", command],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    times: dict[int, list[float]] = {n: [] for n in args.workers}
    with PostgresCluster() as pg:
        admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
        for round_number in range(args.rounds):
            order = args.workers if round_number % 2 == 0 else list(reversed(args.workers))
            for workers in order:
                name = f"bench_{round_number}_{workers}"
                with admin.connect() as connection:
                    connection.execute(text(f'CREATE DATABASE "{name}"'))
                root = work / name
                files = make_studies(root / "in", args.studies)
                times[workers].append(one_round(root, pg.url(name), workers, files))
                print(f"round {round_number + 1}: {workers} worker(s) done", file=sys.stderr)
        admin.dispose()
    base = statistics.median(times[args.workers[0]])
    print(f"| work processes | studies/s ({args.studies} one-image studies) | speed-up |")
    print("|---:|---:|---:|")
    for workers in args.workers:
        seconds = statistics.median(times[workers])
        print(f"| {workers} | {args.studies / seconds:.2f} | {base / seconds:.2f} |")


if __name__ == "__main__":
    main()
