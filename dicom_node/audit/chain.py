"""The audit hash chain: how a row is hashed, how a row is appended (one writer at a time), and how
the chain is verified, reporting the first altered, deleted or inserted row.

Row `seq` stores `prev_hash` (the `row_hash` of row `seq - 1`, or of the newest purge checkpoint,
or 64 zeros for the first row) and `row_hash = SHA-256(canonical JSON of HASHED_FIELDS)`. The
canonical form is frozen: changing it breaks every stored chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from dicom_node.errors import NodeError
from dicom_node.store.schema import AuditCheckpoint, AuditEvent, AuditHead, utcnow

GENESIS = "0" * 64
HEAD_ID = 1
HASHED_FIELDS = (
    "seq",
    "occurred_at",
    "event_type",
    "event_id",
    "event_action",
    "outcome",
    "outcome_code",
    "calling_ae",
    "called_ae",
    "peer_address",
    "user_id",
    "process",
    "patient_id",
    "study_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "sop_class_counts",
    "job_id",
    "model",
    "detail",
    "prev_hash",
)
ROW_FIELDS = ("id", *HASHED_FIELDS, "row_hash")
MAX_PROBLEMS = 100

Row = Mapping[Any, Any]  # a RowMapping, or a dict read back from an export
Kind = Literal["altered", "deleted", "inserted", "broken"]


class AuditChainError(NodeError):
    """The audit chain is not intact (or not there); the message says where."""


def canonical_time(value: dt.datetime) -> str:
    """UTC with microseconds and a Z: the one text form of a time inside the hash."""
    if value.tzinfo is None:
        raise ValueError("audit times are timezone-aware UTC")
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_digest(row: Row) -> str:
    """SHA-256 (hex) of a row's hashed fields, `prev_hash` included."""
    values = [
        canonical_time(row[name]) if name == "occurred_at" else row[name] for name in HASHED_FIELDS
    ]
    text = json.dumps(values, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# Built once: the statements of every append are compiled once and taken from the cache after.
_HEAD = select(AuditHead.seq, AuditHead.row_hash).where(AuditHead.id == HEAD_ID).with_for_update()
_INSERT = insert(AuditEvent)
_MOVE_HEAD = (
    update(AuditHead)
    .where(AuditHead.id == HEAD_ID)
    .values(seq=bindparam("new_seq"), row_hash=bindparam("new_hash"))
)


def append(session: Session, values: Mapping[str, Any]) -> dict[str, Any]:
    """Add one link in the caller's transaction and return the row as written.

    The head row is locked first (`SELECT ... FOR UPDATE`; on SQLite the transaction already holds
    the write lock, see `db._sqlite_begin`), so concurrent writers queue up and each sees the
    link of the one before. The time is taken under the lock: `occurred_at` grows with `seq`.
    """
    head = session.execute(_HEAD).one_or_none()
    if head is None:
        raise AuditChainError("the audit head row is missing: was the schema migrated?")
    row = dict(values)
    row.update(seq=head.seq + 1, occurred_at=utcnow(), prev_hash=head.row_hash)
    row["row_hash"] = row_digest(row)
    session.execute(_INSERT, row)
    session.execute(_MOVE_HEAD, {"new_seq": row["seq"], "new_hash": row["row_hash"]})
    return row


# ---- verification ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """One place where the chain is not what was written."""

    kind: Kind
    seq: int | None
    row_id: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass(kw_only=True, slots=True)
class Walk:
    """The state of a walk along the chain: the last good link and what went wrong."""

    seq: int
    row_hash: str
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    def flag(self, kind: Kind, seq: int | None, row_id: int | None, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(Problem(kind=kind, seq=seq, row_id=row_id, message=message))


@dataclass(frozen=True, kw_only=True, slots=True)
class ChainReport:
    """The outcome of `verify`: rows checked, the range, the head and every problem found."""

    checked: int
    start_seq: int
    last_seq: int
    head_seq: int
    head_hash: str
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_problem(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def walk(rows: Iterable[Row], start_seq: int, start_hash: str) -> Walk:
    """Check rows in (seq, id) order against each other, from a known link onwards."""
    state = Walk(seq=start_seq, row_hash=start_hash)
    for row in rows:
        _step(state, row)
    return state


def _step(state: Walk, row: Row) -> None:
    seq, row_id = row["seq"], row["id"]
    if seq is None or seq <= state.seq:
        state.flag("inserted", seq, row_id, f"row id {row_id} claims position {seq}, already taken")
        return  # the chain goes on from the row that held the position
    if seq > state.seq + 1:
        missing = f"{state.seq + 1}" if seq == state.seq + 2 else f"{state.seq + 1}..{seq - 1}"
        state.flag("deleted", state.seq + 1, None, f"row(s) {missing} missing before row {seq}")
    elif row["prev_hash"] != state.row_hash:
        state.flag(
            "broken",
            seq,
            row_id,
            f"row {seq} does not link to row {state.seq}: row {state.seq} was altered and"
            " re-hashed, or a row was inserted",
        )
    if row_digest(row) != row["row_hash"]:
        state.flag("altered", seq, row_id, f"row {seq} (id {row_id}) does not match its hash")
    state.seq, state.row_hash = seq, row["row_hash"]
    state.checked += 1


def latest_checkpoint(session: Session) -> tuple[int, str]:
    """(seq, hash) the chain starts from: the newest purge checkpoint, or the genesis."""
    checkpoint = session.execute(
        select(AuditCheckpoint.last_seq, AuditCheckpoint.last_hash)
        .order_by(AuditCheckpoint.last_seq.desc())
        .limit(1)
    ).one_or_none()
    return (0, GENESIS) if checkpoint is None else (checkpoint.last_seq, checkpoint.last_hash)


def chain_rows(
    session: Session, after_seq: int, upto_seq: int | None = None, batch: int = 2000
) -> Iterator[Row]:
    """Rows with seq > after_seq (and <= upto_seq), in chain order, streamed in batches."""
    columns = [getattr(AuditEvent, name) for name in ROW_FIELDS]
    query = select(*columns).where(AuditEvent.seq > after_seq)
    if upto_seq is not None:
        query = query.where(AuditEvent.seq <= upto_seq)
    result = session.execute(
        query.order_by(AuditEvent.seq, AuditEvent.id).execution_options(yield_per=batch)
    )
    for row in result:
        yield row._mapping


def verify(session: Session) -> ChainReport:
    """Walk the whole chain from the newest checkpoint and compare its end with the head."""
    start_seq, start_hash = latest_checkpoint(session)
    head = session.execute(
        select(AuditHead.seq, AuditHead.row_hash).where(AuditHead.id == HEAD_ID)
    ).one_or_none()
    if head is None:
        raise AuditChainError("the audit head row is missing: was the schema migrated?")
    state = walk(chain_rows(session, start_seq), start_seq, start_hash)
    _check_head(state, head.seq, head.row_hash)
    return ChainReport(
        checked=state.checked,
        start_seq=start_seq,
        last_seq=state.seq,
        head_seq=head.seq,
        head_hash=head.row_hash,
        problems=tuple(state.problems),
    )


def _check_head(state: Walk, head_seq: int, head_hash: str) -> None:
    if state.seq < head_seq:
        state.flag(
            "deleted",
            state.seq + 1,
            None,
            f"row(s) {state.seq + 1}..{head_seq} missing at the end (the head is at {head_seq})",
        )
    elif state.seq > head_seq:
        state.flag(
            "inserted",
            head_seq + 1,
            None,
            f"row(s) {head_seq + 1}..{state.seq} lie beyond the head ({head_seq}): added outside"
            " the audit trail",
        )
    elif state.row_hash != head_hash and not state.problems:
        state.flag("altered", state.seq, None, f"row {state.seq} does not match the head's hash")
