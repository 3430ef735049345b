"""Schema management: Alembic migrations match the models, and processes that start together
(`serve` and `work`) migrate a fresh database without tripping over each other."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from dicom_node.store.database import make_engine, upgrade_schema
from dicom_node.store.schema import Base


def _upgrade(url: str) -> None:
    engine = make_engine(url)
    upgrade_schema(engine)
    engine.dispose()


def _upgrade_concurrently(url: str, processes: int = 4) -> list[int]:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_upgrade, args=(url,)) for _ in range(processes)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    return [p.exitcode or 0 for p in workers]


def test_migrations_create_exactly_the_models_schema(tmp_path: Path) -> None:
    """After `upgrade head` Alembic finds no difference between the database and the models."""
    engine = make_engine(f"sqlite:///{tmp_path / 'schema.db'}")
    upgrade_schema(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert diff == []


def test_concurrent_start_up_migrates_sqlite_once(tmp_path: Path) -> None:
    """Four processes migrating one new SQLite file at once all succeed."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    assert _upgrade_concurrently(url) == [0, 0, 0, 0]
    engine = make_engine(url)
    assert "audit_events" in inspect(engine).get_table_names()
    engine.dispose()


@pytest.mark.postgres
def test_concurrent_start_up_migrates_postgres_once(postgres_url: str) -> None:
    """Four processes migrating one new PostgreSQL database at once all succeed."""
    assert _upgrade_concurrently(postgres_url) == [0, 0, 0, 0]
