"""A replica's copy of the exposure, and the per-event cost: the numbers the budget bound rests on."""

import numpy as np
import pytest

from auction_service.serving.books import (
    LATENCY_WINDOW,
    AuctionStats,
    ExposureBook,
    billable_cost_micros,
    expected_cost_micros,
)


@pytest.mark.parametrize(
    ("pricing_model", "price", "cost"),
    [("CPM", 2_500_000, 2_500), ("CPM", 2_500_001, 2_501), ("CPC", 410_000, 410_000), ("CPA", 9_000_000, 9_000_000)],
)
def test_a_billable_event_costs_its_clearing_price_and_cpm_a_thousandth_rounded_up(pricing_model, price, cost):
    assert billable_cost_micros(pricing_model, price) == cost


def test_reservations_are_the_expected_cost():
    assert expected_cost_micros("CPM", 2_000_000, pctr=0.05, pcvr=0.1) == 2_000  # the impression is certain
    assert expected_cost_micros("CPC", 400_000, pctr=0.05, pcvr=0.1) == 20_000  # 400,000 x 0.05
    assert expected_cost_micros("CPA", 10_000_000, pctr=0.05, pcvr=0.1) == 50_000  # 10,000,000 x 0.005
    assert expected_cost_micros("CPC", 400_000, pctr=1.0, pcvr=0.1) == 400_000


def test_the_exposure_copy_is_replaced_whole():
    book = ExposureBook()
    book.replace({"c1": 500, "c2": 50})
    assert book.reserved_micros == {"c1": 500, "c2": 50}
    book.replace({"c2": 70, "c3": 0})
    assert book.reserved_micros == {"c2": 70}  # c1 freed, c3 holds nothing
    assert book.held_by_row(np.array(["c1", "c2", "c3"], dtype=object)).tolist() == [0, 70, 0]


def test_the_exposure_by_row_follows_the_exact_totals_for_any_campaign_order():
    book = ExposureBook()
    # More campaigns than the array starts with, so it grows while totals come and go.
    book.replace({f"c{i}": 10 + i for i in range(1_100)})
    book.replace({f"c{i}": 10 + i for i in range(1_100) if i % 3})
    rows = np.array([f"c{i}" for i in (1_099, 0, 5, 1_050, 7)] + ["never-reserved"], dtype=object)
    held = book.held_by_row(rows)
    assert held.dtype == np.int64
    assert held.tolist() == [1_109, 0, 15, 0, 17, 0]  # 0 and 1050 are multiples of 3: freed
    assert book.held_by_row(rows) is not held and book.held_by_row(rows).tolist() == held.tolist()


def test_exposure_beyond_int64_leaves_only_the_exact_totals():
    book = ExposureBook()
    book.replace({"c1": 2**63})  # no int64 holds it
    assert book.reserved_micros == {"c1": 2**63}
    assert book.held_by_row(np.array(["c1"], dtype=object)) is None


def test_stats_fill_rate_and_average_pctr():
    stats = AuctionStats()
    stats.auction(True, 0.04, scored=10)
    stats.auction(True, 0.02, scored=5)
    stats.auction(False, None, scored=0)
    stats.event("rejected", "unknown auction")
    snapshot = stats.snapshot()
    assert snapshot["fill_rate"] == pytest.approx(2 / 3)
    assert snapshot["average_pctr"] == pytest.approx(0.03)
    assert snapshot["candidates_scored"] == 15
    assert snapshot["rejected_events_by_reason"] == {"unknown auction": 1}


def test_stats_latency_is_of_the_newest_auctions_by_nearest_rank_and_no_bids_count_by_kind():
    stats = AuctionStats()
    assert stats.snapshot()["latency_ms"] is None
    for latency in range(1, 101):  # 1..100 ms
        stats.auction(True, 0.01, scored=1, latency_ms=float(latency))
    assert stats.snapshot()["latency_ms"] == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "auctions": 100}
    for _ in range(LATENCY_WINDOW):  # the window moves on: the first hundred are forgotten
        stats.auction(False, None, scored=0, latency_ms=2.0)
    assert stats.snapshot()["latency_ms"] == {"p50": 2.0, "p95": 2.0, "p99": 2.0, "auctions": LATENCY_WINDOW}
    stats.no_bid("tmax too short")
    stats.no_bid("tmax too short")
    stats.no_bid("invalid traffic")
    assert stats.snapshot()["openrtb_no_bids"] == {"tmax too short": 2, "invalid traffic": 1}
