"""Campaign instructions: money and time parsing, instruction building, seeding from silver/ads, publishing."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from adstream.contracts import Table, Topic
from adstream.events import CampaignInstruction, CampaignSpec, InstructionAction, PacingMode, PricingModel
from auction_service.campaign_store import instructions as campaigns
from auction_service.campaign_store.instructions import CatalogMissing, parse_money, parse_time, seed_instructions
from tests.conftest import make_settings

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CATEGORIES = ("Automotive", "Consumer Electronics", "Health & Beauty", "Pet Supplies", "Grocery")
CATALOG = [
    {"ad_id": f"amz-{i:04d}", "source": "amazon" if i % 2 else "ads16", "category": CATEGORIES[i % 5], "title": f"t{i}"}
    for i in range(40)
]


def write_catalog(settings, rows: list[dict]) -> None:
    uri, _ = settings.delta_rs_location(Table.SILVER_ADS)
    write_deltalake(uri, pa.Table.from_pylist(rows))


# --- parsing ---


@pytest.mark.parametrize(
    ("text", "micros"),
    [("0.40", 400_000), ("500", 500_000_000), ("0.000001", 1), (" 12.5 ", 12_500_000), ("1.5e2", 150_000_000)],
)
def test_money_becomes_integer_micros(text, micros):
    assert parse_money(text) == micros


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0.0000001", "more than 6 decimals"),
        ("1.1234567", "more than 6 decimals"),
        ("-1", "negative"),
        ("-0.01", "negative"),
        ("1,50", "not an amount"),
        ("ten", "not an amount"),
        ("NaN", "not a finite amount"),
        ("Infinity", "not a finite amount"),
    ],
)
def test_bad_money_is_refused_with_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_money(text)


def test_times_are_utc_and_a_bare_date_is_midnight_utc():
    assert parse_time("2026-06-30") == datetime(2026, 6, 30, tzinfo=UTC)
    assert parse_time("2026-06-30T12:00:00+02:00") == datetime(2026, 6, 30, 10, 0, tzinfo=UTC)
    assert parse_time("2026-06-30T12:00:00Z").tzinfo is UTC
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("30/06/2026")


# --- instructions ---


def test_create_and_stop_instructions_round_trip_through_json():
    spec = CampaignSpec(
        advertiser_id="adv-1",
        ad_id="amz-0001",
        category="Automotive",
        pricing_model="CPC",
        bid_micros=400_000,
        total_budget_micros=500_000_000,
        daily_budget_micros=100_000_000,
        flight_start=NOW,
        flight_end=NOW + timedelta(days=30),
    )
    create = campaigns.create_instruction(spec, now=NOW)
    stop = campaigns.stop_instruction(create.campaign_id, now=NOW)
    assert create.action == InstructionAction.CREATE and create.campaign == spec
    assert create.campaign_id.startswith("cmp-") and create.issued_at == NOW
    assert (stop.action, stop.campaign_id, stop.campaign) == (InstructionAction.STOP, create.campaign_id, None)
    assert create.instruction_id != stop.instruction_id
    assert campaigns.create_instruction(spec, now=NOW).campaign_id != create.campaign_id
    given = campaigns.create_instruction(spec, now=NOW, campaign_id="mine", instruction_id="i-1")
    assert (given.campaign_id, given.instruction_id) == ("mine", "i-1")
    for instruction in (create, stop):
        assert CampaignInstruction.model_validate_json(instruction.model_dump_json()) == instruction


# --- seeding ---


def test_seeding_is_deterministic_given_the_seed_and_the_catalog_order_does_not_matter():
    first = seed_instructions(CATALOG, 30, seed=7, now=NOW)
    again = seed_instructions(list(reversed(CATALOG)), 30, seed=7, now=NOW)
    other = seed_instructions(CATALOG, 30, seed=8, now=NOW)
    assert first == again
    assert [i.campaign_id for i in first] != [i.campaign_id for i in other]
    assert len({i.campaign_id for i in first}) == 30 and len({i.instruction_id for i in first}) == 30


def test_seeded_campaigns_look_like_real_ones():
    seeded = seed_instructions(CATALOG, 200, seed=3, now=NOW)
    specs = [instruction.campaign for instruction in seeded]
    assert len(seeded) == 200
    assert all(instruction.action == InstructionAction.CREATE for instruction in seeded)

    by_advertiser: dict[str, list[CampaignSpec]] = defaultdict(list)
    for spec in specs:
        by_advertiser[spec.advertiser_id].append(spec)
    sizes = sorted(len(group) for group in by_advertiser.values())
    assert all(3 <= size <= 5 for size in sizes[1:]) and 1 <= sizes[0] <= 5  # the last advertiser may be short
    assert 40 <= len(by_advertiser) <= 67
    assert all(len({spec.category for spec in group}) == 1 for group in by_advertiser.values())

    categories = {ad["ad_id"]: ad["category"] for ad in CATALOG}
    assert all(categories[spec.ad_id] == spec.category for spec in specs)
    assert len({spec.category for spec in specs}) >= 4

    mix = Counter(spec.pricing_model for spec in specs)
    assert mix[PricingModel.CPC] > mix[PricingModel.CPM] > mix[PricingModel.CPA] > 0
    bid_usd = {PricingModel.CPM: (1, 8), PricingModel.CPC: (0.05, 0.4), PricingModel.CPA: (1, 8)}
    for spec in specs:
        low, high = bid_usd[spec.pricing_model]
        assert low * 1_000_000 <= spec.bid_micros <= high * 1_000_000
        assert spec.bid_micros % 10_000 == 0  # whole cents
        assert 50_000_000 <= spec.total_budget_micros <= 500_000_000
        assert 0 < spec.daily_budget_micros <= spec.total_budget_micros
        assert NOW - timedelta(days=1) <= spec.flight_start <= NOW < spec.flight_end <= NOW + timedelta(days=30)
        assert 3 <= spec.frequency_cap_per_day <= 20

    targeted = Counter()
    for spec in specs:
        targeting = spec.targeting
        targeted["countries"] += bool(targeting.countries)
        targeted["age"] += targeting.age_min is not None
        targeted["devices"] += bool(targeting.device_types)
        targeted["none"] += targeting == type(targeting)()
    assert all(10 <= targeted[kind] <= 120 for kind in ("countries", "age", "devices", "none"))


def test_seeding_refuses_a_catalog_without_usable_ads():
    with pytest.raises(CatalogMissing, match="no ad"):
        seed_instructions([{"ad_id": "", "category": "Automotive"}, {"ad_id": "x", "category": None}], 3, 1, NOW)


def test_the_catalog_is_read_from_silver_ads(tmp_path):
    settings = make_settings(tmp_path)
    write_catalog(settings, CATALOG[:3])
    assert campaigns.read_ad_catalog(settings) == CATALOG[:3]


# --- publishing (real broker) ---


@pytest.mark.slow
def test_publish_instructions_waits_for_the_broker_and_keeps_order_per_campaign(kafka_settings):
    campaign_id = f"pub-{uuid.uuid4().hex[:12]}"
    create = seed_instructions(CATALOG, 1, seed=11, now=NOW)[0].model_copy(update={"campaign_id": campaign_id})
    stop = campaigns.stop_instruction(campaign_id, now=NOW)
    acks = campaigns.publish_instructions(kafka_settings, [create, stop])
    assert [ack.topic for ack in acks] == [Topic.CAMPAIGN_INSTRUCTIONS] * 2
    assert acks[0].partition == acks[1].partition and acks[0].offset < acks[1].offset


def test_a_share_of_the_seeded_campaigns_paces_asap_and_budgets_can_be_sized_for_a_run():
    plain = seed_instructions(CATALOG, 200, seed=7, now=NOW)
    paced = seed_instructions(CATALOG, 200, seed=7, now=NOW, asap_share=0.5, daily_budget_micros=(2_000_000, 8_000_000))
    modes = [i.campaign.pacing_mode for i in paced]
    assert modes.count(PacingMode.ASAP) == modes.count(PacingMode.EVEN) == 100
    assert modes[:4] == [PacingMode.EVEN, PacingMode.ASAP, PacingMode.EVEN, PacingMode.ASAP]  # spread, not a block
    assert {i.campaign.daily_budget_micros for i in paced} <= {cents * 10_000 for cents in range(200, 801)}
    assert all(i.campaign.daily_budget_micros <= i.campaign.total_budget_micros for i in paced)
    # Everything else is what the same seed gives without them; and without them nothing changed.
    assert [i.campaign.ad_id for i in paced] == [i.campaign.ad_id for i in plain]
    assert all(i.campaign.pacing_mode == PacingMode.EVEN for i in plain)
    assert [i.campaign_id for i in seed_instructions(CATALOG, 200, seed=7, now=NOW, asap_share=0.0)] == [
        i.campaign_id for i in plain
    ]
    with pytest.raises(ValueError, match="asap_share"):
        seed_instructions(CATALOG, 1, seed=7, now=NOW, asap_share=1.5)
    with pytest.raises(ValueError, match="daily_budget_micros"):
        seed_instructions(CATALOG, 1, seed=7, now=NOW, daily_budget_micros=(5_000_000, 2_000_000))
