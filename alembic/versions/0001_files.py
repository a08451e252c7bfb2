"""files: one row per file, kept as a tombstone once the file is gone

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("uid", sa.String(32), primary_key=True),
        sa.Column("original_name", sa.Text(), nullable=True),
        sa.Column("extension", sa.String(255), nullable=True),
        sa.Column("format", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_downloads", sa.Integer(), nullable=True),
        sa.Column("bytes_served", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("local", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("cloud_status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("cloud_path", sa.Text(), nullable=True),
        sa.Column("cloud_error", sa.Text(), nullable=True),
        sa.Column("delete_token_hash", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("derived_from", sa.String(32), nullable=True),
        sa.Column("gone_reason", sa.String(16), nullable=True),
        sa.Column("gone_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_files_live_created",
        "files",
        ["created_at", "uid"],
        postgresql_where=sa.text("gone_reason IS NULL"),
        sqlite_where=sa.text("gone_reason IS NULL"),
    )
    op.create_index("ix_files_cloud_status", "files", ["cloud_status"])
    op.create_index("ix_files_expires_at", "files", ["expires_at"])


def downgrade() -> None:
    op.drop_table("files")
