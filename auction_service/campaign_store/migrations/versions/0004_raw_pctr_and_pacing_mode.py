"""The model's score before calibration, beside the calibrated pCTR each filled auction priced; each
campaign's pacing mode (even, the default, or asap).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("served_auctions") as batch:
        batch.add_column(sa.Column("raw_pctr", sa.Float(), nullable=True))
    with op.batch_alter_table("campaigns") as batch:
        batch.add_column(sa.Column("pacing_mode", sa.String(8), nullable=False, server_default="even"))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as batch:
        batch.drop_column("pacing_mode")
    with op.batch_alter_table("served_auctions") as batch:
        batch.drop_column("raw_pctr")
