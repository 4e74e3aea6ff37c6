"""Secure aggregation's round protocol state: secagg_rounds (phase, graph seed, survivors/dropped),
secagg_sites (each selected site's index and advertised keys) and secagg_shares (sealed share boxes
relayed between sites, and the one share each holder revealed). docs/decisions.md 35.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "secagg_rounds",
        sa.Column("round_id", sa.String(length=64), nullable=False),
        sa.Column("phase", sa.String(length=32), nullable=False),
        sa.Column("phase_started_at", sa.Float(), nullable=False),
        sa.Column("num_sites", sa.Integer(), nullable=False),
        sa.Column("graph_seed", sa.LargeBinary(), nullable=True),
        sa.Column("survivors", sa.JSON(), nullable=False),
        sa.Column("dropped", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], name="fk_secagg_rounds_round_id_rounds"),
        sa.PrimaryKeyConstraint("round_id", name="pk_secagg_rounds"),
    )
    op.create_table(
        "secagg_sites",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("round_id", sa.String(length=64), nullable=False),
        sa.Column("site_index", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("cipher_key", sa.LargeBinary(), nullable=True),
        sa.Column("mask_key", sa.LargeBinary(), nullable=True),
        sa.Column("seed_commitment", sa.LargeBinary(), nullable=True),
        sa.Column("shared_at", sa.Float(), nullable=True),
        sa.Column("revealed_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], name="fk_secagg_sites_round_id_rounds"),
        sa.ForeignKeyConstraint(["site_id"], ["sites.id"], name="fk_secagg_sites_site_id_sites"),
        sa.PrimaryKeyConstraint("id", name="pk_secagg_sites"),
        sa.UniqueConstraint("round_id", "site_index", name="uq_secagg_sites_round_id_site_index"),
    )
    op.create_index("ix_secagg_sites_round_id", "secagg_sites", ["round_id"])
    op.create_table(
        "secagg_shares",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("round_id", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.Integer(), nullable=False),
        sa.Column("holder", sa.Integer(), nullable=False),
        sa.Column("box", sa.LargeBinary(), nullable=False),
        sa.Column("revealed_kind", sa.String(length=16), nullable=True),
        sa.Column("revealed_x", sa.Integer(), nullable=True),
        sa.Column("revealed_share", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["round_id"], ["rounds.id"], name="fk_secagg_shares_round_id_rounds"),
        sa.PrimaryKeyConstraint("id", name="pk_secagg_shares"),
        sa.UniqueConstraint("round_id", "owner", "holder", name="uq_secagg_shares_round_id_owner_holder"),
    )
    op.create_index("ix_secagg_shares_round_id", "secagg_shares", ["round_id"])


def downgrade() -> None:
    op.drop_index("ix_secagg_shares_round_id", table_name="secagg_shares")
    op.drop_table("secagg_shares")
    op.drop_index("ix_secagg_sites_round_id", table_name="secagg_sites")
    op.drop_table("secagg_sites")
    op.drop_table("secagg_rounds")
