"""`adstream campaigns create|stop|show|seed`: usage errors, the store view, and instructions through the broker."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from adstream.contracts import Topic
from adstream.events import CampaignInstruction, CampaignSpec, InstructionAction
from adstream.messaging import make_consumer
from auction_service.campaign_store import store
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from auction_service.campaign_store.instructions import seed_instructions
from tests.auction_service.campaign_store.test_instructions import CATALOG
from tests.cli.conftest import invoke
from tests.conftest import make_settings

CREATE = ["campaigns", "create", "--advertiser", "a", "--ad-id", "x", "--category", "Automotive"]


def test_create_with_bad_money_exits_2_and_names_the_argument(tmp_path):
    argv = [*CREATE, "--pricing-model", "CPC", "--budget", "500", "--daily-budget", "100", "--end", "2026-06-30"]
    result = invoke(make_settings(tmp_path), [*argv, "--bid", "0.1234567"])
    assert result.exit_code == 2
    assert "--bid" in result.stderr
    result = invoke(make_settings(tmp_path), [*argv, "--bid", "-0.40"])
    assert result.exit_code == 2
    assert "negative" in result.stderr


def test_create_with_an_inconsistent_campaign_exits_2_with_what_to_fix(tmp_path):
    settings = make_settings(tmp_path)
    argv = [*CREATE, "--pricing-model", "cpm", "--bid", "2", "--budget", "50", "--end", "2030-06-30"]
    result = invoke(settings, [*argv, "--daily-budget", "80"])
    assert result.exit_code == 2
    assert "campaign: daily_budget_micros cannot exceed total_budget_micros" in result.stderr
    result = invoke(settings, [*argv, "--daily-budget", "5", "--age-min", "40", "--age-max", "30"])
    assert result.exit_code == 2
    assert "targeting: age_min 40 is above age_max 30" in result.stderr
    result = invoke(settings, [*argv, "--daily-budget", "5", "--devices", "smartwatch"])
    assert result.exit_code == 2
    assert "targeting.device_types.0:" in result.stderr
    # A budget past the store's integers is refused here, before anything reaches the broker.
    result = invoke(settings, [*CREATE, "--pricing-model", "cpm", "--bid", "2", "--end", "2030-06-30",
                               "--budget", "1e20", "--daily-budget", "5"])  # fmt: skip
    assert result.exit_code == 2
    assert "total_budget_micros: Input should be less than or equal to 100000000000000" in result.stderr
    # Goals: optimizing needs a value; a platform must be one the optimizer knows. An audience split names
    # an experiment and an arm of its arms.
    for extra, message in (
        (["--optimize"], "goals: optimize needs a conversion value or a target CPA to optimize for"),
        (["--platform-bid-limit", "dooh/screen=1"], "goals.platform_bid_limits_micros.dooh/screen"),
        (["--audience-split", "spring-ab:2/2"],
         "targeting.audience_split: arm 2 is not one of the experiment's 2 arms (0 to 1)"),
        (["--audience-split", "spring-ab"], "--audience-split: expected EXPERIMENT:ARM/ARMS"),
    ):  # fmt: skip
        result = invoke(settings, [*argv, "--daily-budget", "5", *extra])
        assert result.exit_code == 2 and message in result.stderr, (extra, result.stderr)


def test_show_prints_the_campaign_and_its_spend_from_the_store(tmp_path):
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
    result = invoke(settings, ["campaigns", "show", instruction.campaign_id])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert (shown["campaign_id"], shown["status"]) == (instruction.campaign_id, "active")
    assert (shown["spent_micros"], shown["spent_today_micros"]) == (1_250_000, 1_250_000)
    assert shown["remaining_budget_micros"] == instruction.campaign.total_budget_micros - 1_250_000
    assert CampaignSpec.model_validate(shown["spec"]) == instruction.campaign
    assert shown["pacing"].startswith("unknown: the shared store at")  # none runs here: said, not a crash

    result = invoke(settings, ["campaigns", "show", "cmp-nobody"])
    assert result.exit_code == 1
    assert "unknown campaign 'cmp-nobody'" in result.stderr


def test_seed_without_a_catalog_exits_1_and_says_so(tmp_path):
    result = invoke(make_settings(tmp_path), ["campaigns", "seed", "5", "--seed", "1"])
    assert result.exit_code == 1
    assert "silver/ads does not exist" in result.stderr and str(tmp_path / "lake") in result.stderr


def test_seed_needs_at_least_one_campaign(tmp_path):
    result = invoke(make_settings(tmp_path), ["campaigns", "seed", "0"])
    assert result.exit_code == 2 and "N must be at least 1" in result.stderr


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
def test_create_and_stop_publish_keyed_instructions_and_print_the_id(kafka_settings):
    campaign_id = f"cli-{uuid.uuid4().hex[:12]}"
    argv = ["campaigns", "create", "--advertiser", "adv-9", "--ad-id", "amz-0001", "--category", "Automotive"]
    argv += ["--pricing-model", "CPC", "--bid", "0.40", "--budget", "500", "--daily-budget", "100"]
    argv += ["--start", "2026-05-01", "--end", "2026-06-30T00:00:00Z", "--countries", "FR,DE", "--age-min", "25"]
    argv += ["--genders", "F", "--devices", "mobile", "--frequency-cap", "5", "--campaign-id", campaign_id]
    argv += ["--optimize", "--conversion-value", "12.50", "--max-bid", "0.90", "--platform-bid-limit", "app/ctv=0.60"]
    argv += ["--audience-split", "spring:ab:1/3"]
    created = invoke(kafka_settings, argv)
    assert created.exit_code == 0, created.output
    assert created.stdout.split() == [campaign_id]
    assert invoke(kafka_settings, ["campaigns", "stop", campaign_id]).exit_code == 0

    (record,) = _records_of(kafka_settings, {campaign_id})  # the first of the two, in order
    instruction = CampaignInstruction.model_validate_json(record.value)
    assert instruction.action == InstructionAction.CREATE
    spec = instruction.campaign
    assert (spec.bid_micros, spec.total_budget_micros, spec.daily_budget_micros) == (400_000, 500_000_000, 100_000_000)
    assert (spec.flight_start, spec.flight_end) == (datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 6, 30, tzinfo=UTC))
    assert spec.targeting.countries == ["FR", "DE"] and spec.targeting.genders == ["F"]
    assert (spec.targeting.age_min, spec.targeting.device_types, spec.frequency_cap_per_day) == (25, ["mobile"], 5)
    assert spec.goals.optimize and spec.goals.conversion_value_micros == 12_500_000
    assert (spec.goals.max_bid_micros, spec.goals.platform_bid_limits_micros) == (900_000, {"app/ctv": 600_000})
    split = spec.targeting.audience_split
    assert (split.experiment, split.arm, split.arms) == ("spring:ab", 1, 3)
