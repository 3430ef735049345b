"""result_objects.model_name: the model whose result an SR or SC states (several models per node)

Existing SRs and SCs take the model name of their job's findings; rows without any (rejection
notes, the SR of a failed analysis) keep none.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 20:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("result_objects") as batch:
        batch.add_column(sa.Column("model_name", sa.String(128), nullable=True))
    op.execute(
        "UPDATE result_objects SET model_name = (SELECT MIN(results.model_name) FROM results "
        "WHERE results.job_id = result_objects.job_id) WHERE kind IN ('sr', 'sc')"
    )


def downgrade() -> None:
    with op.batch_alter_table("result_objects") as batch:
        batch.drop_column("model_name")
