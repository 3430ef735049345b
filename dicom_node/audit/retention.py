"""Retention: rows older than the retention period (default six years) leave the audit table
through a purge that first verifies them, records a checkpoint (the last purged row's position and
hash, from which `verify` starts) and is itself audited. Nothing else deletes audit rows."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import audit
from dicom_node.audit import Event
from dicom_node.audit import chain as audit_chain
from dicom_node.audit.chain import AuditChainError
from dicom_node.store.schema import AuditCheckpoint, AuditEvent, AuditHead, utcnow

# Six years, counting the leap days they may contain.
DEFAULT_RETENTION_DAYS = 6 * 365 + 2
PURGE_SETTING = "dicom_node.audit_purge"


@dataclass(frozen=True, kw_only=True, slots=True)
class PurgeResult:
    """What a purge removed: rows up to `last_seq` (none when `purged` is 0)."""

    purged: int
    last_seq: int
    last_hash: str
    cutoff: dt.datetime
    dry_run: bool


def retention_cutoff(retention_days: float, now: dt.datetime | None = None) -> dt.datetime:
    if retention_days <= 0:
        raise ValueError("the retention period must be positive")
    return (now or utcnow()) - dt.timedelta(days=retention_days)


def purge(
    sessions: sessionmaker[Session],
    cutoff: dt.datetime,
    *,
    user_id: str | None = None,
    dry_run: bool = False,
) -> PurgeResult:
    """Delete the oldest rows, all older than `cutoff`, keeping the chain verifiable.

    Only a prefix of the chain goes: the rows before the first one at or after `cutoff`. They are
    verified first (a purge never destroys evidence of tampering: AuditChainError instead).
    """
    with sessions.begin() as session:
        _lock_head(session)
        start_seq, start_hash = audit_chain.latest_checkpoint(session)
        last_seq = _last_purgeable(session, start_seq, cutoff)
        if last_seq <= start_seq:
            return PurgeResult(
                purged=0, last_seq=start_seq, last_hash=start_hash, cutoff=cutoff, dry_run=dry_run
            )
        state = audit_chain.walk(
            audit_chain.chain_rows(session, start_seq, last_seq), start_seq, start_hash
        )
        if state.problems or state.seq != last_seq:
            first = state.problems[0] if state.problems else "rows missing before the cutoff"
            raise AuditChainError(f"refusing to purge a chain that does not verify: {first}")
        result = PurgeResult(
            purged=state.checked,
            last_seq=last_seq,
            last_hash=state.row_hash,
            cutoff=cutoff,
            dry_run=dry_run,
        )
        if not dry_run:
            _cut(session, result, start_seq, user_id)
    return result


def _lock_head(session: Session) -> None:
    """Writers wait while the purge runs: the chain does not move under it."""
    session.execute(
        select(AuditHead.seq).where(AuditHead.id == audit_chain.HEAD_ID).with_for_update()
    ).one()


def _last_purgeable(session: Session, start_seq: int, cutoff: dt.datetime) -> int:
    first_kept = session.scalar(
        select(func.min(AuditEvent.seq)).where(
            AuditEvent.seq > start_seq, AuditEvent.occurred_at >= cutoff
        )
    )
    if first_kept is not None:
        return int(first_kept) - 1
    newest = session.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.seq > start_seq))
    return start_seq if newest is None else int(newest)


def _cut(session: Session, result: PurgeResult, start_seq: int, user_id: str | None) -> None:
    session.execute(
        insert(AuditCheckpoint).values(
            created_at=utcnow(),
            last_seq=result.last_seq,
            last_hash=result.last_hash,
            purged_rows=result.purged,
            cutoff=result.cutoff,
        )
    )
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:  # the trigger lets a DELETE through only with this transaction-local setting
        session.execute(text(f"SET LOCAL {PURGE_SETTING} = 'on'"))
    session.execute(delete(AuditEvent).where(AuditEvent.seq <= result.last_seq))
    if postgres:
        session.execute(text(f"SET LOCAL {PURGE_SETTING} = 'off'"))
    audit.record(
        session,
        Event.AUDIT_LOG_PURGED,
        user_id=user_id,
        detail=(
            f"purged rows {start_seq + 1}..{result.last_seq} ({result.purged}) older than"
            f" {audit_chain.canonical_time(result.cutoff)}; checkpoint at {result.last_seq},"
            f" hash {result.last_hash}"
        ),
    )
