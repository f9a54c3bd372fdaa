"""In-flight exposure, frequency and the per-event cost: the numbers the budget bound rests on."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from auction_service.serving.books import (
    AuctionStats,
    ExposureBook,
    FrequencyBook,
    Reservation,
    billable_cost_micros,
    expected_cost_micros,
)

T = datetime(2026, 11, 24, 10, tzinfo=UTC)


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


def test_exposure_is_held_until_billed_or_expired():
    book = ExposureBook()
    book.reserve(Reservation("a1", "c1", 300, T + timedelta(hours=1)))
    book.reserve(Reservation("a2", "c1", 200, T + timedelta(minutes=10)))
    book.reserve(Reservation("a3", "c2", 50, T + timedelta(hours=1)))
    assert book.reserved_micros == {"c1": 500, "c2": 50}
    assert book.release("a1").amount_micros == 300
    assert book.release("a1") is None  # a second billable event frees nothing more
    assert book.reserved_micros == {"c1": 200, "c2": 50}
    assert book.expire(T + timedelta(minutes=10)) == 1
    assert book.reserved_micros == {"c2": 50} and book.outstanding() == 1
    assert book.expire(T + timedelta(minutes=30)) == 0


def test_the_reservations_by_row_follow_the_exact_totals_for_any_campaign_order():
    book = ExposureBook()
    later = T + timedelta(hours=1)
    # More campaigns than the array starts with, so it grows while reservations come and go.
    for i in range(1_500):
        book.reserve(Reservation(f"a{i}", f"c{i % 1_100}", 10 + i, later))
    for i in range(0, 1_500, 3):
        book.release(f"a{i}")
    rows = np.array([f"c{i}" for i in (1_099, 0, 5, 1_050, 7)] + ["never-reserved"], dtype=object)
    held = book.held_by_row(rows)
    assert held.dtype == np.int64
    assert held.tolist() == [book.reserved_micros.get(campaign_id, 0) for campaign_id in rows.tolist()]
    assert held.tolist()[:2] == [1_109, 1_110 + 0]  # c1099: a1099 only; c0: a1100 (a0 released)
    assert book.held_by_row(rows) is not held and book.held_by_row(rows).tolist() == held.tolist()


def test_reservations_beyond_int64_leave_only_the_exact_totals():
    book = ExposureBook()
    later = T + timedelta(hours=1)
    book.reserve(Reservation("a1", "c1", 2**62, later))
    book.reserve(Reservation("a2", "c1", 2**62, later))  # 2**63: no int64 holds it
    assert book.reserved_micros == {"c1": 2**63}
    assert book.held_by_row(np.array(["c1"], dtype=object)) is None


def test_frequency_counts_per_user_and_campaign_and_restarts_each_utc_day():
    book = FrequencyBook()
    for _ in range(3):
        book.record_impression("u1", "c1", T)
    book.record_impression("u1", "c2", T)
    assert book.impressions_today("u1", T) == {"c1": 3, "c2": 1}
    assert book.impressions_today("u2", T) == {}
    assert book.impressions_today(None, T) == {}
    tomorrow = T + timedelta(days=1)
    assert book.impressions_today("u1", tomorrow) == {}
    book.record_impression("u1", "c1", tomorrow)
    assert book.impressions_today("u1", tomorrow) == {"c1": 1}


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
