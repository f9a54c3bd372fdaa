"""Serving features: the same values training saw, from the gold tables, with documented defaults."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from pyspark.sql import functions as F

from adstream.contracts import Table
from adstream.events import CampaignStatus, PricingModel
from adstream.settings import Settings
from auction_service.domain import AuctionContext, ServingCampaign
from auction_service.serving.features import (
    PRIOR_CTR,
    UNKNOWN,
    CampaignFeatures,
    FeatureStore,
    candidate_batch,
    candidate_columns,
    hour_and_day_of_week,
    segment,
)
from ml.features import FEATURES, LABEL
from ml.pipelines import logistic_regression
from ml.scorer import Coded, CompiledScorer
from spark_jobs import feature_transforms
from tests.conftest import make_settings
from tests.ml.factories import training_frame

USER_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()), ("source", pa.string()), ("age", pa.int32()), ("age_band", pa.string()),
        ("gender", pa.string()), ("income_band", pa.string()), ("country", pa.string()), ("segment", pa.string()),
        ("daily_time_spent_on_site", pa.float64()), ("daily_internet_usage", pa.float64()),
        ("area_income", pa.float64()), ("interest_count", pa.int32()),
        ("category_affinity", pa.map_(pa.string(), pa.float64())),
    ]
)  # fmt: skip
AD_SCHEMA = pa.schema(
    [
        ("ad_id", pa.string()), ("source", pa.string()), ("category", pa.string()), ("title", pa.string()),
        ("ad_ctr_smoothed", pa.float64()), ("category_ctr_smoothed", pa.float64()),
        ("logged_impressions", pa.int64()), ("logged_clicks", pa.int64()),
    ]
)  # fmt: skip
F_25_34 = {"Electronics": 0.125, "Travel": 0.08}
M_45_54 = {"Electronics": 0.05}
# Rows as spark_jobs.feature_transforms.build_user_features writes them (age_band, segment and the
# segment's affinity map included).
USERS = [
    {
        "user_id": "adv-000001", "source": "advertising", "age": 30, "age_band": "25-34", "gender": "F",
        "income_band": "lower_mid", "country": "Chad", "segment": "F|25-34", "daily_time_spent_on_site": 68.95,
        "daily_internet_usage": 256.09, "area_income": 61833.9, "interest_count": 0,
        "category_affinity": list(F_25_34.items()),
    },
    {
        "user_id": "ads16-U7", "source": "ads16", "age": 52, "age_band": "45-54", "gender": "M",
        "income_band": None, "country": "Philippines", "segment": "M|45-54", "daily_time_spent_on_site": None,
        "daily_internet_usage": None, "area_income": None, "interest_count": 3,
        "category_affinity": list(M_45_54.items()),
    },
    {
        "user_id": "ads16-U9", "source": "ads16", "age": None, "age_band": "unknown", "gender": "unknown",
        "income_band": "high", "country": None, "segment": "unknown|unknown", "daily_time_spent_on_site": None,
        "daily_internet_usage": None, "area_income": None, "interest_count": 0, "category_affinity": [],
    },
]  # fmt: skip
ADS = [
    {
        "ad_id": "amazon-ad-1", "source": "amazon", "category": "Electronics", "title": "Earbuds",
        "ad_ctr_smoothed": 0.14, "category_ctr_smoothed": 0.11, "logged_impressions": 10, "logged_clicks": 2,
    },
    {
        "ad_id": "amazon-ad-2", "source": "amazon", "category": "Travel", "title": "Suitcase",
        "ad_ctr_smoothed": 0.07, "category_ctr_smoothed": 0.09, "logged_impressions": 0, "logged_clicks": 0,
    },
]  # fmt: skip
# A Tuesday: Spark's dayofweek is 3.
AT = datetime(2026, 11, 24, 10, 15, tzinfo=UTC)


def campaign(campaign_id: str, ad_id: str, category: str) -> ServingCampaign:
    return ServingCampaign(
        campaign_id=campaign_id, advertiser_id="adv-1", ad_id=ad_id, category=category,
        pricing_model=PricingModel.CPC, bid_micros=500_000, flight_start=AT - timedelta(days=1),
        flight_end=AT + timedelta(days=1), frequency_cap_per_day=3, status=CampaignStatus.ACTIVE,
        total_budget_micros=10_000_000, daily_budget_micros=1_000_000, spent_micros=0, spent_today_micros=0,
    )  # fmt: skip


CAMPAIGNS = [
    campaign("cmp-1", "amazon-ad-1", "Electronics"),
    campaign("cmp-2", "amazon-ad-2", "Travel"),
    campaign("cmp-3", "ad-not-in-gold", "Electronics"),  # a creative the feature build has not seen yet
    campaign("cmp-4", "ad-not-in-gold-either", "Garden"),  # and a category nobody has history for
]


def write_gold(settings: Settings, users: list[dict] | None = USERS, ads: list[dict] | None = ADS) -> None:
    for table, rows, schema in (
        (Table.GOLD_USER_FEATURES, users, USER_SCHEMA),
        (Table.GOLD_AD_FEATURES, ads, AD_SCHEMA),
    ):
        if rows is not None:
            location, _ = settings.delta_rs_location(table)
            write_deltalake(location, pa.Table.from_pylist(rows, schema=schema), mode="overwrite")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def store(settings: Settings) -> FeatureStore:
    write_gold(settings)
    return FeatureStore.load(settings)


def row(batch: dict[str, list], i: int) -> dict:
    return {name: values[i] for name, values in batch.items()}


# --- time features: Spark's hour and dayofweek (1 = Sunday .. 7 = Saturday) ----------------------

SPARK_TIME_FEATURES = [
    # (auction time, Spark hour(), Spark dayofweek()), stated by hand from the calendar.
    (datetime(2024, 1, 7, 12, 0, tzinfo=UTC), 12, 1),  # Sunday
    (datetime(2024, 1, 8, 0, 0, tzinfo=UTC), 0, 2),  # Monday
    (datetime(2024, 1, 13, 23, 59, tzinfo=UTC), 23, 7),  # Saturday
    (datetime(2016, 2, 29, 9, 30, tzinfo=UTC), 9, 2),  # Monday, leap day
    (AT, 10, 3),  # Tuesday
    (datetime(2024, 1, 12, 18, 0), 18, 6),  # Friday, naive = UTC
    (datetime(2024, 1, 7, 23, 30, tzinfo=timezone(timedelta(hours=-5))), 4, 2),  # Monday 04:30 in UTC
]


@pytest.mark.parametrize(("at", "hour", "day_of_week"), SPARK_TIME_FEATURES)
def test_hour_and_day_of_week_are_sparks(at, hour, day_of_week):
    assert hour_and_day_of_week(at) == (hour, day_of_week)


@pytest.mark.slow
def test_time_features_and_segments_equal_what_spark_computes(spark):
    # Aware datetimes, so PySpark does not read them in the Python process's local time zone.
    times = [at if at.tzinfo else at.replace(tzinfo=UTC) for at, _, _ in SPARK_TIME_FEATURES]
    got = spark.createDataFrame([(t,) for t in times], "at timestamp").select(F.hour("at"), F.dayofweek("at"))
    assert [tuple(r) for r in got.collect()] == [(hour, day) for _, hour, day in SPARK_TIME_FEATURES]
    people = [
        (gender, age)
        for gender in ("F", "M", "unknown", None)
        for age in (None, 18, 24, 25, 34, 35, 44, 45, 54, 55, 80)
    ]
    segments = spark.createDataFrame(people, "gender string, age int").select(
        feature_transforms.segment(F.col("gender"), F.col("age"))
    )
    assert [r[0] for r in segments.collect()] == [segment(gender, age) for gender, age in people]


def test_defaults_are_the_feature_jobs():
    assert (PRIOR_CTR, UNKNOWN) == (feature_transforms.PRIOR_CTR, feature_transforms.UNKNOWN)


# --- train/serve consistency --------------------------------------------------------------------


def test_serving_features_equal_the_training_rows_of_the_same_users_and_ads(store):
    # What spark_jobs.feature_transforms.build_training_set writes for a logged auction of these users
    # and ads at AT on a mobile device, stated by hand; the rate features are left out (they
    # are as of each example's time in training, all history in serving).
    expected_training_rows = {
        "adv-000001": {
            "age": 30.0, "daily_time_spent_on_site": 68.95, "daily_internet_usage": 256.09, "area_income": 61833.9,
            "hour_of_day": 10, "day_of_week": 3, "gender": "F", "income_band": "lower_mid", "country": "Chad",
            "device_type": "mobile",
        },
        "ads16-U7": {
            "age": 52.0, "daily_time_spent_on_site": None, "daily_internet_usage": None, "area_income": None,
            "hour_of_day": 10, "day_of_week": 3, "gender": "M", "income_band": "unknown", "country": "Philippines",
            "device_type": "mobile",
        },
    }  # fmt: skip
    for user_id, expected in expected_training_rows.items():
        context = AuctionContext(auction_id="a-1", at=AT, user_id=user_id, device_type="mobile")
        batch = candidate_batch(context, CAMPAIGNS, store)
        for i, served in enumerate(CAMPAIGNS):
            assert {name: row(batch, i)[name] for name in expected} == expected
            assert batch["ad_category"][i] == served.category


def test_rate_features_come_from_the_gold_tables(store):
    batch = candidate_batch(AuctionContext(auction_id="a-1", at=AT, user_id="adv-000001"), CAMPAIGNS, store)
    # The user's segment map; a category it lacks is the prior (training's rate with no history).
    assert batch["category_affinity"] == [0.125, 0.08, 0.125, PRIOR_CTR]
    # The ad's own rate; an ad without history is the prior, as in training.
    assert batch["ad_ctr_smoothed"] == [0.14, 0.07, PRIOR_CTR, PRIOR_CTR]
    # By the campaign's category, whichever ad carries it.
    assert batch["category_ctr_smoothed"] == [0.11, 0.09, 0.11, PRIOR_CTR]


def test_the_batch_has_exactly_the_model_features_one_entry_per_candidate(store):
    batch = candidate_batch(AuctionContext(auction_id="a-1", at=AT, user_id="adv-000001"), CAMPAIGNS, store)
    assert list(batch) == list(FEATURES)
    assert {len(values) for values in batch.values()} == {len(CAMPAIGNS)}
    assert candidate_batch(AuctionContext(auction_id="a-2", at=AT), [], store) == {name: [] for name in FEATURES}


def same_values(left: list | np.ndarray | Coded, right: list | np.ndarray | Coded) -> bool:
    """Equal as the scorer reads them: numbers as floats with None and NaN alike, strings as they are."""
    left, right = (side.tolist() if isinstance(side, Coded) else side for side in (left, right))
    if isinstance(left, np.ndarray) or isinstance(right, np.ndarray):
        return np.array_equal(np.asarray(left, dtype=float), np.asarray(right, dtype=float), equal_nan=True)
    return list(left) == list(right)


@pytest.mark.parametrize(
    "context",
    [
        AuctionContext(auction_id="a-1", at=AT, user_id="adv-000001", device_type="mobile"),
        AuctionContext(auction_id="a-2", at=AT, user_id="ads16-U7", country="Chad"),  # profile gaps
        AuctionContext(auction_id="a-3", at=AT, user_id="new-user", age=27, gender="F", device_type="tablet"),
        AuctionContext(auction_id="a-4", at=AT),  # anonymous
    ],
)
def test_candidate_columns_equal_candidate_batch_for_any_rows(store, context):
    features = store.current
    campaign_features = CampaignFeatures.build(CAMPAIGNS, features)
    for rows in ([0, 1, 2, 3], [3, 1], [2], []):
        columns = candidate_columns(context, campaign_features, np.array(rows, dtype=np.intp), features)
        batch = candidate_batch(context, [CAMPAIGNS[i] for i in rows], features)
        assert list(columns) == list(batch)
        for name in FEATURES:
            assert same_values(columns[name], batch[name]), name


def test_campaign_features_are_reused_until_a_snapshot_is_replaced(store):
    campaigns, features = tuple(CAMPAIGNS), store.current
    first = CampaignFeatures.of(campaigns, features)
    assert CampaignFeatures.of(campaigns, features) is first
    charged = (dataclasses.replace(campaigns[0], spent_micros=7, spent_today_micros=7), *campaigns[1:])
    assert CampaignFeatures.of(charged, features) is first  # spend is no feature
    recategorised = (*charged[:-1], dataclasses.replace(charged[-1], category="Finance"))
    rebuilt = CampaignFeatures.of(recategorised, features)
    assert rebuilt is not first and rebuilt.category_names[rebuilt.category_code[-1]] == "Finance"


# --- defaults -------------------------------------------------------------------------------------


def test_an_unknown_user_gets_the_request_profile_and_its_segment_affinity(store):
    context = AuctionContext(
        auction_id="a-1", at=AT, user_id="new-user", age=27, gender="F", country="Chad", device_type="desktop"
    )
    first = row(candidate_batch(context, CAMPAIGNS, store), 0)
    assert first == {
        "age": 27.0, "daily_time_spent_on_site": None, "daily_internet_usage": None, "area_income": None,
        "category_affinity": F_25_34["Electronics"],  # segment F|25-34, from the users who share it
        "ad_ctr_smoothed": 0.14, "category_ctr_smoothed": 0.11, "hour_of_day": 10, "day_of_week": 3,
        "gender": "F", "income_band": UNKNOWN, "country": "Chad", "ad_category": "Electronics",
        "device_type": "desktop",
    }  # fmt: skip


def test_an_anonymous_request_is_unknown_everywhere_it_says_nothing(store):
    batch = candidate_batch(AuctionContext(auction_id="a-1", at=AT), CAMPAIGNS[:1], store)
    assert row(batch, 0) | {"category_affinity": None} == {
        "age": None, "daily_time_spent_on_site": None, "daily_internet_usage": None, "area_income": None,
        "category_affinity": None, "ad_ctr_smoothed": 0.14, "category_ctr_smoothed": 0.11, "hour_of_day": 10,
        "day_of_week": 3, "gender": UNKNOWN, "income_band": UNKNOWN, "country": UNKNOWN,
        "ad_category": "Electronics", "device_type": None,
    }  # fmt: skip
    assert batch["category_affinity"] == [PRIOR_CTR]  # segment unknown|unknown has no history here


def test_profile_gaps_fall_back_to_the_request(store):
    # ads16-U9 has gender "unknown", no age and no country in its profile.
    context = AuctionContext(auction_id="a-1", at=AT, user_id="ads16-U9", age=40, gender="M", country="Chad")
    first = row(candidate_batch(context, CAMPAIGNS, store), 0)
    assert (first["age"], first["gender"], first["country"], first["income_band"]) == (40.0, "M", "Chad", "high")


def test_missing_tables_give_an_empty_store_with_a_reason_and_a_scorable_batch(settings):
    store = FeatureStore.load(settings)
    assert "gold/user_features not found" in store.reason
    assert "gold/ad_features not found" in store.reason
    assert "feature_build" in store.reason
    context = AuctionContext(auction_id="a-1", at=AT, user_id="adv-000001", age=30, gender="F", device_type="mobile")
    batch = candidate_batch(context, CAMPAIGNS, store)
    assert batch["category_affinity"] == batch["ad_ctr_smoothed"] == batch["category_ctr_smoothed"] == [PRIOR_CTR] * 4
    frame = training_frame(300, seed=3)
    scorer = CompiledScorer.from_pipeline(logistic_regression().fit(frame[list(FEATURES)], frame[LABEL]))
    assert np.all(np.isfinite(scorer.score(batch)))


# --- reloads --------------------------------------------------------------------------------------


def test_reload_reads_a_table_again_only_when_its_version_moved(settings, store):
    before = store.current
    assert store.reload_if_changed() is False
    assert store.current is before
    write_gold(settings, users=None, ads=[ADS[0] | {"ad_ctr_smoothed": 0.2}])
    assert store.reload_if_changed() is True
    assert store.current.ads["amazon-ad-1"].ad_ctr_smoothed == 0.2
    assert "amazon-ad-2" not in store.current.ads
    assert store.current.users is before.users  # the unchanged table was not read again
    assert store.current.ad_table_version == before.ad_table_version + 1


def test_a_table_built_after_start_is_picked_up(settings):
    store = FeatureStore.load(settings)
    assert store.current.users == {}
    write_gold(settings, ads=None)
    assert store.reload_if_changed() is True
    assert "adv-000001" in store.current.users
    assert "gold/user_features" not in store.reason and "gold/ad_features not found" in store.reason
