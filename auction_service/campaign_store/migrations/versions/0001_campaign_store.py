"""Campaign store: campaigns, applied instructions, spend ledger, daily spend, quarantined instructions.

Revision ID: 0001
Revises:
Create Date: 2026-01-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# UTC-aware on PostgreSQL (timestamptz); SQLite stores naive UTC (auction_service.campaign_store.tables.UtcDateTime).
UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("advertiser_id", sa.String(64), nullable=False),
        sa.Column("ad_id", sa.String(64), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("targeting", sa.JSON(), nullable=False),
        sa.Column("pricing_model", sa.String(8), nullable=False),
        sa.Column("bid_micros", sa.BigInteger(), nullable=False),
        sa.Column("total_budget_micros", sa.BigInteger(), nullable=False),
        sa.Column("daily_budget_micros", sa.BigInteger(), nullable=False),
        sa.Column("flight_start", UTC_DATETIME, nullable=False),
        sa.Column("flight_end", UTC_DATETIME, nullable=False),
        sa.Column("frequency_cap_per_day", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spent_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("revision", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.Column("last_instruction_id", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", name=op.f("pk_campaigns")),
    )
    op.create_index(op.f("ix_campaigns_advertiser_id"), "campaigns", ["advertiser_id"])
    op.create_index(op.f("ix_campaigns_status"), "campaigns", ["status"])

    op.create_table(
        "applied_instructions",
        sa.Column("instruction_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("applied_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("instruction_id", name=op.f("pk_applied_instructions")),
    )
    op.create_index(op.f("ix_applied_instructions_campaign_id"), "applied_instructions", ["campaign_id"])

    op.create_table(
        "spend_ledger",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("auction_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("event_time", UTC_DATETIME, nullable=False),
        sa.Column("recorded_at", UTC_DATETIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.campaign_id"], name=op.f("fk_spend_ledger_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_spend_ledger")),
    )
    op.create_index(op.f("ix_spend_ledger_auction_id"), "spend_ledger", ["auction_id"])
    op.create_index(op.f("ix_spend_ledger_campaign_id"), "spend_ledger", ["campaign_id"])
    op.create_index(op.f("ix_spend_ledger_event_time"), "spend_ledger", ["event_time"])

    op.create_table(
        "daily_spend",
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("spent_micros", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.campaign_id"], name=op.f("fk_daily_spend_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("campaign_id", "day", name=op.f("pk_daily_spend")),
    )

    op.create_table(
        "quarantined_instructions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("raw_value", sa.LargeBinary(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("quarantined_at", UTC_DATETIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantined_instructions")),
        sa.UniqueConstraint(
            "topic", "partition", "offset", name=op.f("uq_quarantined_instructions_topic_partition_offset")
        ),
    )


def downgrade() -> None:
    op.drop_table("quarantined_instructions")
    op.drop_table("daily_spend")
    op.drop_index(op.f("ix_spend_ledger_event_time"), table_name="spend_ledger")
    op.drop_index(op.f("ix_spend_ledger_campaign_id"), table_name="spend_ledger")
    op.drop_index(op.f("ix_spend_ledger_auction_id"), table_name="spend_ledger")
    op.drop_table("spend_ledger")
    op.drop_index(op.f("ix_applied_instructions_campaign_id"), table_name="applied_instructions")
    op.drop_table("applied_instructions")
    op.drop_index(op.f("ix_campaigns_status"), table_name="campaigns")
    op.drop_index(op.f("ix_campaigns_advertiser_id"), table_name="campaigns")
    op.drop_table("campaigns")
