"""The bid-filter mix bench: its OpenRTB mix, the auction log it reads back, the service's counts, the figures per
kind of request, the headline; and one tiny run of the whole bench (Kafka, the shared store, the service, the
load generator) without and with a filter trained on its own log."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from typer.testing import CliRunner

from adstream.events import STANDARD_BANNER_SIZES, AuctionRecord, PricingModel
from auction_service.serving import openrtb
from auction_service.serving.metrics import ServiceMetrics
from benchmarks import bid_filter_mix as bench
from benchmarks import cli
from benchmarks.auction import user_profiles
from ml.bid_filter import request_features, train_bid_filter
from simulator.traffic import Unfillable

KINDS = {bench.FILLABLE, *(kind.value for kind in Unfillable)}


def test_the_mix_is_the_simulators_openrtb_requests_with_the_unfillable_share_asked():
    mix = bench.mix_bodies(user_profiles(500, seed=3), 2_000, seed=3, unfillable_share=0.6, year=2026)
    assert mix == bench.mix_bodies(user_profiles(500, seed=3), 2_000, seed=3, unfillable_share=0.6, year=2026)
    kinds = Counter(mix.kinds)
    assert set(kinds) == KINDS and abs(1 - kinds[bench.FILLABLE] / 2_000 - 0.6) < 0.04
    for body, kind in zip(mix.bodies, mix.kinds, strict=True):
        request = openrtb.BidRequest.model_validate(body)
        assert openrtb.spec_errors(request) == []
        (imp,) = request.imp
        refused = openrtb.no_bid_reason(request, min_tmax_ms=20)
        assert (refused is not None) == (kind == Unfillable.DOOH), kind  # only DOOH is refused before any auction
        if kind == bench.FILLABLE:
            assert imp.bidfloor == 0 and request.dooh is None
            if imp.media == "banner":
                assert set(imp.banner.sizes()) & set(STANDARD_BANNER_SIZES)
            else:
                assert "video/mp4" in imp.video.mimes
    assert set(bench.mix_bodies(user_profiles(50, seed=1), 200, seed=1, unfillable_share=0.0, year=2026).kinds) == {
        bench.FILLABLE
    }


def auction_record(at: datetime, n: int, *, placement: str, filled: bool, request_id: str | None) -> dict:
    price = 2_000_000 if filled else None
    return AuctionRecord(
        auction_id=f"a{n}", event_time=at, floor_micros=0, candidate_count=3 if filled else 0, filled=filled,
        pricing_model=PricingModel.CPM if filled else None, clearing_price_micros=price,
        clearing_price_cpm_micros=price, ecpm_micros=price, latency_ms=0.4, publisher_id="bench-exchange",
        request_id=request_id, imp_id="1", domain="news.example", placement=placement, device_type="mobile",
        country="Norway", channel="web", content_type="display",
    ).model_dump(mode="json")  # fmt: skip


def test_the_auction_records_read_back_are_the_log_the_filter_trains_on():
    began = datetime(2026, 12, 1, 10, tzinfo=UTC)
    records = [auction_record(began - timedelta(hours=1), 0, placement="300x250", filled=True, request_id="old")]
    for n in range(1, 3_001):  # an odd slot never fills; a rectangle fills 9 times in 10
        at = began + timedelta(milliseconds=5 * n)
        odd = n % 2 == 0
        records.append(auction_record(at, n, placement="88x31" if odd else "300x250", filled=not odd and n % 10 != 1,
                                      request_id=f"r{n}"))  # fmt: skip
    records.append(auction_record(began, 9_999, placement="300x250", filled=True, request_id=None))  # /v1/auction
    log = bench.auction_log(records, since=began)
    assert len(log) == 3_001 and log["event_time"].is_monotonic_increasing  # the earlier run's record is left out
    assert str(log["clearing_price_cpm_micros"].dtype) == "Int64" and str(log["bid_filter_explored"].dtype) == "boolean"
    assert log["bid_filter_explored"].isna().all()  # no filter served: every request is a training request
    trained = train_bid_filter(log)
    assert trained.metrics["roc_auc"] > 0.9 and len(trained.train) + len(trained.holdout) == 3_000  # OpenRTB only
    shed = trained.bid_filter.scores(request_features(trained.holdout)) < trained.bid_filter.threshold
    assert shed[(trained.holdout["placement"] == "88x31").to_numpy()].all()
    assert not shed[(trained.holdout["placement"] == "300x250").to_numpy()].any()


def test_the_filters_counts_are_read_from_the_services_metrics_page():
    metrics = ServiceMetrics()
    meter = metrics.bid_filter
    meter.screened, meter.shed, meter.explored = 1_000, 640, 50
    meter.explored_revenue_cpm_micros, meter.explored_revenue_below_threshold_cpm_micros = 90_000, 600
    assert bench.meter_reading(generate_latest(metrics.registry).decode()) == {
        "screened": 1_000, "shed": 640, "explored": 50,
        "explored_revenue_below_threshold": 600, "explored_revenue_above_threshold": 89_400,
    }  # fmt: skip


def loadgen_output(by_kind: dict, duration_s: float = 2.0) -> dict:
    answered = sum(sum(kind["status"].values()) for kind in by_kind.values())
    return {"duration_s": duration_s, "latencies_ms": [1.0, 2.0, 3.0], "status": {"200": answered}, "errors": 0,
            "timeouts": 0, "sent": answered, "cpu_s": 0.4, "by_kind": by_kind}  # fmt: skip


SHED = "the bid-request filter: no imp is likely to fill"
NO_CLEARING = "no campaign clears the floor of any imp"


def answers(filled: int, shed: int, other: int, reason: str = NO_CLEARING) -> dict:
    return {"status": {"200": filled, "204": shed + other}, "reasons": {SHED: shed, reason: other}}


def test_answers_are_counted_per_kind_and_a_shed_request_is_a_204_the_filter_named():
    counts = bench.answers_by_kind(
        {
            "fillable": answers(90, 2, 8),
            "size": answers(0, 95, 5),
            "dooh": answers(0, 0, 40, "DOOH inventory is not bought"),
        }
    )
    assert counts == {
        "dooh": {"answered": 40, "filled": 0, "no_bid": 40, "shed": 0},
        "fillable": {"answered": 100, "filled": 90, "no_bid": 10, "shed": 2},
        "size": {"answered": 100, "filled": 0, "no_bid": 100, "shed": 95},
    }


def mix_run(mode: str, repeat: int, per_s: float, shed: int, explored_below: float = 0.0) -> bench.MixRun:
    by_kind = {
        "fillable": answers(95, 0, 5) if mode == "unfiltered" else answers(94, 1, 5),
        "size": answers(0, shed, 100 - shed),
        "floor": answers(0, shed // 2, 100 - shed // 2),
        "dooh": answers(0, 0, 100, "DOOH inventory is not bought: only site and app"),
    }
    run = bench.mix_run(mode, repeat, loadgen_output(by_kind, duration_s=400 / per_s),
                        {"explored": 10.0, "explored_revenue_below_threshold": explored_below,
                         "explored_revenue_above_threshold": 1_000.0 - explored_below})  # fmt: skip
    assert run.per_s == pytest.approx(per_s)
    return run


def test_the_headline_is_the_speed_up_the_unfillable_shed_the_fill_and_the_pooled_revenue_loss():
    runs = [
        mix_run("unfiltered", 0, 500.0, shed=0),  # the log run: not measured
        mix_run("unfiltered", 1, 1_000.0, shed=0),
        mix_run("filtered", 1, 1_600.0, shed=90, explored_below=5.0),
        mix_run("filtered", 2, 1_400.0, shed=80, explored_below=10.0),
        mix_run("unfiltered", 2, 1_000.0, shed=0),
        mix_run("unfiltered", 3, 1_200.0, shed=0),
        mix_run("filtered", 3, 1_500.0, shed=100, explored_below=30.0),
    ]
    h = bench.headline(runs)
    assert (h["unfiltered_per_s"], h["filtered_per_s"], h["speedup"]) == (1_000.0, 1_500.0, 1.5)
    assert h["speedup_met"] and h["speedup_by_round"] == [1.6, 1.4, 1.25]
    # size 90/100 and floor 45/100 shed in the median run: DOOH is answered before the filter and counts apart.
    assert h["unfillable_shed_share"] == pytest.approx(135 / 200) and not h["unfillable_shed_met"]
    assert h["unfillable_without_auction_share"] == pytest.approx((135 + 100) / 300)
    assert (h["fillable_fill_unfiltered"], h["fillable_fill_filtered"]) == (0.95, 0.94)
    assert h["fillable_shed_share"] == 0.01
    assert h["revenue_loss_estimate"] == pytest.approx(45 / 3_000) and not h["revenue_loss_met"]  # pooled, > 1 %
    assert h["explored"] == 30.0
    with pytest.raises(ValueError, match="both unfiltered and filtered"):
        bench.headline([run for run in runs if run.mode == "unfiltered"])


def test_the_table_states_each_figure_against_its_target():
    runs = [mix_run("unfiltered", 1, 1_000.0, shed=0), mix_run("filtered", 1, 1_400.0, shed=96, explored_below=5.0)]
    result = {
        "headline": bench.headline(runs),
        "setup": {"request_bodies": 400, "unfillable_share": 0.6, "bodies_by_kind": {"dooh": 100}, "cores": 2},
        "bid_filter": {"version": "1", "threshold": 0.0123, "log_requests": 4_000,
                       "holdout": {"revenue_retained": 0.996, "shed_share": 0.55, "roc_auc": 0.99}},
    }  # fmt: skip
    text = bench.table(result)
    assert "= 1.40x (target >= 1.5x: MISSED); by round: 1.40x" in text
    assert "72.0% of the unfillable requests the filter screened (target >= 80%: MISSED); by kind: floor 48.0%" in text
    assert "fill 95.0% unfiltered, 94.0% filtered; 1.0% of them shed" in text
    assert "0.5% of the revenue of 10 explored requests (target <= 1%: met)" in text


def test_bad_options_are_usage_errors():
    result = CliRunner().invoke(cli.app, ["bench", "bid-filter-mix", "--family", "forest"])
    assert result.exit_code == 2 and "'forest' is not one of" in result.stderr
    result = CliRunner().invoke(cli.app, ["bench", "bid-filter-mix", "--unfillable-share", "1.5"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_a_tiny_run_trains_a_filter_on_its_own_log_and_measures_the_service_without_and_with_it(tmp_path):
    output = tmp_path / "bid_filter_mix.json"
    argv = ["bench", "bid-filter-mix", "--duration", "2", "--warmup", "0.5", "--repeats", "1", "--log-duration", "6",
            "--connections", "8", "--campaigns", "200", "--family", "logistic_regression",
            "--workdir", str(tmp_path / "work"), "--output", str(output)]  # fmt: skip
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text())
    assert [(run["mode"], run["repeat"]) for run in report["runs"]] == [("unfiltered", 1), ("filtered", 1)]
    log_run = report["log_run"]
    assert log_run["auction_records"] > 0 and log_run["meter"]["screened"] == 0  # no filter: every request auctioned
    unfiltered, filtered = report["runs"]
    assert unfiltered["meter"]["screened"] == 0 and filtered["meter"]["screened"] > 0
    # DOOH never reaches an auction; nothing unfillable fills, with or without the filter.
    for run in (log_run, unfiltered, filtered):
        assert all(run["by_kind"][kind]["filled"] == 0 for kind in KINDS - {bench.FILLABLE})
        assert run["by_kind"][bench.FILLABLE]["filled"] > 0
    # The filter the bench trained is the one served, and it sheds the odd slot sizes it saw never fill.
    assert report["bid_filter"]["version"] == "1"
    assert filtered["by_kind"]["size"]["shed"] > 0 and unfiltered["by_kind"]["size"]["shed"] == 0
    # The service's own count and the answers agree, but for the requests in flight when the load stopped.
    assert abs(filtered["meter"]["shed"] - sum(kind["shed"] for kind in filtered["by_kind"].values())) <= 8
    assert report["headline"]["speedup"] > 0
    assert "speed-up: filtered" in result.stdout and "revenue loss estimated on the exploration slice" in result.stdout
