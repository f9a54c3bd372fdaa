"""Served auctions (for validating and pricing events), and at most one charge per auction.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "served_auctions",
        sa.Column("auction_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("advertiser_id", sa.String(64), nullable=False),
        sa.Column("ad_id", sa.String(64), nullable=False),
        sa.Column("pricing_model", sa.String(8), nullable=False),
        sa.Column("clearing_price_micros", sa.BigInteger(), nullable=False),
        sa.Column("billable_cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("reserved_micros", sa.BigInteger(), nullable=False),
        sa.Column("pctr", sa.Float(), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("device_type", sa.String(16), nullable=True),
        sa.Column("channel", sa.String(8), nullable=True),
        sa.Column("content_type", sa.String(8), nullable=True),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("served_at", UTC_DATETIME, nullable=False),
        sa.Column("expires_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.campaign_id"], name=op.f("fk_served_auctions_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("auction_id", name=op.f("pk_served_auctions")),
    )
    op.create_index(op.f("ix_served_auctions_campaign_id"), "served_auctions", ["campaign_id"])
    op.create_index(op.f("ix_served_auctions_served_at"), "served_auctions", ["served_at"])
    # One charge per auction: the plain index on spend_ledger.auction_id becomes unique.
    with op.batch_alter_table("spend_ledger") as batch:
        batch.drop_index("ix_spend_ledger_auction_id")
        batch.create_index("ix_spend_ledger_auction_id", ["auction_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("spend_ledger") as batch:
        batch.drop_index("ix_spend_ledger_auction_id")
        batch.create_index("ix_spend_ledger_auction_id", ["auction_id"])
    op.drop_index(op.f("ix_served_auctions_served_at"), table_name="served_auctions")
    op.drop_index(op.f("ix_served_auctions_campaign_id"), table_name="served_auctions")
    op.drop_table("served_auctions")
