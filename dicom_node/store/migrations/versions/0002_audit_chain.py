"""audit trail: DICOM event codes, hash chain, head, purge checkpoints, append-only triggers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 02:30:00

Existing rows get their DICOM codes and are chained in id order. On PostgreSQL a trigger refuses
UPDATE, DELETE and TRUNCATE on audit_events, except a DELETE of rows a purge checkpoint covers
inside a transaction that set `SET LOCAL dicom_node.audit_purge = 'on'`. SQLite gets triggers
with the same effect (a DELETE is allowed only for rows a checkpoint covers).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

import dicom_node.store.schema
from dicom_node.audit.chain import GENESIS, row_digest
from dicom_node.audit.codes import describe

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("seq", sa.BigInteger()),
    ("event_id", sa.String(length=16)),
    ("event_action", sa.String(length=1)),
    ("outcome_code", sa.Integer()),
    ("user_id", sa.String(length=255)),
    ("sop_class_counts", sa.Text()),
    ("prev_hash", sa.String(length=64)),
    ("row_hash", sa.String(length=64)),
)
OLD_COLUMNS = (
    "id",
    "event_type",
    "outcome",
    "calling_ae",
    "called_ae",
    "peer_address",
    "process",
    "patient_id",
    "study_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "job_id",
    "model",
    "detail",
)
REQUIRED = ("seq", "event_id", "event_action", "outcome_code", "prev_hash", "row_hash")
NEW_INDEXES = (
    ("ix_audit_seq", ["seq"], True),
    ("ix_audit_patient", ["patient_id"], False),
    ("ix_audit_time", ["occurred_at"], False),
    ("ix_audit_calling_ae", ["calling_ae"], False),
)

POSTGRES_GUARD = """
CREATE OR REPLACE FUNCTION dicom_node_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF current_setting('dicom_node.audit_purge', true) = 'on'
           AND OLD.seq <= (SELECT coalesce(max(last_seq), 0) FROM audit_checkpoints) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'old rows leave only through dicom-node audit purge';
END
$$
"""
POSTGRES_REFUSE = """
CREATE OR REPLACE FUNCTION dicom_node_audit_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$
"""
POSTGRES_TRIGGERS = (
    "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events"
    " FOR EACH ROW EXECUTE FUNCTION dicom_node_audit_append_only()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events"
    " FOR EACH STATEMENT EXECUTE FUNCTION dicom_node_audit_append_only()",
    "CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints"
    " FOR EACH ROW EXECUTE FUNCTION dicom_node_audit_refuse()",
    "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints"
    " FOR EACH STATEMENT EXECUTE FUNCTION dicom_node_audit_refuse()",
)
SQLITE_TRIGGERS = (
    """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
    WHEN OLD.seq > (SELECT coalesce(max(last_seq), 0) FROM audit_checkpoints)
    BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused'); END""",
    """CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only: UPDATE refused'); END""",
    """CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
    BEGIN SELECT RAISE(ABORT, 'audit_checkpoints is append-only: DELETE refused'); END""",
)
TRIGGER_NAMES = {
    "audit_events": (
        "audit_events_append_only",
        "audit_events_no_truncate",
        "audit_events_no_update",
        "audit_events_no_delete",
    ),
    "audit_checkpoints": (
        "audit_checkpoints_append_only",
        "audit_checkpoints_no_truncate",
        "audit_checkpoints_no_update",
        "audit_checkpoints_no_delete",
    ),
}


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        for name, kind in NEW_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    head_seq, head_hash = _chain_existing_rows()
    with op.batch_alter_table("audit_events") as batch:
        for name in REQUIRED:
            batch.alter_column(name, existing_type=dict(NEW_COLUMNS)[name], nullable=False)
        for name, columns, unique in NEW_INDEXES:
            batch.create_index(name, columns, unique=unique)
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("row_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(
        sa.table("audit_head", sa.column("id"), sa.column("seq"), sa.column("row_hash")),
        [{"id": 1, "seq": head_seq, "row_hash": head_hash}],
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("created_at", dicom_node.store.schema.UTCDateTime(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("purged_rows", sa.BigInteger(), nullable=False),
        sa.Column("cutoff", dicom_node.store.schema.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    _create_guards()


def _chain_existing_rows() -> tuple[int, str]:
    """Give rows written before this revision their codes and chain them in id order."""
    table = sa.table(
        "audit_events",
        sa.column("occurred_at", dicom_node.store.schema.UTCDateTime()),
        *(sa.column(name) for name in OLD_COLUMNS),
        *(sa.column(name) for name, _ in NEW_COLUMNS),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(table).order_by(table.c.id)).mappings().all()
    seq, prev = 0, GENESIS
    for row in rows:
        seq += 1
        event_id, action, code = describe(row["event_type"], row["outcome"])
        values = dict(row) | {
            "seq": seq,
            "event_id": event_id,
            "event_action": action,
            "outcome_code": code,
            "prev_hash": prev,
        }
        values["row_hash"] = prev = row_digest(values)
        changed = {name: values[name] for name, _ in NEW_COLUMNS}
        connection.execute(sa.update(table).where(table.c.id == row["id"]).values(**changed))
    return seq, prev


def _create_guards() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRES_GUARD)
        op.execute(POSTGRES_REFUSE)
        for statement in POSTGRES_TRIGGERS:
            op.execute(statement)
    elif op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, names in TRIGGER_NAMES.items():
        for name in names:
            op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgres else ""))
    if postgres:
        op.execute("DROP FUNCTION IF EXISTS dicom_node_audit_append_only()")
        op.execute("DROP FUNCTION IF EXISTS dicom_node_audit_refuse()")
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_head")
    with op.batch_alter_table("audit_events") as batch:
        for name, _, _ in NEW_INDEXES:
            batch.drop_index(name)
        for name, _ in reversed(NEW_COLUMNS):
            batch.drop_column(name)
