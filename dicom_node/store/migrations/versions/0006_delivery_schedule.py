"""deliveries: the retry schedule, the sending lane's lease and storage commitment;
notifications: the outbox of critical-finding notifications

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicom_node.store.schema

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _time(name: str) -> sa.Column[object]:
    return sa.Column(name, dicom_node.store.schema.UTCDateTime(), nullable=True)


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(_time("due_at"))
        batch.add_column(_time("first_failed_at"))
        batch.add_column(sa.Column("lease_owner", sa.String(128), nullable=True))
        batch.add_column(_time("lease_expires_at"))
        batch.add_column(sa.Column("commitment_uid", sa.String(64), nullable=True))
        batch.add_column(_time("committed_at"))
    op.create_index("ix_deliveries_due", "deliveries", ["destination_ae", "state", "due_at"])
    op.create_index("ix_deliveries_commitment_uid", "deliveries", ["commitment_uid"])
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("sr_sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", dicom_node.store.schema.UTCDateTime(), nullable=False),
        sa.Column("updated_at", dicom_node.store.schema.UTCDateTime(), nullable=False),
        _time("due_at"),
    )
    op.create_index("ix_notifications_job_id", "notifications", ["job_id"])
    op.create_index("ix_notifications_study_instance_uid", "notifications", ["study_instance_uid"])
    op.create_index("ix_notifications_state", "notifications", ["state"])
    op.create_index(
        "ix_notifications_version", "notifications", ["sr_sop_instance_uid", "kind"], unique=True
    )


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_index("ix_deliveries_commitment_uid", "deliveries")
    op.drop_index("ix_deliveries_due", "deliveries")
    with op.batch_alter_table("deliveries") as batch:
        names = ("committed_at", "commitment_uid", "lease_expires_at", "lease_owner")
        for name in (*names, "first_failed_at", "due_at"):
            batch.drop_column(name)
