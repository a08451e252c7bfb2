"""media facts, probe state, preview and faststart remux link (issue 7)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows start "pending": the reconciler probes them in batches (a backfill).
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("media", sa.JSON(), nullable=True))
        batch.add_column(
            sa.Column("probe_status", sa.String(16), nullable=False, server_default="pending")
        )
        batch.add_column(sa.Column("probe_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("probe_updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("preview_path", sa.Text(), nullable=True))
        batch.add_column(sa.Column("faststart_uid", sa.String(32), nullable=True))
        batch.create_index("ix_files_probe_status", ["probe_status"])
        batch.create_index("ix_files_derived_from", ["derived_from"])


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_index("ix_files_derived_from")
        batch.drop_index("ix_files_probe_status")
        batch.drop_column("faststart_uid")
        batch.drop_column("preview_path")
        batch.drop_column("probe_updated_at")
        batch.drop_column("probe_error")
        batch.drop_column("probe_status")
        batch.drop_column("media")
