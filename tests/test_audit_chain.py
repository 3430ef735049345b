"""The audit hash chain on SQLite: triggers refuse UPDATE and DELETE, `audit verify` names the
first altered, deleted or inserted row (tampering by raw SQL with the triggers dropped), purges keep
the chain verifiable from their checkpoint, and concurrent writer processes keep it whole."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import multiprocessing
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Outcome, Peer
from dicom_node.audit import chain as audit_chain
from dicom_node.audit import cli as audit_cli
from dicom_node.audit import retention as audit_retention
from dicom_node.audit.chain import AuditChainError, row_digest
from dicom_node.store.database import make_engine, make_session_factory, reading
from dicom_node.store.database import upgrade_schema as migrate
from dicom_node.store.schema import AuditCheckpoint, AuditEvent

Tamper = Callable[[sqlite3.Connection], None]
DROP_TRIGGERS = (
    "DROP TRIGGER audit_events_no_update",
    "DROP TRIGGER audit_events_no_delete",
)


def events(sessions: sessionmaker[Session], **where: Any) -> list[AuditEvent]:
    """Audit rows matching column=value, in chain order."""
    with sessions() as session:
        query = select(AuditEvent).order_by(AuditEvent.seq)
        for name, value in where.items():
            query = query.where(getattr(AuditEvent, name) == value)
        return list(session.scalars(query).all())


def run_cli(*argv: str) -> tuple[int, str]:
    """Run `dicom-node audit ARGV` in-process; return the exit code and standard output."""
    parser = argparse.ArgumentParser(prog="dicom-node audit")
    audit_cli.configure_parser(parser)
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = int(args.func(args))
    return code, out.getvalue()


def write_config(path: Path, database_url: str) -> Path:
    path.write_text(f'database_url = "{database_url}"\nspool_dir = "{path.parent / "spool"}"\n')
    return path


def open_sessions(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    migrate(engine)
    return make_session_factory(engine)


def write_events(url: str, count: int, writer: str = "w") -> None:
    """Write `count` audit events, one transaction each (also the body of writer processes)."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    for number in range(count):
        with sessions.begin() as session:
            audit.record(
                session,
                Event.INSTANCE_RECEIVED,
                Outcome.SUCCESS,
                peer=Peer(calling_ae=writer.upper(), called_ae="DICOMNODE", address="10.0.0.1:1"),
                patient_id=f"P{number % 7}",
                study_instance_uid=f"1.2.3.{number % 5}",
                sop_instance_uid=f"1.2.3.{number % 5}.{number}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                detail=f"{writer} #{number}",
            )
    engine.dispose()


def concurrent_writers(url: str, processes: int, each: int) -> None:
    """Several writer processes (spawned) at once; all must finish cleanly."""
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=write_events, args=(url, each, f"w{n}")) for n in range(processes)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=240)
        assert process.exitcode == 0


def verify(sessions: sessionmaker[Session]) -> audit_chain.ChainReport:
    with reading(sessions) as session:
        return audit_chain.verify(session)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


@pytest.fixture
def sessions(db_path: Path) -> sessionmaker[Session]:
    """A migrated SQLite database holding a chain of ten events."""
    url = f"sqlite:///{db_path}"
    sessions = open_sessions(url)
    write_events(url, 10)
    return sessions


def raw(db_path: Path, *statements: str) -> None:
    """Run SQL straight on the file, as someone with access to it could."""
    with sqlite3.connect(db_path) as connection:
        for statement in statements:
            connection.execute(statement)


def _row(db_path: Path, seq: int) -> dict[str, object]:
    sessions = open_sessions(f"sqlite:///{db_path}")
    with sessions() as session:
        row = session.execute(
            select(*[getattr(AuditEvent, n) for n in audit_chain.ROW_FIELDS]).where(
                AuditEvent.seq == seq
            )
        ).one()
    return dict(row._mapping)


def _forge_after_head(db_path: Path) -> None:
    """A well-formed row appended after the last one, without moving the head."""
    last = _row(db_path, 10)
    forged = last | {"id": 99, "seq": 11, "prev_hash": last["row_hash"], "detail": "forged"}
    forged["row_hash"] = row_digest(forged)
    _insert(db_path, forged)


def _forge_duplicate(db_path: Path) -> None:
    """A row slipped in at an existing position (the unique index dropped first)."""
    row = _row(db_path, 5) | {"id": 77, "detail": "forged"}
    row["row_hash"] = row_digest(row)
    raw(db_path, "DROP INDEX ix_audit_seq")
    _insert(db_path, row)


def _rehash(db_path: Path) -> None:
    """Row 5 altered and its own hash recomputed: the link to row 6 breaks."""
    row = _row(db_path, 5) | {"detail": "rewritten"}
    raw(
        db_path,
        *DROP_TRIGGERS,
        f"UPDATE audit_events SET detail = 'rewritten', row_hash = '{row_digest(row)}'"
        " WHERE seq = 5",
    )


def _insert(db_path: Path, row: dict[str, object]) -> None:
    values = dict(row)
    when = values["occurred_at"]
    assert isinstance(when, dt.datetime)
    values["occurred_at"] = when.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
    names = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    with sqlite3.connect(db_path) as connection:
        connection.execute(
            f"INSERT INTO audit_events ({names}) VALUES ({marks})", list(values.values())
        )


TAMPERING: dict[str, tuple[Callable[[Path], None], str, int]] = {
    "altered": (
        lambda p: raw(p, *DROP_TRIGGERS, "UPDATE audit_events SET patient_id = 'X' WHERE seq = 4"),
        "altered",
        4,
    ),
    "deleted": (
        lambda p: raw(p, *DROP_TRIGGERS, "DELETE FROM audit_events WHERE seq = 6"),
        "deleted",
        6,
    ),
    "deleted-last": (
        lambda p: raw(p, *DROP_TRIGGERS, "DELETE FROM audit_events WHERE seq = 10"),
        "deleted",
        10,
    ),
    "inserted-after-head": (_forge_after_head, "inserted", 11),
    "inserted-in-place": (_forge_duplicate, "inserted", 5),
    "altered-and-rehashed": (_rehash, "broken", 6),
}


def test_intact_chain_verifies(sessions: sessionmaker[Session]) -> None:
    """Ten events written one by one form the chain 1..10 whose end is the head."""
    report = verify(sessions)
    assert report.ok and (report.checked, report.last_seq, report.head_seq) == (10, 10, 10)


def test_triggers_refuse_update_and_delete(sessions: sessionmaker[Session], db_path: Path) -> None:
    """A plain UPDATE or DELETE on the audit table fails on SQLite too."""
    for statement in (
        "UPDATE audit_events SET detail = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            raw(db_path, statement)
    assert verify(sessions).ok


@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_names_the_first_tampered_row(
    case: str, sessions: sessionmaker[Session], db_path: Path, tmp_path: Path
) -> None:
    """Each kind of tampering is found at the row it happened, and `audit verify` exits 1."""
    tamper, kind, seq = TAMPERING[case]
    tamper(db_path)
    report = verify(sessions)
    assert not report.ok
    first = report.first_problem
    assert first is not None and (first.kind, first.seq) == (kind, seq), report.problems
    config = write_config(tmp_path / "node.toml", f"sqlite:///{db_path}")
    code, out = run_cli("verify", "--config", str(config))
    assert code == 1 and "NOT INTACT" in out and f"{kind}:" in out
    used = events(sessions, event_type="audit_log_used")
    if case == "inserted-after-head":  # the forged row holds the next position: writes fail
        assert used == []
    else:
        assert used[0].outcome_code == 8 and kind in (used[0].detail or "")


def test_purge_keeps_the_chain_verifiable_from_its_checkpoint(
    sessions: sessionmaker[Session], db_path: Path
) -> None:
    """Rows older than the cutoff go, a checkpoint holds the last one's hash, verify starts
    there, the purge is audited, and tampering after the purge is still found."""
    cutoff = audit_chain.utcnow()
    write_events(f"sqlite:///{db_path}", 3, "late")
    result = audit_retention.purge(sessions, cutoff, user_id="auditor@test")
    assert (result.purged, result.last_seq) == (10, 10)
    report = verify(sessions)
    assert report.ok and (report.start_seq, report.checked) == (10, 4)
    (purged,) = events(sessions, event_type="audit_log_purged")
    assert (purged.event_id, purged.event_action, purged.user_id) == ("110101", "D", "auditor@test")
    assert result.last_hash in (purged.detail or "")
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(AuditCheckpoint)) == 1
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        raw(db_path, "DELETE FROM audit_events WHERE seq = 11")  # not covered by a checkpoint
    raw(db_path, *DROP_TRIGGERS, "DELETE FROM audit_events WHERE seq = 12")
    first = verify(sessions).first_problem
    assert first is not None and (first.kind, first.seq) == ("deleted", 12)


def test_purge_refuses_a_tampered_chain(sessions: sessionmaker[Session], db_path: Path) -> None:
    """A purge verifies what it would delete: evidence of tampering is never purged."""
    raw(db_path, *DROP_TRIGGERS, "UPDATE audit_events SET detail = 'x' WHERE seq = 2")
    with pytest.raises(AuditChainError, match="row 2"):
        audit_retention.purge(sessions, audit_chain.utcnow())
    assert len(events(sessions)) == 10


def test_purge_command_uses_the_retention_period(
    sessions: sessionmaker[Session], db_path: Path, tmp_path: Path
) -> None:
    """`audit purge --older-than-days`: a dry run deletes nothing, the real run deletes rows
    older than the period and leaves a chain that verifies."""
    config = write_config(tmp_path / "node.toml", f"sqlite:///{db_path}")
    time.sleep(1.0)
    days = str(0.5 / 86400)  # half a second
    code, out = run_cli("purge", "--config", str(config), "--older-than-days", days, "--dry-run")
    assert code == 0 and "would purge 10" in out
    code, out = run_cli("purge", "--config", str(config), "--older-than-days", days)
    assert code == 0 and "purged 10" in out  # not the dry run's own, younger, audit event
    assert [e.event_type for e in events(sessions)] == ["audit_log_used", "audit_log_purged"]
    code, out = run_cli("verify", "--config", str(config))
    assert code == 0 and "intact" in out


def test_default_retention_is_six_years() -> None:
    """The default retention period covers six years, leap days included."""
    now = dt.datetime(2030, 3, 1, tzinfo=dt.UTC)
    cutoff = audit_retention.retention_cutoff(audit_retention.DEFAULT_RETENTION_DAYS, now)
    assert cutoff <= dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


def test_concurrent_writer_processes_keep_one_chain_on_sqlite(db_path: Path) -> None:
    """Four processes writing 150 events each into one SQLite file: one unbroken chain."""
    url = f"sqlite:///{db_path}"
    sessions = open_sessions(url)
    concurrent_writers(url, processes=4, each=150)
    report = verify(sessions)
    assert report.ok, report.problems[:3]
    assert report.checked == report.head_seq == 600
