"""The auction benchmark's pure parts: the synthetic platform, the request mix, the statistics, the naive scorer.

The benchmark itself (a service under load for minutes) runs with `make bench-auction`, not here.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from auction_service.api.schemas import AuctionRequest
from auction_service.serving.features import segment
from benchmarks import auction as bench
from ml.features import FEATURES, INTEGER_FEATURES, REQUIRED_COLUMNS, check_columns
from ml.scorer import Coded


def loadgen_output(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {
        "duration_s": 2.0,
        "latencies_ms": [float(ms) for ms in range(1, 101)],
        "status": {"200": 60, "204": 30, "503": 10},
        "errors": 2,
        "timeouts": 1,
        "sent": 110,
        "cpu_s": 0.5,
    }
    values.update(overrides)
    return values


# --- the request mix ----------------------------------------------------------------------------


def test_request_bodies_are_valid_auction_requests_drawn_from_the_user_pool() -> None:
    profiles = bench.user_profiles(200, seed=3)
    bodies = bench.request_bodies(profiles, 2_000, seed=3)
    assert bodies == bench.request_bodies(profiles, 2_000, seed=3)  # the same mix for the same seed
    requests = [AuctionRequest.model_validate(body) for body in bodies]
    known = {user["user_id"] for user in profiles}
    assert {r.user_id for r in requests} - {None} <= known
    anonymous = sum(r.user_id is None for r in requests) / len(requests)
    floors = sum(r.floor_cpm is not None for r in requests) / len(requests)
    blocking = sum(bool(r.blocked_categories) for r in requests) / len(requests)
    assert 0.03 < anonymous < 0.07 and 0.25 < floors < 0.35 and 0.07 < blocking < 0.13
    # Every attribute is sometimes stated and sometimes not, as in real traffic.
    for attribute in ("country", "age", "gender", "device_type"):
        stated = sum(getattr(r, attribute) is not None for r in requests) / len(requests)
        assert 0.5 < stated < 1.0, attribute


def test_a_stated_attribute_is_the_users_own() -> None:
    profiles = bench.user_profiles(50, seed=1)
    by_id = {user["user_id"]: user for user in profiles}
    for body in bench.request_bodies(profiles, 300, seed=1):
        user = by_id.get(body.get("user_id"))
        if user is not None:
            assert all(body[key] == user[key] for key in ("country", "age", "gender", "device_type") if key in body)


def test_some_request_countries_are_targeted_by_no_campaign() -> None:
    countries = Counter(user["country"] for user in bench.user_profiles(5_000, seed=2))
    assert set(countries) == set(bench.COUNTRIES)
    assert countries["United States"] > countries["France"] > countries["Kenya"]


# --- the synthetic platform ---------------------------------------------------------------------


def test_every_ad_has_a_feature_row_of_its_own() -> None:
    ads = bench.ad_catalog(500, seed=5)
    rows = bench.ad_feature_rows(ads, seed=5)
    assert [row["ad_id"] for row in rows] == [ad["ad_id"] for ad in ads]
    assert {ad["category"] for ad in ads} <= set(bench.CATEGORIES)
    assert all(0 < row["ad_ctr_smoothed"] < 1 for row in rows)
    assert len({row["ad_ctr_smoothed"] for row in rows}) == len(rows)  # no two candidates score alike by accident
    by_category = {(row["category"], row["category_ctr_smoothed"]) for row in rows}
    assert len(by_category) == len({row["category"] for row in rows})  # one rate per category


def test_user_rows_carry_their_segments_affinity_for_every_category() -> None:
    profiles = bench.user_profiles(100, seed=4)
    affinity = bench.segment_affinity(seed=4)
    rows = bench.user_feature_rows(profiles, affinity)
    for user, row in zip(profiles, rows, strict=True):
        assert row["segment"] == segment(user["gender"], user["age"])
        assert dict(row["category_affinity"]) == affinity[row["segment"]]
        assert set(dict(row["category_affinity"])) == set(bench.CATEGORIES)


def test_the_champion_is_trained_on_the_values_the_service_sends() -> None:
    frame = bench.champion_training_frame(400, seed=6)
    check_columns(frame, REQUIRED_COLUMNS)
    assert set(frame["country"]) <= set(bench.COUNTRIES)
    assert set(frame["ad_category"]) <= set(bench.CATEGORIES)


# --- statistics ---------------------------------------------------------------------------------


def test_a_run_counts_auctions_only_and_every_other_answer_as_an_error() -> None:
    result = bench.run_result("compiled", 1, loadgen_output(), {"service": 0.9})
    assert result.auctions_per_s == 45.0  # (60 filled + 30 no fill) / 2 s; the 503s are not auctions
    assert result.fill_rate == pytest.approx(60 / 90)
    assert result.errors == 12  # 2 connection errors + 10 responses that were neither 200 nor 204
    assert result.responses == 100
    assert (result.p50_ms, result.p99_ms) == pytest.approx((50.5, 99.01))
    assert result.cpu_share == {"service": 0.9}


def test_a_run_without_a_single_response_has_no_percentiles() -> None:
    result = bench.run_result("naive", 1, loadgen_output(latencies_ms=[], status={}, errors=0))
    assert (result.auctions_per_s, result.fill_rate, result.errors) == (0.0, 0.0, 0)
    assert math.isnan(result.p50_ms) and math.isnan(result.p99_ms)


def test_medians_are_taken_per_figure_over_the_repeats() -> None:
    runs = [
        bench.run_result("compiled", 1, loadgen_output(duration_s=1.0), {"service": 1.0, "other": 0.1}),
        bench.run_result("compiled", 2, loadgen_output(duration_s=2.0), {"service": 0.8}),
        bench.run_result("compiled", 3, loadgen_output(duration_s=3.0), {"service": 0.9, "other": 0.3}),
    ]
    medians = bench.mode_medians(runs)
    assert medians["repeats"] == 3
    assert medians["auctions_per_s"] == 45.0  # of 90, 45 and 30
    assert medians["cpu_share"] == {"other": 0.1, "service": 0.9}  # a process a run did not report counts 0


def test_ratios_favour_the_compiled_service_when_above_one_and_targets_are_judged_on_it() -> None:
    compiled = {"auctions_per_s": 1_600.0, "p50_ms": 10.0, "p99_ms": 20.0}
    naive = {"auctions_per_s": 0.5, "p50_ms": 40_000.0, "p99_ms": 60_000.0}
    compared = bench.comparison(compiled, naive)
    assert compared["throughput_ratio"] == 3_200.0
    assert (compared["p50_ratio"], compared["p99_ratio"]) == (4_000.0, 3_000.0)
    assert compared["target_auctions_per_s_met"] and compared["target_p99_met"]
    slow = bench.comparison({**compiled, "auctions_per_s": 1_499.9, "p99_ms": 25.1}, None)
    assert slow["throughput_ratio"] is None
    assert not slow["target_auctions_per_s_met"] and not slow["target_p99_met"]


def test_the_table_names_the_targets_and_warns_of_a_busy_machine() -> None:
    medians = {
        "compiled": {
            "auctions_per_s": 900.0, "p50_ms": 30.0, "p99_ms": 80.0, "fill_rate": 1.0, "errors": 0,
            "cpu_share": {"service": 1.0, "other": 0.9},
        },
        "naive": {
            "auctions_per_s": 0.4, "p50_ms": 40_000.0, "p99_ms": 79_000.0, "fill_rate": 1.0, "errors": 0,
            "cpu_share": {"service": 1.0, "other": 0.0},
        },
    }  # fmt: skip
    text = bench.table(medians, bench.comparison(medians["compiled"], medians["naive"]))
    assert "2,250.0x the auctions/s" in text
    assert ">= 1,500 auctions/s MISSED" in text and "p99 <= 25 ms MISSED" in text
    assert "WARNING: other processes used 0.90 cores" in text
    quiet = {mode: {**m, "cpu_share": {"service": 1.0}} for mode, m in medians.items()}
    assert "WARNING" not in bench.table(quiet, bench.comparison(quiet["compiled"], quiet["naive"]))


# --- the naive baseline -------------------------------------------------------------------------


class RecordingModel:
    """A pyfunc stand-in: P(click) = hour_of_day / 100, and every frame it was given."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        self.frames.append(frame)
        pctr = frame["hour_of_day"].to_numpy() / 100
        return np.column_stack([1 - pctr, pctr])


def test_the_naive_scorer_predicts_one_row_at_a_time_with_the_models_types() -> None:
    batch = {name: [None, None, None] for name in FEATURES} | {
        "hour_of_day": np.array([3.0, 14.0, 23.0]),
        "day_of_week": [1, 2, 7],
    }
    model = RecordingModel()
    pctr = bench.PerRowPyfuncScorer(model).score(batch)
    np.testing.assert_allclose(pctr, [0.03, 0.14, 0.23])
    assert [len(frame) for frame in model.frames] == [1, 1, 1]
    for frame in model.frames:
        assert list(frame.columns) == list(FEATURES)
        assert all(isinstance(frame[name].iloc[0], (int, np.integer)) for name in INTEGER_FEATURES)


def test_the_naive_scorer_takes_the_coded_columns_the_service_passes() -> None:
    batch = {name: [None, None] for name in FEATURES} | {
        "hour_of_day": np.array([5.0, 9.0]),
        "day_of_week": [1, 2],
        "country": Coded.repeat("Norway", 2),
        "ad_category": Coded(("Books", "Travel"), np.array([1, 0])),
    }
    model = RecordingModel()
    np.testing.assert_allclose(bench.PerRowPyfuncScorer(model).score(batch), [0.05, 0.09])
    assert [frame["ad_category"].iloc[0] for frame in model.frames] == ["Travel", "Books"]
    assert [frame["country"].iloc[0] for frame in model.frames] == ["Norway", "Norway"]
