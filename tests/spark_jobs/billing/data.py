"""One hour of billing data worked out by hand (hour 10:00-11:00 on 2026-11-24), and helpers that write it.

Every expected figure is worked out by hand from the events listed in ``HOUR_10``. Silver rows are
written with delta-rs and the campaign store with its own functions: no Spark job is spent on test data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from adstream.contracts import Table
from adstream.events import AuctionRecord, CampaignInstruction, CampaignSpec, FeedbackEvent, spark_ddl
from adstream.settings import Settings
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from tests.conftest import make_settings

H = datetime(2026, 11, 24, 10, tzinfo=UTC)  # the hour under test: [10:00, 11:00)
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
BILLED_TYPE = {"CPM": "impression", "CPC": "click", "CPA": "conversion"}


@dataclass(frozen=True)
class Campaign:
    advertiser_id: str
    pricing_model: str
    clearing_price_micros: int
    cost_micros: int  # of its billable event, by hand: CPM 1,234,567 per mille -> 1234.567 -> 1235
    budget_micros: int


CAMPAIGNS = {
    "cmp-cpm": Campaign("adv-north", "CPM", 1_234_567, 1_235, 10_000_000),
    "cmp-cpc": Campaign("adv-north", "CPC", 310_000, 310_000, 50_000_000),
    "cmp-cpa": Campaign("adv-south", "CPA", 5_000_000, 5_000_000, 100_000_000),
}


def at(hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2026, 11, 24, hh, mm, ss, tzinfo=UTC)


# auction_id -> (campaign, auction time)
AUCTIONS = {
    "a1": ("cmp-cpm", at(10, 4)), "a2": ("cmp-cpm", at(10, 9)), "a3": ("cmp-cpm", at(10, 19)),
    "b1": ("cmp-cpc", at(9, 59, 30)), "b2": ("cmp-cpc", at(10, 29)), "b3": ("cmp-cpc", at(10, 58)),
    "b4": ("cmp-cpc", at(9, 58)), "b5": ("cmp-cpc", at(9, 48)), "b6": ("cmp-cpc", at(11, 9)),
    "b7": ("cmp-cpc", at(10, 40)), "b8": ("cmp-cpc", at(10, 43)), "b9": ("cmp-cpc", at(10, 37)),
    "c1": ("cmp-cpa", at(10, 14)),
}  # fmt: skip
# Fields of the auction service's newer records: the ledger's decision and the invalid-traffic tag.
PUB = {"publisher_id": "pub-a"}
SPAMMER = {**PUB, "user_id": "u-spam"}
SIVT = {**SPAMMER, "charge_status": "charged", "ivt_category": "sivt", "ivt_reason": "user_click_rate"}
GIVT = {**PUB, "charge_status": "invalid_traffic", "ivt_category": "givt", "ivt_reason": "known_bot_ua"}

# (event_id, auction_id, event_type, time[, fields]); a repeated tuple is a duplicate delivery of one event.
# Events without fields are records from before charge_status existed: a cost means charged.
HOUR_10 = [
    ("e01", "a1", "impression", at(10, 5)), ("e01", "a1", "impression", at(10, 5)),
    ("e02", "a2", "impression", at(10, 10)),
    ("e03", "a2", "impression", at(10, 11)),  # a second billable event of a2: not charged again
    ("e04", "a3", "impression", at(10, 20)),
    ("e05", "a1", "click", at(10, 6)),  # not billable for CPM
    ("f01", "b1", "impression", at(10, 0)),  # the hour's first instant belongs to it
    ("f02", "b1", "click", at(10, 2)),
    ("f03", "b2", "impression", at(10, 30)),
    ("f04", "b2", "click", at(10, 31)), ("f04", "b2", "click", at(10, 31)),
    ("f12", "b2", "video_start", at(10, 30, 30)),
    ("f05", "b3", "impression", at(10, 59, 59)),
    ("f06", "b3", "click", at(11, 0)),  # the next hour
    ("f07", "b4", "impression", at(9, 59)),  # shown in the previous hour ...
    ("f08", "b4", "click", at(10, 1)),  # ... clicked and charged in this one
    ("f09", "b5", "impression", at(9, 49)),
    ("f10", "b5", "click", at(9, 50)),  # charged in the previous hour ...
    ("f11", "b5", "click", at(10, 5)),  # ... so this click of the same auction is not charged
    ("g01", "c1", "impression", at(10, 15)),
    ("g02", "c1", "click", at(10, 16)),
    ("g03", "c1", "conversion", at(10, 40)),
    ("g04", "c1", "conversion", at(10, 45)),  # a second conversion of c1: not charged again
    ("f13", "b7", "impression", at(10, 41), {**PUB, "charge_status": "not_billable"}),
    ("f14", "b7", "click", at(10, 42), SIVT),  # charged by the ledger, tagged SIVT by the stream: credited
    ("f15", "b8", "impression", at(10, 44), GIVT),  # GIVT: not counted, never charged
    ("f16", "b8", "click", at(10, 45), GIVT),
    ("f17", "b2", "click", at(10, 32), {**PUB, "charge_status": "duplicate_auction"}),  # refused: not counted
    # f14's user is a click-rate outlier: its events less than IVT_SIVT_WINDOW_S (300 s) from f14 are its burst,
    # tagged by billing (f18, f19: the click charged, credited); f20, 300 s after, is not.
    ("f18", "b9", "impression", at(10, 37, 30), SPAMMER),
    ("f19", "b9", "click", at(10, 38), SPAMMER),
    ("f20", "b9", "video_start", at(10, 47), SPAMMER),
]  # fmt: skip
# Moves the stream's watermark to 11:05: the hour end plus the IVT review (IVT_SIVT_WINDOW_S).
LATE = [("h01", "b6", "impression", at(11, 15))]

# campaign: gross spend (the ledger's), IVT credit events and micros (f14 SIVT and f19 in its burst, after their charge)
EXPECTED_CREDIT = {"cmp-cpm": (3_705, 0, 0), "cmp-cpc": (1_550_000, 2, 620_000), "cmp-cpa": (5_000_000, 0, 0)}
EXPECTED_HOUR_10 = {
    # campaign: impressions, clicks, conversions, billable events, spend micros, spend, ctr, ecpm, effective cpc,
    #           ledger spend before 11:00, budget remaining
    "cmp-cpm": (3, 1, 0, 3, 3_705, "0.003705", "0.333333", "1.235000", "0.003705", 3_705, "9.996295"),
    "cmp-cpc": (4, 4, 0, 3, 930_000, "0.930000", "1.000000", "232.500000", "0.232500", 1_860_000, "48.140000"),
    "cmp-cpa": (1, 1, 1, 1, 5_000_000, "5.000000", "1.000000", "5000.000000", "5.000000", 5_000_000, "95.000000"),
}


def feedback_row(event_id: str, auction_id: str, event_type: str, moment: datetime, fields: dict | None = None) -> dict:
    campaign_id = AUCTIONS[auction_id][0]
    campaign = CAMPAIGNS[campaign_id]
    fields = fields or {}
    billable = BILLED_TYPE[campaign.pricing_model] == event_type and fields.get("charge_status", "charged") == "charged"
    return FeedbackEvent(
        event_id=event_id, event_type=event_type, event_time=moment, auction_id=auction_id, campaign_id=campaign_id,
        advertiser_id=campaign.advertiser_id, ad_id=f"ad-{campaign_id}", pricing_model=campaign.pricing_model,
        cost_micros=campaign.cost_micros if billable else 0, **fields,
    ).model_dump()  # fmt: skip


def auction_row(auction_id: str, clearing_price_micros: int | None = None) -> dict:
    campaign_id, moment = AUCTIONS[auction_id]
    campaign = CAMPAIGNS[campaign_id]
    return AuctionRecord(
        auction_id=auction_id, event_time=moment, floor_micros=10_000, candidate_count=2, filled=True,
        campaign_id=campaign_id, advertiser_id=campaign.advertiser_id, ad_id=f"ad-{campaign_id}",
        pricing_model=campaign.pricing_model, bid_micros=campaign.clearing_price_micros * 2,
        clearing_price_micros=clearing_price_micros or campaign.clearing_price_micros, latency_ms=1.0,
    ).model_dump()  # fmt: skip


ARROW_TYPES = {
    "string": pa.string(), "bigint": pa.int64(), "double": pa.float64(), "boolean": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}  # fmt: skip


def arrow_schema(model) -> pa.Schema:
    """The silver table's columns (the streaming job writes ``spark_ddl(model)``) as Arrow types."""
    return pa.schema([(name, ARROW_TYPES[kind]) for name, kind in (c.split() for c in spark_ddl(model).split(", "))])


def write_silver(settings: Settings, events: list[tuple], *, mode: str = "append", auctions=()) -> None:
    """Silver rows written with delta-rs: no Spark job spent on test data."""
    feedback = pa.Table.from_pylist([feedback_row(*event) for event in events], arrow_schema(FeedbackEvent))
    write_deltalake(settings.delta_rs_location(Table.SILVER_FEEDBACK_EVENTS)[0], feedback, mode=mode)
    if auctions:
        log = pa.Table.from_pylist([auction_row(a) for a in auctions], arrow_schema(AuctionRecord))
        write_deltalake(settings.delta_rs_location(Table.SILVER_AUCTIONS)[0], log, mode=mode)


def create_instruction(campaign_id: str, campaign: Campaign) -> CampaignInstruction:
    spec = CampaignSpec(
        advertiser_id=campaign.advertiser_id, ad_id=f"ad-{campaign_id}", category="Automotive",
        pricing_model=campaign.pricing_model, bid_micros=campaign.clearing_price_micros * 2,
        total_budget_micros=campaign.budget_micros, daily_budget_micros=campaign.budget_micros,
        flight_start=H - timedelta(days=1), flight_end=H + timedelta(days=7),
    )  # fmt: skip
    return CampaignInstruction(
        instruction_id=f"create-{campaign_id}", action="create", campaign_id=campaign_id, issued_at=H, campaign=spec
    )


def build_store(settings: Settings, events: list[tuple], extra_spend: list[dict] = ()) -> None:
    """The campaigns, and every billable event charged the way the service does (idempotent per event and auction)."""
    engine = make_engine(settings)
    migrate(settings, engine)
    with make_session_factory(engine)() as session:
        for campaign_id, campaign in CAMPAIGNS.items():
            store.apply_instruction(session, create_instruction(campaign_id, campaign))
        for event in (feedback_row(*e) for e in events):
            if event["cost_micros"] > 0:
                store.record_spend(
                    session, event_id=event["event_id"], auction_id=event["auction_id"],
                    campaign_id=event["campaign_id"], event_type=event["event_type"],
                    cost_micros=event["cost_micros"], event_time=event["event_time"],
                )  # fmt: skip
        for spend in extra_spend:
            store.record_spend(session, **spend)
    engine.dispose()


def store_settings(tmp: Path, **overrides: object) -> Settings:
    return make_settings(
        tmp, campaign_db_url=f"sqlite:///{tmp / 'campaigns.db'}", reports_dir=tmp / "reports", **overrides
    )
