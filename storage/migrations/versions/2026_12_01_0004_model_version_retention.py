"""Retention of model versions: model_versions.pinned_at / pin_reason (kept by every policy) and
pruned_at (the version's tensors were removed by the retention policy; the row, its metrics and its
lineage stay). NULL = not pinned / not pruned.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("pinned_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("pin_reason", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("pruned_at", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("pruned_at")
        batch.drop_column("pin_reason")
        batch.drop_column("pinned_at")
