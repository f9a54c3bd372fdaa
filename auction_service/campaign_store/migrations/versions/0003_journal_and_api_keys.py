"""The feedback journal (the outbox of ad-feedback), API keys of auction callers, the auction's publisher.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "feedback_journal",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("auction_id", sa.String(64), nullable=False),
        sa.Column("campaign_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("event_time", UTC_DATETIME, nullable=False),
        sa.Column("recorded_at", UTC_DATETIME, nullable=False),
        sa.Column("charge_status", sa.String(32), nullable=False),
        sa.Column("cost_micros", sa.BigInteger(), nullable=False),
        sa.Column("ivt_category", sa.String(8), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("published_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_feedback_journal")),
    )
    op.create_index(op.f("ix_feedback_journal_auction_id"), "feedback_journal", ["auction_id"])
    op.create_index(op.f("ix_feedback_journal_published_at"), "feedback_journal", ["published_at"])
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("caller_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("max_floor_cpm_micros", sa.BigInteger(), nullable=False),
        sa.Column("first_price_allowed", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("revoked_at", UTC_DATETIME, nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_caller_id"), "api_keys", ["caller_id"])
    with op.batch_alter_table("served_auctions") as batch:
        batch.add_column(sa.Column("publisher_id", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("served_auctions") as batch:
        batch.drop_column("publisher_id")
    op.drop_index(op.f("ix_api_keys_caller_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index(op.f("ix_feedback_journal_published_at"), table_name="feedback_journal")
    op.drop_index(op.f("ix_feedback_journal_auction_id"), table_name="feedback_journal")
    op.drop_table("feedback_journal")
