"""open download reservations, apart from bytes served (issue 11, item 6)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # bytes_served keeps counting reservations of downloads in flight (as before); the part of it
    # that is still open is bytes_reserved, valid until reservations_expire_at (a lease that
    # running downloads renew, so a crashed process cannot hold a file's budget forever).
    with op.batch_alter_table("files") as batch:
        batch.add_column(
            sa.Column("bytes_reserved", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("reservations_expire_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("reservations_expire_at")
        batch.drop_column("bytes_reserved")
