"""cloud push tracking and last access, for the reconciler and LRU eviction

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("cloud_updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("cloud_attempts", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("last_accessed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("last_accessed_at")
        batch.drop_column("cloud_attempts")
        batch.drop_column("cloud_updated_at")
