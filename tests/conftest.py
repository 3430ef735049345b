"""Shared fixtures: settings in a temporary folder, a node on a free loopback port, synthetic
chest studies written as DICOM files."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from dicom_node.settings import Settings
from dicom_node.testing import node_settings
from tests.postgres import PostgresCluster

if TYPE_CHECKING:
    from dicom_node.node import Node

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings on a temporary SQLite file and spool, a free port, short quiet period."""

    def factory(**overrides: Any) -> Settings:
        return node_settings(tmp_path, **overrides)

    return factory


@pytest.fixture
def receiver(make_settings: SettingsFactory) -> Iterator[Node]:
    """A node that only receives (no workers, no model): for intake tests."""
    from dicom_node.node import Node

    with Node(make_settings(), workers=0) as node:
        yield node


def chest_image(
    *,
    study_uid: str,
    findings: tuple[str, ...] = ("Cardiomegaly",),
    view_position: str = "PA",
    seed: int = 0,
    size: tuple[int, int] = (512, 512),
    **kwargs: Any,
) -> Dataset:
    """A synthetic chest radiograph (DX unless modality="CR") of the given study."""
    from dicom_node.synthetic.phantom_dicom import phantom_dataset
    from dicom_node.synthetic.phantoms import make_phantom

    rng = np.random.default_rng(seed)
    phantom = make_phantom(rng, findings=findings, size=size)
    return phantom_dataset(
        phantom,
        patient_id="TEST-PID-4711",
        patient_name="Testperson^Secret",
        study_uid=study_uid,
        view_position=view_position,
        **kwargs,
    )


def node_env(folder: Path, port: int, **settings: str) -> dict[str, str]:
    """The environment of a `dicom-node` process of the tests (as an operator configures one:
    DICOM_NODE_* variables only): SQLite and spool in `folder`, the demo bundle on CPU, short
    quiet period and poll; `settings` add or override variables (keys without the prefix)."""
    import os

    from dicom_node.testing import DEMO_BUNDLE

    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    values = {
        "port": str(port),
        "http_port": "0",
        "database_url": f"sqlite:///{folder / 'node.db'}",
        "spool_dir": str(folder / "spool"),
        "model_bundle": str(DEMO_BUNDLE),
        "device": "cpu",
        "quiet_seconds": "0.5",
        "poll_seconds": "0.2",
        "min_free_disk_bytes": str(64 << 20),
        **settings,
    }
    env.update({f"DICOM_NODE_{key.upper()}": value for key, value in values.items()})
    return env


def write_study(folder: Path, datasets: list[Dataset]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, ds in enumerate(datasets, start=1):
        path = folder / f"{number:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def study_uid() -> str:
    return str(generate_uid())


# ---- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the session (tests/postgres.py), never a server that
    was running before."""
    try:
        cluster = PostgresCluster()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh database on the session's throwaway server (trust auth, user postgres), dropped
    afterwards."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"dicom_node_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_cluster.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    yield postgres_cluster.url(name)
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    admin.dispose()
