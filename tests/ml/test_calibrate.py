"""The online calibration job on real Delta tables and a real MLflow store: gold/calibration and gold/calibrators."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from adstream.contracts import Table
from adstream.days import DayClock
from adstream.events import ChargeStatus
from ml.calibrate import (
    CALIBRATOR_SCHEMA,
    Priors,
    calibrations_before,
    latest_calibration,
    refresh_once,
    slot_counts,
    write_calibrators,
)
from ml.calibration import Calibration, CalibrationKind, logit, prior_correction, sigmoid
from ml.features import FEATURES, LABEL
from ml.pipelines import logistic_regression
from tests.conftest import make_settings
from tests.ml.factories import training_frame
from tests.ml.registered import register

NOW = datetime(2026, 12, 6, 10, 30, tzinfo=UTC)
TRUE_SHIFT = -2.8  # the truth's log-odds below the model's raw score (the prior says -3.48)


def _events(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``n`` impressions of model version 1 over the 90 minutes before NOW (two hours, two pricing
    models, two campaigns of two categories), their clicks drawn from the truth, and the auctions."""
    raw = sigmoid(rng.normal(0.0, 1.5, n))
    served = prior_correction("1", 0.5, 0.03).apply(raw)
    at = pd.Timestamp(NOW) - pd.to_timedelta(rng.uniform(0, 5400, n), unit="s")
    clicked = rng.uniform(size=n) < sigmoid(logit(raw) + TRUE_SHIFT)
    campaign = np.where(rng.uniform(size=n) < 0.5, "c-cpm", "c-cpc")
    impressions = pd.DataFrame(
        {
            "event_type": "impression",
            "auction_id": [f"a{i}" for i in range(n)],
            "event_time": at,
            "model_version": "1",
            "pricing_model": np.where(campaign == "c-cpm", "CPM", "CPC"),
            "campaign_id": campaign,
            "pctr": served,
            "raw_pctr": raw,
            "charge_status": np.where(campaign == "c-cpm", ChargeStatus.CHARGED.value, ChargeStatus.NOT_BILLABLE.value),
            "ivt_category": None,
        }
    )
    clicks = impressions[clicked].assign(
        event_type="click", event_time=lambda f: f["event_time"] + pd.Timedelta(seconds=5), charge_status="charged"
    )
    auctions = pd.DataFrame(
        {
            "campaign_id": ["c-cpm", "c-cpc"],
            "ad_category": ["travel", "fashion"],
            "event_time": [pd.Timestamp(NOW) - pd.Timedelta(minutes=1)] * 2,
        }
    )
    return pd.concat([impressions, clicks], ignore_index=True), auctions


def _write(settings, table: Table, frame: pd.DataFrame) -> None:
    frame = frame.assign(event_date=frame["event_time"].dt.date)
    write_deltalake(settings.delta_rs_location(table)[0], frame, mode="append", partition_by=["event_date"])


@pytest.fixture
def lake(tmp_path, mlflow_uri):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri, calibration_min_clicks=50)
    frame = training_frame(300, seed=5)
    model = logistic_regression().fit(frame[list(FEATURES)], frame[LABEL].to_numpy())
    assert register(mlflow_uri, model, calibration=prior_correction("", 0.5, 0.03)) == "1"
    rng = np.random.default_rng(3)
    events, auctions = _events(rng, 20_000)
    noise = events.head(300).assign(auction_id=lambda f: "x" + f["auction_id"])
    noise = pd.concat(
        [
            noise.head(100).assign(ivt_category="givt"),  # invalid traffic: not an impression
            noise.iloc[100:200].assign(charge_status=ChargeStatus.DUPLICATE_AUCTION.value),  # not a delivery
            noise.tail(100).assign(event_time=lambda f: f["event_time"] - pd.Timedelta(hours=5)),  # before the window
        ]
    )
    _write(settings, Table.SILVER_FEEDBACK_EVENTS, pd.concat([events, noise], ignore_index=True))
    _write(settings, Table.SILVER_AUCTIONS, auctions)
    return settings, events


def test_a_refresh_fits_the_served_versions_map_and_writes_observed_over_expected_per_hour(lake):
    settings, events = lake
    done = refresh_once(settings, Priors(settings), NOW)
    impressions = events[events["event_type"] == "impression"]
    clicked = set(events.loc[events["event_type"] == "click", "auction_id"])
    assert done.impressions == len(impressions) and done.clicks == len(clicked)

    # The map: the truth is the raw score shifted by TRUE_SHIFT in log-odds, slope 1.
    (fitted,) = done.fitted
    assert fitted.kind == CalibrationKind.PLATT and fitted.model_version == "1"
    assert fitted.slope == pytest.approx(1.0, abs=0.1)
    # The same truth for both campaigns: each one's intercept with its pricing model's and its category's
    # offsets is the shift (one category per pricing model here, so the data cannot tell the two apart).
    by_category = dict(fitted.category_offsets)
    assert sorted(by_category) == ["fashion", "travel"]
    for offset in (fitted.offset_cpm + by_category["travel"], fitted.offset_cpc + by_category["fashion"]):
        assert fitted.intercept + offset == pytest.approx(TRUE_SHIFT, abs=0.15)
    assert fitted.offset_cpa == 0.0  # no CPA impressions
    assert latest_calibration(settings, "1") == fitted  # offsets and all, through gold/calibrators
    assert latest_calibration(settings, "2") is None

    gold = DeltaTable(settings.delta_rs_location(Table.GOLD_CALIBRATION)[0]).to_pandas()
    expected = (
        impressions.assign(
            hour=impressions["event_time"].dt.floor("h"),
            category=impressions["campaign_id"].map({"c-cpm": "travel", "c-cpc": "fashion"}),
            clicked=impressions["auction_id"].isin(clicked),
        )
        .groupby(["hour", "pricing_model", "category"])
        .agg(impressions=("pctr", "size"), expected_clicks=("pctr", "sum"), clicks=("clicked", "sum"))
    )
    got = gold.set_index(["hour", "pricing_model", "category"]).sort_index()
    assert set(gold["model_version"]) == {"1"}
    assert len(got) == len(expected) == 4  # two hours x two pricing models (one category each)
    assert got["impressions"].tolist() == expected["impressions"].tolist()
    assert got["clicks"].tolist() == expected["clicks"].tolist()
    np.testing.assert_allclose(got["expected_clicks"], expected["expected_clicks"], rtol=1e-12)
    np.testing.assert_allclose(got["observed_over_expected"], expected["clicks"] / expected["expected_clicks"])
    # The prior (3 %) is not the truth here, so every cell is off and alerts.
    assert (got["observed_over_expected"] > 1.25).all()
    assert got["alert"].all() and len(done.alerts) == 4


def test_a_refresh_done_again_rewrites_the_same_hours_rather_than_adding_to_them(lake):
    settings, _ = lake
    refresh_once(settings, Priors(settings), NOW)
    first = DeltaTable(settings.delta_rs_location(Table.GOLD_CALIBRATION)[0]).to_pandas()
    refresh_once(settings, Priors(settings), NOW + timedelta(seconds=60))
    again = DeltaTable(settings.delta_rs_location(Table.GOLD_CALIBRATION)[0]).to_pandas()
    key = ["model_version", "hour", "pricing_model", "category"]
    pd.testing.assert_frame_equal(
        first.sort_values(key).reset_index(drop=True), again.sort_values(key).reset_index(drop=True)
    )
    calibrators = DeltaTable(settings.delta_rs_location(Table.GOLD_CALIBRATORS)[0]).to_pandas()
    assert len(calibrators) == 2  # one map per refresh: the history is kept
    assert latest_calibration(settings, "1").fitted_at == (NOW + timedelta(seconds=60)).isoformat(timespec="seconds")


def test_a_refresh_starts_from_the_last_map_fitted_before_its_window(lake):
    # A map from an earlier run, 5 hours before NOW (the window starts at 08:00), and one fitted inside the
    # window, which saw some of the window's clicks and so must not be the prior (they would count twice).
    settings, _ = lake
    registered = prior_correction("1", 0.5, 0.03)
    earlier = replace(registered, kind=CalibrationKind.PLATT, fitted_at=(NOW - timedelta(hours=5)).isoformat(),
                      offset_cpa=-0.7, category_offsets={"toys": 0.5})  # fmt: skip
    inside = replace(earlier, fitted_at=(NOW - timedelta(minutes=30)).isoformat(), offset_cpa=2.0,
                     category_offsets={"toys": -1.0})  # fmt: skip
    older = replace(earlier, fitted_at=(NOW - timedelta(hours=6)).isoformat(), offset_cpa=1.5)
    write_calibrators(settings, [older, earlier, inside])
    assert calibrations_before(settings, NOW - timedelta(hours=2, minutes=30)) == {"1": earlier}
    assert calibrations_before(settings, NOW - timedelta(hours=7)) == {}

    (fitted,) = refresh_once(settings, Priors(settings), NOW).fitted
    # The window has no CPA impressions and no toys: the earlier map's offsets carry over exactly.
    assert fitted.offset_cpa == pytest.approx(-0.7, abs=1e-9)
    assert dict(fitted.category_offsets)["toys"] == pytest.approx(0.5, abs=1e-9)
    assert sorted(dict(fitted.category_offsets)) == ["fashion", "toys", "travel"]
    # What the window does show is fitted as from the registered start (test above): the truth's shift.
    by_category = dict(fitted.category_offsets)
    assert fitted.intercept + fitted.offset_cpm + by_category["travel"] == pytest.approx(TRUE_SHIFT, abs=0.15)


def test_too_few_clicks_fit_nothing_but_still_report(lake, tmp_path):
    settings, _ = lake
    strict = settings.model_copy(update={"calibration_min_clicks": 10_000})
    done = refresh_once(strict, Priors(strict), NOW)
    assert done.fitted == [] and done.hours == 4
    assert latest_calibration(strict, "1") is None


def test_clicks_that_weigh_next_to_nothing_fit_nothing(lake):
    # With a 1-minute half-life, the lake's 90 minutes of clicks (about 25 a minute) weigh about 25 x 60 / ln 2
    # / 60 = 36 clicks in all, under the 50 needed: the map in force stays rather than one refitted on the prior.
    settings, events = lake
    assert (events["event_type"] == "click").sum() > 1_000  # the premise: plenty of clicks, unweighted
    brief = settings.model_copy(update={"calibration_half_life_s": 60.0})
    done = refresh_once(brief, Priors(brief), NOW)
    assert done.fitted == [] and done.hours == 4
    assert latest_calibration(brief, "1") is None
    # Weighted over 15 minutes they are enough.
    assert len(refresh_once(settings, Priors(settings), NOW).fitted) == 1


def test_an_empty_lake_is_a_refresh_with_nothing_to_do(tmp_path, mlflow_uri):
    settings = make_settings(tmp_path, mlflow_tracking_uri=mlflow_uri)
    done = refresh_once(settings, Priors(settings), NOW)
    assert (done.impressions, done.fitted, done.hours) == (0, [], 0)


def test_the_traffic_curve_counts_auctions_per_slot_of_complete_days_only():
    origin = datetime(2026, 12, 6, 9, 0, 30, tzinfo=UTC)
    clock = DayClock(240, int(origin.timestamp()))  # 24 slots of 10 s
    # Two complete days, an auction in every slot and more in slots 3 and 20 (5 and 2 in all); the day in
    # progress is left out, and so is the day before them, which saw only its last 2 slots (a start mid-day).
    times = [origin - timedelta(seconds=15)] * 40 + [origin - timedelta(seconds=5)] * 40
    for day in (0, 1):
        start = origin + timedelta(seconds=240 * day)
        times += [start + timedelta(seconds=10 * slot + 1) for slot in range(24)]
        times += [start + timedelta(seconds=31)] * 4 + [start + timedelta(seconds=205)]
    times += [origin + timedelta(seconds=480 + 31)] * 50  # today, in slot 3
    counts, days = slot_counts(pd.Series(times), now=origin + timedelta(seconds=500), clock=clock)
    assert days == 2 and sum(counts) == 58
    assert counts[3] == 10 and counts[20] == 4 and counts[22] == counts[23] == 2


def test_a_calibrators_table_from_before_the_offsets_gains_them(tmp_path):
    settings = make_settings(tmp_path)
    old_schema = pa.schema([field for field in CALIBRATOR_SCHEMA if "offset" not in field.name])
    before = Calibration("1", CalibrationKind.PLATT, slope=0.9, intercept=-3.0, fitted_at="2026-12-06T10:00:00+00:00")
    row = {
        "calibration_id": before.calibration_id,
        **{k: v for k, v in asdict(before).items() if k in old_schema.names},
    }
    write_deltalake(settings.delta_rs_location(Table.GOLD_CALIBRATORS)[0], pa.Table.from_pylist([row], old_schema))
    assert latest_calibration(settings, "1") == before  # no offset columns: none
    after = replace(before, fitted_at="2026-12-06T10:01:00+00:00", offset_cpc=-0.4, category_offsets={"Toys": 0.3})
    write_calibrators(settings, [after])
    assert latest_calibration(settings, "1") == after
