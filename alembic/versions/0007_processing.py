"""what the transcode job made of a file and how far it got (issue 16)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows stay NULL: nothing to make (the reconciler does not transcode old files).
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("processing", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("processing_state", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("processing_updated_at", sa.DateTime(timezone=True), nullable=True)
        )
    op.create_index("ix_files_processing_state", "files", ["processing_state"])


def downgrade() -> None:
    op.drop_index("ix_files_processing_state", table_name="files")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("processing_updated_at")
        batch.drop_column("processing_state")
        batch.drop_column("processing")
