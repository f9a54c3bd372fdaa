"""The campaign CLI: money and time parsing, instruction building, seeding from silver/ads, publishing."""

from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from adstream.contracts import Table, Topic
from adstream.events import CampaignInstruction, CampaignSpec, InstructionAction, PricingModel
from adstream.messaging import make_consumer
from auction_service.campaign_store import instructions as campaigns
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
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


def test_create_with_bad_money_exits_2_and_names_the_argument(tmp_path, capsys):
    argv = ["create", "--advertiser", "a", "--ad-id", "x", "--category", "Automotive", "--pricing-model", "CPC"]
    argv += ["--budget", "500", "--daily-budget", "100", "--end", "2026-06-30"]
    with pytest.raises(SystemExit) as exited:
        campaigns.main([*argv, "--bid", "0.1234567"], settings=make_settings(tmp_path))
    assert exited.value.code == 2
    assert "--bid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        campaigns.main([*argv, "--bid", "-0.40"], settings=make_settings(tmp_path))
    assert "negative" in capsys.readouterr().err


def test_create_with_an_inconsistent_campaign_exits_2_with_what_to_fix(tmp_path, capsys):
    settings = make_settings(tmp_path)
    argv = ["create", "--advertiser", "a", "--ad-id", "x", "--category", "Automotive", "--pricing-model", "cpm"]
    argv += ["--bid", "2", "--budget", "50", "--end", "2030-06-30"]
    with pytest.raises(SystemExit) as exited:
        campaigns.main([*argv, "--daily-budget", "80"], settings=settings)
    assert exited.value.code == 2
    assert "campaign: daily_budget_micros cannot exceed total_budget_micros" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        campaigns.main(
            [*argv, "--daily-budget", "5", "--age-min", "40", "--age-max", "30"], settings=make_settings(tmp_path)
        )
    assert "targeting: age_min 40 is above age_max 30" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        campaigns.main([*argv, "--daily-budget", "5", "--devices", "smartwatch"], settings=settings)
    assert "targeting.device_types.0:" in capsys.readouterr().err


def test_show_prints_the_campaign_and_its_spend_from_the_store(tmp_path, capsys):
    settings = make_settings(tmp_path)
    engine = make_engine(settings)
    migrate(settings, engine)
    (instruction,) = seed_instructions(CATALOG, 1, seed=5, now=datetime.now(UTC))
    with make_session_factory(engine)() as session:
        store.apply_instruction(session, instruction)
        store.record_spend(
            session,
            event_id="e1",
            auction_id="a1",
            campaign_id=instruction.campaign_id,
            event_type="click",
            cost_micros=1_250_000,
            event_time=datetime.now(UTC),
        )
    engine.dispose()
    assert campaigns.main(["show", instruction.campaign_id], settings=settings) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["campaign_id"], shown["status"]) == (instruction.campaign_id, "active")
    assert (shown["spent_micros"], shown["spent_today_micros"]) == (1_250_000, 1_250_000)
    assert shown["remaining_budget_micros"] == instruction.campaign.total_budget_micros - 1_250_000
    assert CampaignSpec.model_validate(shown["spec"]) == instruction.campaign

    assert campaigns.main(["show", "cmp-nobody"], settings=settings) == 1
    assert "unknown campaign 'cmp-nobody'" in capsys.readouterr().err


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
    bid_usd = {PricingModel.CPM: (1, 8), PricingModel.CPC: (0.2, 2), PricingModel.CPA: (5, 40)}
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


def test_seed_without_a_catalog_exits_1_and_says_so(tmp_path, capsys):
    assert campaigns.main(["seed", "5", "--seed", "1"], settings=make_settings(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "silver/ads does not exist" in err and str(tmp_path / "lake") in err


# --- publishing (real broker) ---


def _records_of(settings, campaign_ids: set[str]) -> list:
    consumer = make_consumer(
        settings,
        f"cli-test-{uuid.uuid4().hex[:8]}",
        Topic.CAMPAIGN_INSTRUCTIONS,
        consumer_timeout_ms=15_000,
        value_deserializer=None,  # raw bytes: parsed below, whatever else the shared topic holds
        key_deserializer=None,
    )
    found = []
    try:
        for record in consumer:
            if record.key is not None and record.key.decode(errors="replace") in campaign_ids:
                found.append(record)
                if len(found) == len(campaign_ids):
                    break
    finally:
        consumer.close()
    return found


@pytest.mark.slow
def test_create_and_stop_publish_keyed_instructions_and_print_the_id(kafka_settings, capsys):
    campaign_id = f"cli-{uuid.uuid4().hex[:12]}"
    argv = ["create", "--advertiser", "adv-9", "--ad-id", "amz-0001", "--category", "Automotive"]
    argv += ["--pricing-model", "CPC", "--bid", "0.40", "--budget", "500", "--daily-budget", "100"]
    argv += ["--start", "2026-05-01", "--end", "2026-06-30T00:00:00Z", "--countries", "FR,DE", "--age-min", "25"]
    argv += ["--genders", "F", "--devices", "mobile", "--frequency-cap", "5", "--campaign-id", campaign_id]
    assert campaigns.main(argv, settings=kafka_settings) == 0
    assert capsys.readouterr().out.split() == [campaign_id]
    assert campaigns.main(["stop", campaign_id], settings=kafka_settings) == 0

    (record,) = _records_of(kafka_settings, {campaign_id})  # the first of the two, in order
    instruction = CampaignInstruction.model_validate_json(record.value)
    assert instruction.action == InstructionAction.CREATE
    spec = instruction.campaign
    assert (spec.bid_micros, spec.total_budget_micros, spec.daily_budget_micros) == (400_000, 500_000_000, 100_000_000)
    assert (spec.flight_start, spec.flight_end) == (datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 6, 30, tzinfo=UTC))
    assert spec.targeting.countries == ["FR", "DE"] and spec.targeting.genders == ["F"]
    assert (spec.targeting.age_min, spec.targeting.device_types, spec.frequency_cap_per_day) == (25, ["mobile"], 5)


@pytest.mark.slow
def test_publish_instructions_waits_for_the_broker_and_keeps_order_per_campaign(kafka_settings):
    campaign_id = f"pub-{uuid.uuid4().hex[:12]}"
    create = seed_instructions(CATALOG, 1, seed=11, now=NOW)[0].model_copy(update={"campaign_id": campaign_id})
    stop = campaigns.stop_instruction(campaign_id, now=NOW)
    acks = campaigns.publish_instructions(kafka_settings, [create, stop])
    assert [ack.topic for ack in acks] == [Topic.CAMPAIGN_INSTRUCTIONS] * 2
    assert acks[0].partition == acks[1].partition and acks[0].offset < acks[1].offset
