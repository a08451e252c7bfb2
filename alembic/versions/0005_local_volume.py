"""the media volume that holds a file's local copy (issue 11, item 4)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows stay NULL (volume unknown): the sweep does not judge their local copies.
    with op.batch_alter_table("files") as batch:
        batch.add_column(sa.Column("volume", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch:
        batch.drop_column("volume")
