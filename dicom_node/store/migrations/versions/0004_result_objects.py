"""result_objects: every SR, SC and KOS the node emitted (numbering, reuse, retraction);
jobs.reason; instances.pixels_kept

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.drop_index("ix_reports_job_id")
        batch.drop_index("ix_reports_study_instance_uid")
    op.rename_table("reports", "result_objects")
    with op.batch_alter_table("result_objects") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=8), nullable=False, server_default="sr"))
        batch.add_column(
            sa.Column("instance_number", sa.Integer(), nullable=False, server_default="1")
        )
        batch.add_column(sa.Column("retracted_by", sa.String(length=64), nullable=True))
        batch.alter_column("content_digest", existing_type=sa.String(length=64), nullable=True)
        batch.create_index("ix_result_objects_job_id", ["job_id"], unique=False)
        batch.create_index("ix_result_objects_study_instance_uid", ["study_instance_uid"])
        batch.create_index("ix_result_objects_series", ["series_instance_uid"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("reason", sa.String(length=16), nullable=False, server_default="received")
        )
    with op.batch_alter_table("instances") as batch:
        batch.add_column(
            sa.Column("pixels_kept", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("pixels_kept")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("reason")
    with op.batch_alter_table("result_objects") as batch:
        batch.drop_index("ix_result_objects_series")
        batch.drop_index("ix_result_objects_study_instance_uid")
        batch.drop_index("ix_result_objects_job_id")
        batch.drop_column("retracted_by")
        batch.drop_column("instance_number")
        batch.drop_column("kind")
    op.rename_table("result_objects", "reports")
    with op.batch_alter_table("reports") as batch:
        batch.create_index("ix_reports_job_id", ["job_id"], unique=False)
        batch.create_index("ix_reports_study_instance_uid", ["study_instance_uid"], unique=False)
