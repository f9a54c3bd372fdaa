"""The auction benchmark's parts: the synthetic platform, the request mix, the schedule, the statistics and the
headline ratios, the naive scorer, and the echo baseline served by two processes on one port.

The benchmark itself (a service under load for minutes) runs with `make bench-auction`, not here.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from auction_service.api.schemas import AuctionRequest
from auction_service.serving.features import segment
from benchmarks import auction as bench
from benchmarks import echo
from benchmarks.harness import isolated_settings
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


# --- the schedule ------------------------------------------------------------------------------


def test_replica_counts_are_parsed_once_each_in_the_order_given() -> None:
    assert bench.parse_replicas("1") == (1,)
    assert bench.parse_replicas("1, 2,1") == (1, 2)
    assert bench.parse_replicas("4,2") == (4, 2)
    for bad in ("0", "two", "1,", "65"):
        with pytest.raises(ValueError):
            bench.parse_replicas(bad)


def test_every_round_runs_the_echo_before_the_service_at_each_replica_count_and_the_naive_last() -> None:
    assert bench.schedule(("echo", "compiled"), (1, 2)) == [("echo", 1), ("compiled", 1), ("echo", 2), ("compiled", 2)]
    assert bench.schedule(("compiled", "naive", "echo"), (1,)) == [("echo", 1), ("compiled", 1), ("naive", 1)]
    assert bench.schedule(("naive",), (1, 2)) == [("naive", 1)]  # the naive baseline runs on one replica


def test_the_default_champion_is_the_production_family() -> None:
    assert bench.Options().family == bench.PRODUCTION_FAMILY == "gradient_boosted_trees"
    assert bench.PRODUCTION_FAMILY in bench.FAMILIES
    assert bench.Options().modes == ("echo", "compiled")  # the naive baseline only when asked for


# --- statistics ---------------------------------------------------------------------------------


def test_a_run_counts_auctions_only_and_every_other_answer_as_an_error() -> None:
    result = bench.run_result("compiled", 1, 1, loadgen_output(), {"service": 0.9})
    assert result.per_s == 45.0  # (60 filled + 30 no fill) / 2 s; the 503s are not auctions
    assert result.fill_rate == pytest.approx(60 / 90)
    assert result.errors == 12  # 2 connection errors + 10 responses that were neither 200 nor 204
    assert result.responses == 100
    assert (result.p50_ms, result.p99_ms) == pytest.approx((50.5, 99.01))
    assert result.cpu_share == {"service": 0.9}
    assert result.label == "compiled-1"


def test_the_echo_counts_its_200s_only_and_has_no_fill_rate() -> None:
    result = bench.run_result("echo", 2, 1, loadgen_output(status={"200": 90, "204": 4, "503": 6}))
    assert result.per_s == 45.0  # 90 echoes / 2 s
    assert result.errors == 12  # 2 connection errors + 4 no-content + 6 unavailable: an echo answers 200
    assert result.fill_rate is None
    assert result.label == "echo-2"


def test_a_run_without_a_single_response_has_no_percentiles() -> None:
    result = bench.run_result("naive", 1, 1, loadgen_output(latencies_ms=[], status={}, errors=0))
    assert (result.per_s, result.fill_rate, result.errors) == (0.0, 0.0, 0)
    assert math.isnan(result.p50_ms) and math.isnan(result.p99_ms)


def test_medians_are_taken_per_figure_over_the_repeats_of_each_label() -> None:
    runs = [
        bench.run_result("compiled", 1, 1, loadgen_output(duration_s=1.0), {"service": 1.0, "other": 0.1}),
        bench.run_result("echo", 1, 1, loadgen_output(duration_s=1.0, status={"200": 100})),
        bench.run_result("compiled", 1, 2, loadgen_output(duration_s=2.0), {"service": 0.8}),
        bench.run_result("echo", 1, 2, loadgen_output(duration_s=4.0, status={"200": 100})),
        bench.run_result("compiled", 1, 3, loadgen_output(duration_s=3.0), {"service": 0.9, "other": 0.3}),
        bench.run_result("echo", 1, 3, loadgen_output(duration_s=5.0, status={"200": 100})),
    ]
    medians = bench.all_medians(runs)
    assert list(medians) == ["compiled-1", "echo-1"]  # in the order they first ran
    compiled, echoed = medians["compiled-1"], medians["echo-1"]
    assert compiled["repeats"] == 3
    assert compiled["per_s"] == 45.0  # of 90, 45 and 30
    assert compiled["unit"] == "auctions/s" and echoed["unit"] == "requests/s"
    assert compiled["fill_rate"] == pytest.approx(60 / 90)
    assert compiled["cpu_share"] == {"other": 0.1, "service": 0.9}  # a process a run did not report counts 0
    assert echoed["per_s"] == 25.0  # of 100, 25 and 20
    assert echoed["fill_rate"] is None


def medians_of(per_s: dict[str, float], p99_ms: dict[str, float], other: float = 0.0) -> dict[str, dict]:
    return {
        name: {
            "per_s": rate, "unit": "requests/s" if name.startswith("echo") else "auctions/s", "p50_ms": 2.0,
            "p99_ms": p99_ms[name], "fill_rate": None if name.startswith("echo") else 0.9, "errors": 0,
            "cpu_share": {"service": 1.0, "loadgen": 0.4, "other": other},
        }
        for name, rate in per_s.items()
    }  # fmt: skip


def test_the_headline_is_auctions_per_s_over_the_echos_requests_per_s_at_each_replica_count() -> None:
    medians = medians_of(
        {"echo-1": 6_000.0, "compiled-1": 1_800.0, "echo-2": 10_000.0, "compiled-2": 2_900.0},
        {"echo-1": 4.0, "compiled-1": 15.0, "echo-2": 5.0, "compiled-2": 30.0},
    )
    one, two = bench.headline(medians, (1, 2))
    assert (one["replicas"], one["ratio"], one["ratio_met"]) == (1, 0.3, True)  # 1,800 / 6,000, exactly the target
    assert (one["p99_ms"], one["target_p99_ms"], one["p99_met"]) == (15.0, 15.0, True)  # <= 15 ms
    assert (two["replicas"], two["ratio"], two["ratio_met"]) == (2, 0.29, False)  # 2,900 / 10,000
    assert (two["target_p99_ms"], two["p99_met"]) == (None, None)  # the p99 target is 1 replica's
    assert (two["auctions_per_s"], two["echo_requests_per_s"]) == (2_900.0, 10_000.0)


def test_a_replica_count_without_both_runs_has_no_headline_and_a_slow_p99_misses() -> None:
    medians = medians_of({"echo-1": 5_000.0, "compiled-1": 2_000.0, "compiled-2": 3_000.0},
                         {"echo-1": 3.0, "compiled-1": 15.1, "compiled-2": 9.0})  # fmt: skip
    (one,) = bench.headline(medians, (1, 2))
    assert (one["ratio"], one["ratio_met"], one["p99_met"]) == (0.4, True, False)
    zero_echo = medians_of({"echo-1": 0.0, "compiled-1": 10.0}, {"echo-1": 1.0, "compiled-1": 1.0})
    assert bench.headline(zero_echo, (1,))[0]["ratio"] is None and not bench.headline(zero_echo, (1,))[0]["ratio_met"]


def test_the_headline_gives_the_closed_loops_mean_latency_and_the_open_rate_runs_percentiles() -> None:
    medians = medians_of(
        {"echo-1": 6_000.0, "compiled-1": 1_600.0, "paced-1": 800.0},
        {"echo-1": 4.0, "compiled-1": 30.0, "paced-1": 6.5},
    )
    (one,) = bench.headline(medians, (1,), connections=32)
    assert one["closed_loop_mean_ms"] == 20.0  # Little's law: 32 connections / 1,600 auctions/s
    assert (one["p99_met"], one["paced_auctions_per_s"], one["paced_p99_ms"], one["paced_p99_met"]) == (
        False, 800.0, 6.5, True,
    )  # fmt: skip
    lines = bench.table(medians, [one], cores=2).splitlines()
    assert any(line.endswith("the closed loop's mean latency is connections / rate = 20.0 ms") for line in lines)
    assert "  at an open rate of 800.0 auctions/s: p50 2.0 ms, p99 6.5 ms (<= 15 ms: met)" in lines
    (unpaced,) = bench.headline(
        medians_of({"echo-1": 6_000.0, "compiled-1": 1_600.0}, {"echo-1": 4.0, "compiled-1": 9.0}), (1,)
    )
    assert (unpaced["closed_loop_mean_ms"], unpaced["paced_p99_ms"], unpaced["paced_p99_met"]) == (None, None, None)


def test_the_naive_ratios_favour_the_compiled_service_when_above_one() -> None:
    compiled = {"per_s": 1_600.0, "p50_ms": 10.0, "p99_ms": 20.0}
    naive = {"per_s": 0.5, "p50_ms": 40_000.0, "p99_ms": 60_000.0}
    compared = bench.naive_comparison(compiled, naive)
    assert compared == {"throughput_ratio": 3_200.0, "p50_ratio": 4_000.0, "p99_ratio": 3_000.0}
    assert bench.naive_comparison(compiled, None) is None


def test_the_table_gives_the_headline_ratios_against_their_targets_and_how_the_cores_are_shared() -> None:
    medians = medians_of(
        {"echo-1": 6_000.0, "compiled-1": 1_500.0, "echo-2": 9_000.0, "compiled-2": 3_150.0},
        {"echo-1": 4.0, "compiled-1": 20.0, "echo-2": 5.0, "compiled-2": 30.0},
        other=0.9,
    )
    text = bench.table(medians, bench.headline(medians, (1, 2)), cores=2)
    lines = text.splitlines()
    assert lines[1].split()[:3] == ["echo-1", "6,000.0", "requests/s"] and lines[1].split()[5] == "-"  # no fill
    assert lines[2].split()[:3] == ["compiled-1", "1,500.0", "auctions/s"] and lines[2].split()[5] == "90.0%"
    assert (
        "1 replica: compiled-1 1,500.0 auctions/s / echo-1 6,000.0 requests/s = 0.25x (target >= 0.30x: MISSED); "
        "p99 20.0 ms (target <= 15 ms: MISSED)" in lines
    )
    assert (
        "2 replicas: compiled-2 3,150.0 auctions/s / echo-2 9,000.0 requests/s = 0.35x (target >= 0.30x: met)" in lines
    )
    assert "loadgen 0.40" in lines[1]
    assert "cores: 2, none pinned" in text and "load generator (one node process)" in text
    assert "WARNING: other processes used 0.90 cores" in text
    assert "naive" not in text
    naive = bench.naive_comparison({"per_s": 1_500.0, "p50_ms": 2.0, "p99_ms": 20.0},
                                   {"per_s": 0.5, "p50_ms": 40_000.0, "p99_ms": 60_000.0})  # fmt: skip
    quiet = {name: {**m, "cpu_share": {"service": 1.0}} for name, m in medians.items()}
    quiet_text = bench.table(quiet, bench.headline(quiet, (1, 2)), naive, cores=2)
    assert "WARNING" not in quiet_text
    assert "3,000.0x the auctions/s" in quiet_text and "(not the headline)" in quiet_text


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


# --- the echo baseline --------------------------------------------------------------------------


def test_the_echo_answers_the_body_as_sent_from_every_process_on_its_port(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path)
    body = b'{"user_id":"bench-u00001","country":"Fran\xc3\xa7e","floor_cpm":"0.50"}'
    with bench.server_processes(settings, "echo", 2, tmp_path / "logs" / "echo") as (url, pids):
        answered_by: set[int] = set()
        for _ in range(200):  # a new connection each time: the kernel spreads them over the two sockets
            response = httpx.post(f"{url}{echo.ROUTE}", content=body, headers={"content-type": "application/json"})
            assert response.status_code == 200
            assert response.content == body
            assert response.headers["content-type"] == "application/json"
            answered_by.add(int(response.headers[echo.PID_HEADER]))
            if len(answered_by) == 2:
                break
        assert answered_by == set(pids)


def test_an_open_rate_run_sends_on_its_schedule_over_the_connections_it_is_given(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path)
    # The load generator `make setup` installed under the checkout's .local/.
    loadgen = bench.load_generator(settings.model_copy(update={"local_dir": Path(__file__).parents[2] / ".local"}))
    with bench.server_processes(settings, "echo", 1, tmp_path / "logs" / "echo") as (url, _pids):
        ran = bench.drive(loadgen, f"{url}{echo.ROUTE}", ['{"a":1}', '{"b":2}'], 4, 1.5, 5.0, rate=200)
    assert ran["sent"] == 300 and ran["status"] == {"200": 300}  # 200/s for 1.5 s, each answered
    assert ran["errors"] == 0 and len(ran["latencies_ms"]) == 300
    assert 1.5 <= ran["duration_s"] < 5.0
