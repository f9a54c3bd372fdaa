"""The topic record schemas: strict validation, and the Spark schema derived from the same models."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from adstream.events import (
    BILLABLE_EVENT,
    PLATFORMS,
    AuctionRecord,
    CampaignGoals,
    CampaignInstruction,
    CampaignSpec,
    EventType,
    FeedbackEvent,
    PricingModel,
    spark_ddl,
)

CLICK = {
    "event_id": "e-1", "event_type": "click", "event_time": "2026-11-24T10:00:00Z", "auction_id": "a-1",
    "campaign_id": "c-1", "advertiser_id": "adv-1", "ad_id": "ad-1", "pricing_model": "CPC", "cost_micros": 250_000,
}  # fmt: skip


def test_a_valid_event_round_trips_through_json():
    event = FeedbackEvent.model_validate(CLICK)
    assert event.schema_version == 1 and event.event_type == "click"
    assert FeedbackEvent.model_validate_json(event.model_dump_json()) == event


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"event_type": "hover"}, "event_type"),
        ({"event_time": "2026-11-24T10:00:00"}, "event_time"),  # no time zone
        ({"cost_micros": -1}, "cost_micros"),
        ({"pctr": 1.5}, "pctr"),
        ({"surprise": 1}, "surprise"),
        ({"schema_version": 2}, "schema_version"),
    ],
)
def test_invalid_events_are_refused_naming_the_field(change, field):
    with pytest.raises(ValidationError) as error:
        FeedbackEvent.model_validate({**CLICK, **change})
    assert [e["loc"][0] for e in error.value.errors()] == [field]


def test_each_pricing_model_bills_one_event_type():
    assert BILLABLE_EVENT == {
        PricingModel.CPM: EventType.IMPRESSION, PricingModel.CPC: EventType.CLICK,
        PricingModel.CPA: EventType.CONVERSION,
    }  # fmt: skip


def test_the_spark_schema_follows_the_models():
    feedback = spark_ddl(FeedbackEvent)
    assert feedback.startswith("schema_version bigint, event_id string, event_type string, event_time timestamp, ")
    assert "cost_micros bigint" in feedback and "pctr double" in feedback
    auction = dict(part.split(" ") for part in spark_ddl(AuctionRecord).split(", "))
    assert auction["filled"] == "boolean" and auction["clearing_price_micros"] == "bigint"
    assert auction["latency_ms"] == "double" and auction["age"] == "bigint"
    assert list(auction) == list(AuctionRecord.model_fields)


def test_an_unfilled_auction_needs_no_winner():
    record = AuctionRecord(
        auction_id="a-9", event_time=datetime.fromisoformat("2026-11-24T10:00:00+00:00"), floor_micros=0,
        candidate_count=0, filled=False, latency_ms=1.0,
    )  # fmt: skip
    assert record.campaign_id is None and record.clearing_price_micros is None


SPEC = {
    "advertiser_id": "adv-1", "ad_id": "amazon-00001", "category": "Electronics", "pricing_model": "CPC",
    "bid_micros": 400_000, "total_budget_micros": 50_000_000, "daily_budget_micros": 10_000_000,
    "flight_start": "2026-11-01T00:00:00Z", "flight_end": "2026-12-01T00:00:00Z",
    "targeting": {"countries": ["France"], "age_min": 25, "age_max": 44, "device_types": ["mobile"]},
}  # fmt: skip
CREATE = {"instruction_id": "i-1", "action": "create", "campaign_id": "c-1", "issued_at": "2026-11-24T10:00:00Z"}


def test_a_create_instruction_carries_its_campaign():
    instruction = CampaignInstruction.model_validate({**CREATE, "campaign": SPEC})
    assert instruction.campaign.targeting.countries == ["France"]
    assert instruction.campaign.frequency_cap_per_day == 10


@pytest.mark.parametrize(
    ("instruction", "message"),
    [
        (CREATE, "a create instruction needs the campaign"),
        ({**CREATE, "action": "stop", "campaign": SPEC}, "a stop instruction carries no campaign"),
        ({**CREATE, "campaign": {**SPEC, "flight_end": "2026-10-01T00:00:00Z"}}, "flight_end must be after"),
        ({**CREATE, "campaign": {**SPEC, "daily_budget_micros": 60_000_000}}, "cannot exceed total_budget"),
        ({**CREATE, "campaign": {**SPEC, "targeting": {"age_min": 50, "age_max": 30}}}, "age_min 50 is above"),
        ({**CREATE, "campaign": {**SPEC, "bid_micros": 0}}, "greater than 0"),
    ],
)
def test_inconsistent_instructions_are_refused_saying_why(instruction, message):
    with pytest.raises(ValidationError, match=message):
        CampaignInstruction.model_validate(instruction)


def test_campaign_goals_need_a_value_to_optimize_for_and_keep_their_bounds():
    with pytest.raises(ValidationError, match="conversion value or a target CPA to optimize for"):
        CampaignGoals(optimize=True)
    with pytest.raises(ValidationError, match="not both"):
        CampaignGoals(conversion_value_micros=1, target_cpa_micros=1)
    with pytest.raises(ValidationError, match="app/dooh"):
        CampaignGoals(platform_bid_limits_micros={"app/dooh": 1})
    with pytest.raises(ValidationError, match="bid limit"):
        CampaignGoals(platform_bid_limits_micros={"web/mobile": 0})
    assert CampaignGoals(optimize=True, target_cpa_micros=5_000_000).value_micros == 5_000_000
    assert PLATFORMS == ("web/mobile", "web/desktop", "web/tablet", "web/ctv",
                         "app/mobile", "app/desktop", "app/tablet", "app/ctv")  # fmt: skip
    spec = dict(
        advertiser_id="a", ad_id="ad", category="c", pricing_model="CPC", bid_micros=500_000,
        total_budget_micros=10_000_000, daily_budget_micros=1_000_000,
        flight_start=datetime(2026, 12, 6, tzinfo=UTC), flight_end=datetime(2026, 12, 7, tzinfo=UTC),
    )  # fmt: skip
    with pytest.raises(ValidationError, match="max_bid_micros cannot be below bid_micros"):
        CampaignSpec(**spec, goals={"max_bid_micros": 400_000})
    assert CampaignSpec(**spec).goals == CampaignGoals()  # a spec from before goals reads as none
