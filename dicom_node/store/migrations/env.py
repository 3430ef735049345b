"""Alembic environment: runs on the connection handed in by
`dicom_node.store.schema.upgrade_schema`, or on `sqlalchemy.url` when called from the alembic
command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from dicom_node.store.schema import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(
        config.get_main_option("sqlalchemy.url") or "sqlite:///var/dicom-node.db"
    )
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
