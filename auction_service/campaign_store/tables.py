"""The campaign store's tables (SQLAlchemy 2.0 typed ORM). Money is integer micros, never a float.

Only the modules of ``auction_service.campaign_store`` (``store``, ``journal``, ``callers``) query them;
the migrations in ``auction_service/campaign_store/migrations`` create them, and a test checks the two agree.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names, so the handwritten migrations and the ORM name them the same way.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as
    naive UTC and come back aware. A naive value is refused rather than guessed.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the campaign store keeps UTC-aware times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Campaign(Base):
    __tablename__ = "campaigns"

    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    advertiser_id: Mapped[str] = mapped_column(String(64), index=True)
    ad_id: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    targeting: Mapped[dict[str, Any]] = mapped_column(JSON)
    pricing_model: Mapped[str] = mapped_column(String(8))
    bid_micros: Mapped[int] = mapped_column(BigInteger)
    total_budget_micros: Mapped[int] = mapped_column(BigInteger)
    daily_budget_micros: Mapped[int] = mapped_column(BigInteger)
    flight_start: Mapped[datetime] = mapped_column(UtcDateTime)
    flight_end: Mapped[datetime] = mapped_column(UtcDateTime)
    frequency_cap_per_day: Mapped[int] = mapped_column(Integer)
    currency: Mapped[str] = mapped_column(String(3))
    pacing_mode: Mapped[str] = mapped_column(String(8), default="even", server_default="even")
    goals: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # CampaignGoals; None: the defaults
    creative: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # Creative; None: the defaults
    deals: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)  # [Deal]; None: none
    status: Mapped[str] = mapped_column(String(16), index=True)
    spent_micros: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # +1 on every change (instruction or spend): the sum over campaigns is the store's change marker.
    revision: Mapped[int] = mapped_column(BigInteger, default=1, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_instruction_id: Mapped[str] = mapped_column(String(64))


class AppliedInstruction(Base):
    """Every instruction the ad manager applied, so a replayed instruction_id is a no-op."""

    __tablename__ = "applied_instructions"

    instruction_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # No foreign key: a stop for an unknown campaign is recorded too, so it is not retried forever.
    campaign_id: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(32))
    applied_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SpendLedgerEntry(Base):
    """One billable event, charged once: the primary key on event_id is what makes a replay free."""

    __tablename__ = "spend_ledger"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Unique: an auction is billed at most once (its one billable event), whatever event ids a client sends.
    auction_id: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.campaign_id"), index=True)
    event_type: Mapped[str] = mapped_column(String(32))
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    event_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ServedAuction(Base):
    """A filled auction, kept so its events can be validated and priced (written behind, in batches)."""

    __tablename__ = "served_auctions"

    auction_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.campaign_id"), index=True)
    advertiser_id: Mapped[str] = mapped_column(String(64))
    ad_id: Mapped[str] = mapped_column(String(64))
    pricing_model: Mapped[str] = mapped_column(String(8))
    clearing_price_micros: Mapped[int] = mapped_column(BigInteger)
    billable_cost_micros: Mapped[int] = mapped_column(BigInteger)
    reserved_micros: Mapped[int] = mapped_column(BigInteger)
    pctr: Mapped[float] = mapped_column(Float)
    user_id: Mapped[str | None] = mapped_column(String(64))
    device_type: Mapped[str | None] = mapped_column(String(16))
    channel: Mapped[str | None] = mapped_column(String(8))
    content_type: Mapped[str | None] = mapped_column(String(8))
    model_version: Mapped[str] = mapped_column(String(32))
    publisher_id: Mapped[str | None] = mapped_column(String(64))
    raw_pctr: Mapped[float | None] = mapped_column(Float)
    served_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DailySpend(Base):
    """Spend per campaign and UTC day of the event, kept in the same transaction as the ledger."""

    __tablename__ = "daily_spend"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.campaign_id"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    spent_micros: Mapped[int] = mapped_column(BigInteger)


class QuarantinedInstruction(Base):
    """A campaign-instructions record the ad manager could not apply, with why and where it came from."""

    __tablename__ = "quarantined_instructions"
    # A record replayed after a crash is quarantined once.
    __table_args__ = (UniqueConstraint("topic", "partition", "offset"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    topic: Mapped[str] = mapped_column(String(255))
    partition: Mapped[int] = mapped_column(Integer)
    offset: Mapped[int] = mapped_column(BigInteger)
    key: Mapped[bytes | None] = mapped_column(LargeBinary)
    raw_value: Mapped[bytes | None] = mapped_column(LargeBinary)
    reason: Mapped[str] = mapped_column(Text)
    quarantined_at: Mapped[datetime] = mapped_column(UtcDateTime)


class FeedbackJournal(Base):
    """Every accepted event, as published to ``ad-feedback``: the outbox that keeps the ledger and the lake equal.

    Written in the same transaction as the event's charge (``spend_ledger``), with the time it
    was first seen; a relay publishes the rows whose ``published_at`` is still empty, so an
    event charged by a service that then died is published all the same, and a retry of an
    event_id, at any delay, finds its row and charges and publishes nothing new.
    """

    __tablename__ = "feedback_journal"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    auction_id: Mapped[str] = mapped_column(String(64), index=True)
    campaign_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(32))
    event_time: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    charge_status: Mapped[str] = mapped_column(String(32))
    cost_micros: Mapped[int] = mapped_column(BigInteger)
    ivt_category: Mapped[str | None] = mapped_column(String(8))
    payload: Mapped[str] = mapped_column(Text)  # the FeedbackEvent's JSON, byte for byte what is published
    published_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)


class ApiKey(Base):
    """A publisher's or exchange's key for the auction endpoints, with the policy its requests get.

    Only the SHA-256 of the secret is kept; the secret is shown once, when the key is made.
    """

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    caller_id: Mapped[str] = mapped_column(String(64), index=True)  # the publisher or exchange
    kind: Mapped[str] = mapped_column(String(16))  # "publisher" or "exchange"
    secret_sha256: Mapped[str] = mapped_column(String(64))
    max_floor_cpm_micros: Mapped[int] = mapped_column(BigInteger)  # a higher floor in a request is capped here
    first_price_allowed: Mapped[bool] = mapped_column(Boolean)  # else OpenRTB at=1 is refused
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
