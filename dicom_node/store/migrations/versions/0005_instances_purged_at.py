"""instances.purged_at: when the spool retention policy removed an instance's file

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import dicom_node.store.schema

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(
            sa.Column("purged_at", dicom_node.store.schema.UTCDateTime(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("purged_at")
