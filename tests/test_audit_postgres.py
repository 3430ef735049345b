"""The audit trail on the real PostgreSQL: the trigger refuses UPDATE, DELETE and TRUNCATE but lets
a purge through; `verify` still finds tampering done by a superuser with the trigger disabled;
several writer processes keep one chain; real C-STORE traffic is audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import chain as audit_chain
from dicom_node.audit import retention as audit_retention
from dicom_node.node import Node
from tests.conftest import SettingsFactory, chest_image, write_study
from tests.peers import storescu
from tests.test_audit_chain import (
    concurrent_writers,
    events,
    open_sessions,
    run_cli,
    verify,
    write_config,
    write_events,
)

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


@pytest.fixture
def sessions(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    """A migrated database on the local PostgreSQL; its engine is disposed afterwards."""
    migrated = open_sessions(postgres_url)
    yield migrated
    migrated.kw["bind"].dispose()


def superuser(url: str, *statements: str) -> None:
    """Run statements as the postgres superuser with user triggers off (replica role)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            connection.execute(text(statement))
    engine.dispose()


def plain(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement))
    finally:
        engine.dispose()


def test_trigger_refuses_update_delete_and_truncate(
    postgres_url: str, sessions: sessionmaker[Session]
) -> None:
    """UPDATE, DELETE and TRUNCATE on the audit table and its checkpoints are refused."""
    write_events(postgres_url, 3)
    for statement in (
        "UPDATE audit_events SET detail = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        "TRUNCATE audit_checkpoints",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            plain(postgres_url, statement)
    with pytest.raises(DBAPIError, match="append-only"):  # the setting alone is not enough
        plain(
            postgres_url,
            "DO $$ BEGIN SET LOCAL dicom_node.audit_purge = 'on';"
            " DELETE FROM audit_events WHERE seq = 1; END $$",
        )
    assert verify(sessions).ok


@pytest.mark.parametrize(
    ("statements", "kind", "seq"),
    [
        (("UPDATE audit_events SET study_instance_uid = '9.9' WHERE seq = 3",), "altered", 3),
        (("DELETE FROM audit_events WHERE seq = 4",), "deleted", 4),
        (
            (
                "ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS ix_audit_seq",
                "DROP INDEX ix_audit_seq",
                "INSERT INTO audit_events (seq, occurred_at, event_type, event_id, event_action,"
                " outcome, outcome_code, detail, prev_hash, row_hash)"
                " SELECT seq, occurred_at, event_type, event_id, event_action, outcome,"
                " outcome_code, 'forged', prev_hash, row_hash FROM audit_events WHERE seq = 2",
            ),
            "inserted",
            2,
        ),
    ],
    ids=["altered", "deleted", "inserted"],
)
def test_verify_catches_superuser_tampering(
    postgres_url: str,
    sessions: sessionmaker[Session],
    statements: tuple[str, ...],
    kind: str,
    seq: int,
) -> None:
    """With the trigger disabled by a superuser, each kind of tampering is still found."""
    write_events(postgres_url, 6)
    superuser(postgres_url, *statements)
    first = verify(sessions).first_problem
    assert first is not None and (first.kind, first.seq) == (kind, seq)


def test_purge_passes_the_trigger_and_keeps_the_chain(
    postgres_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """A purge deletes through the trigger's exemption; the chain verifies from the checkpoint."""
    write_events(postgres_url, 5)
    cutoff = audit_chain.utcnow()
    write_events(postgres_url, 2, "late")
    result = audit_retention.purge(sessions, cutoff)
    assert (result.purged, result.last_seq) == (5, 5)
    config = write_config(tmp_path / "node.toml", postgres_url)
    code, out = run_cli("verify", "--config", str(config))
    assert code == 0 and "3 row(s), rows 6..8" in out
    with pytest.raises(DBAPIError, match="append-only"):  # rows after the checkpoint stay
        plain(postgres_url, "DELETE FROM audit_events WHERE seq = 6")


def test_concurrent_writer_processes_keep_one_chain(
    postgres_url: str, sessions: sessionmaker[Session]
) -> None:
    """Four processes writing 250 events each: positions 1..1000, every link intact."""
    concurrent_writers(postgres_url, processes=4, each=250)
    report = verify(sessions)
    assert report.ok, report.problems[:3]
    assert report.checked == report.head_seq == 1000
    assert {e.calling_ae for e in events(sessions)} == {"W0", "W1", "W2", "W3"}


def test_c_store_traffic_is_audited_on_postgres(
    make_settings: SettingsFactory, postgres_url: str, tmp_path: Path, study_uid: str
) -> None:
    """storescu into a node on PostgreSQL: 110102 and 110104 rows, and the chain verifies."""
    files = write_study(tmp_path / "in", [chest_image(study_uid=study_uid, size=(64, 64))])
    with Node(make_settings(database_url=postgres_url), workers=0) as node:
        assert storescu(files, port=node.port, calling="MODALITY").returncode == 0
    ids = [e.event_id for e in events(node.sessions)]
    assert ids[0] == "110100" and ids[-1] == "110100"
    assert "110102" in ids and "110104" in ids
    assert verify(node.sessions).ok
    node.sessions.kw["bind"].dispose()
