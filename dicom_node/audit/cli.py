"""`dicom-node audit`: verify the chain, query, export (CSV, JSON, DICOM audit XML) and purge the
audit trail. Every use of the log is itself audited (110101 Audit Log Used)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event, Outcome
from dicom_node.audit import chain as audit_chain
from dicom_node.audit import export as audit_export
from dicom_node.audit import retention as audit_retention
from dicom_node.audit.syslog import forwarding, message_context
from dicom_node.settings import Settings, load_settings
from dicom_node.store.database import reading

QUERY_COLUMNS = (
    ("seq", 6),
    ("occurred_at", 27),
    ("event_id", 6),
    ("event_type", 20),
    ("outcome", 9),
    ("calling_ae", 16),
    ("called_ae", 16),
    ("patient_id", 16),
    ("study_instance_uid", 40),
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the verify, query, export and purge sub-commands to `parser`."""
    commands = parser.add_subparsers(dest="audit_command", required=True)

    verify = commands.add_parser("verify", help="check the hash chain; exit 1 when tampered")
    _add_config(verify)
    verify.set_defaults(func=cmd_verify)

    query = commands.add_parser("query", help="list matching audit events")
    _add_config(query)
    _add_filters(query)
    query.add_argument("--limit", type=int, default=200, help="at most this many rows")
    query.set_defaults(func=cmd_query)

    export = commands.add_parser("export", help="write matching events as CSV, JSON or XML")
    _add_config(export)
    _add_filters(export)
    export.add_argument("--format", choices=audit_export.FORMATS, required=True)
    export.add_argument("--output", "-o", type=Path, help="file (default: standard output)")
    export.set_defaults(func=cmd_export)

    purge = commands.add_parser("purge", help="delete events older than the retention period")
    _add_config(purge)
    purge.add_argument(
        "--older-than-days",
        type=float,
        help="retention in days (default: the audit_retention_days setting, six years)",
    )
    purge.add_argument("--dry-run", action="store_true", help="report, delete nothing")
    purge.set_defaults(func=cmd_purge)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML file (DICOM_NODE_<KEY> variables win)")


def _timestamp(value: str) -> dt.datetime:
    """ISO 8601 date or date-time; without a zone it is UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or time: {value!r}") from exc
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patient-id")
    parser.add_argument("--study", dest="study_instance_uid", help="Study Instance UID")
    parser.add_argument("--ae-title", help="calling or called AE title")
    parser.add_argument("--event", help="event name (instance_received) or DICOM ID (110104)")
    parser.add_argument("--since", type=_timestamp, help="from this time (ISO 8601, UTC)")
    parser.add_argument("--until", type=_timestamp, help="before this time (ISO 8601, UTC)")


def _filters(args: argparse.Namespace) -> audit_export.AuditFilter:
    return audit_export.AuditFilter(
        patient_id=args.patient_id,
        study_instance_uid=args.study_instance_uid,
        ae_title=args.ae_title,
        event=args.event,
        since=args.since,
        until=args.until,
    )


@contextlib.contextmanager
def _open(args: argparse.Namespace) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    """Settings and the database for one command; the engine is disposed afterwards."""
    from dicom_node.store.database import open_database

    settings = load_settings(args.config)
    sessions = open_database(settings.database_url)
    try:
        with forwarding(settings):
            yield settings, sessions
    finally:
        sessions.kw["bind"].dispose()


def _used(sessions: sessionmaker[Session], detail: str, outcome: Outcome = Outcome.SUCCESS) -> None:
    """Audit this use of the log. A chain someone wrote past its head refuses new rows (the
    position is taken): say so, but still report what was found."""
    try:
        with sessions.begin() as session:
            audit.record(
                session, Event.AUDIT_LOG_USED, outcome, user_id=audit.current_user(), detail=detail
            )
    except SQLAlchemyError as exc:
        print(f"dicom-node: could not audit this use of the log: {exc}", file=sys.stderr)


def cmd_verify(args: argparse.Namespace) -> int:
    with _open(args) as (_, sessions):
        with reading(sessions) as session:
            report = audit_chain.verify(session)
        _print_report(report)
        summary = f"verify: {report.checked} row(s) from position {report.start_seq + 1}"
        if report.ok:
            _used(sessions, f"{summary}: intact")
            return 0
        _used(sessions, f"{summary}: {report.first_problem}", Outcome.FAILURE)
        return 1


def _print_report(report: audit_chain.ChainReport) -> None:
    span = f"rows {report.start_seq + 1}..{report.last_seq}"
    if report.ok:
        print(f"audit chain intact: {report.checked} row(s), {span}; head hash {report.head_hash}")
        return
    print(f"AUDIT CHAIN NOT INTACT: {len(report.problems)} problem(s) in {span}")
    print(f"first: {report.first_problem}")
    for problem in report.problems[1:]:
        print(f"  then: {problem}")


def cmd_query(args: argparse.Namespace) -> int:
    filters = _filters(args)
    with _open(args) as (_, sessions):
        with reading(sessions) as session:
            count = _print_rows(audit_export.fetch(session, filters, args.limit))
        _used(sessions, f"query: {filters.describe()}; {count} row(s)")
    return 0


def _print_rows(rows: Iterator[audit_chain.Row]) -> int:
    print(" ".join(name.ljust(width)[:width] for name, width in QUERY_COLUMNS) + " detail")
    count = 0
    for row in rows:
        cells = [_cell(row[name]).ljust(width)[:width] for name, width in QUERY_COLUMNS]
        print(" ".join(cells) + " " + _cell(row["detail"]))
        count += 1
    print(f"({count} row(s))")
    return count


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dt.datetime):
        return audit_chain.canonical_time(value)
    return str(value)


def cmd_export(args: argparse.Namespace) -> int:
    filters = _filters(args)
    target = str(args.output) if args.output else "standard output"
    with _open(args) as (settings, sessions):
        with reading(sessions) as session, _output(args.output) as stream:
            rows = audit_export.fetch(session, filters)
            count = audit_export.write_export(args.format, rows, stream, message_context(settings))
        _used(sessions, f"export {args.format} to {target}: {filters.describe()}; {count} row(s)")
    print(f"exported {count} audit event(s) to {target}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[IO[str]]:
    if path is None:
        yield sys.stdout
        return
    with path.open("w", encoding="utf-8", newline="") as stream:
        yield stream


def cmd_purge(args: argparse.Namespace) -> int:
    with _open(args) as (settings, sessions):
        days = args.older_than_days
        if days is None:
            days = getattr(settings, "audit_retention_days", audit_retention.DEFAULT_RETENTION_DAYS)
        cutoff = audit_retention.retention_cutoff(float(days))
        try:
            result = audit_retention.purge(
                sessions, cutoff, user_id=audit.current_user(), dry_run=args.dry_run
            )
        except audit_chain.AuditChainError as exc:
            _used(sessions, f"purge refused: {exc}", Outcome.FAILURE)
            raise
        if args.dry_run:
            _used(sessions, f"purge dry run: {result.purged} row(s) older than {days} day(s)")
    verb = "would purge" if args.dry_run else "purged"
    print(
        f"{verb} {result.purged} audit event(s) older than {days} day(s);"
        f" chain checkpoint at {result.last_seq} ({result.last_hash})"
    )
    return 0
