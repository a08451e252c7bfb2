"""resumable uploads: a row per upload under way (issue 14)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "uploads",
        sa.Column("uid", sa.String(32), primary_key=True),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("length", sa.BigInteger, nullable=True),
        sa.Column("hash_state", sa.LargeBinary, nullable=False),
        sa.Column("hash_start", sa.LargeBinary, nullable=False),
        sa.Column("metadata_header", sa.Text, nullable=True),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("concat", sa.String(8), nullable=True),
        sa.Column("parts", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("generation", sa.Integer, nullable=False),
    )
    op.create_index("ix_uploads_expires_at", "uploads", ["expires_at"])
    op.create_index("ix_uploads_owner_completed", "uploads", ["owner", "concat", "completed_at"])


def downgrade() -> None:
    op.drop_index("ix_uploads_owner_completed", "uploads")
    op.drop_index("ix_uploads_expires_at", "uploads")
    op.drop_table("uploads")
