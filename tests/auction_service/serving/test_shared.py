"""The shared store's scripts on a real redis-server: holds, settlements, sweeps, the ledger's heal, a rebuild."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from auction_service.campaign_store import store
from auction_service.serving.shared import (
    Hold,
    HoldRefused,
    RebuildSource,
    Settlement,
    SharedBooks,
    SharedStoreUnavailable,
    day_tag,
)
from tests.conftest import shared_namespace

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()


@pytest.fixture
def books(shared_store_url):
    books = SharedBooks(shared_store_url, namespace=shared_namespace(), timeout_s=1.0, served_s=600, auction_ttl_s=3600)
    yield books
    books.close()


def served(auction_id: str, campaign_id: str = "c1", reserved: int = 400, user: str | None = "u1", **fields):
    return store.ServedAuctionRow(
        auction_id=auction_id, campaign_id=campaign_id, advertiser_id="adv", ad_id="ad", pricing_model="CPM",
        clearing_price_micros=reserved * 1000, billable_cost_micros=reserved, reserved_micros=reserved, pctr=0.05,
        user_id=user, device_type="desktop", channel="web", content_type="news", model_version="1",
        served_at=NOW, expires_at=NOW + timedelta(hours=1), **fields,
    )  # fmt: skip


def hold(books, row, total=1_000, daily=1_000, spent=0, spent_today=0, cap: int | None = 5, ledger_day=None):
    return books.hold(Hold(row, total, daily, spent, spent_today, frequency_cap=cap, ledger_day=ledger_day))


def test_a_hold_takes_budget_while_some_is_left_then_refuses(books):
    # 0, 400, 800 held are below the 1,000 budget: the third hold passes it by its own 400, the fourth is refused.
    assert [hold(books, served(f"a{i}")) for i in range(4)] == [None, None, None, HoldRefused.TOTAL_BUDGET]
    assert books.exposure(TODAY) == ({"c1": 1_200}, {"c1": 1_200}, {}, {})
    assert books.served(["a0", "a3"]) == {"a0": served("a0"), "a3": None}  # a refused hold leaves no auction
    assert books.frequency_today("u1", TODAY) == {"c1": 3}  # a0, a1, a2


def test_the_daily_budget_and_the_ledgers_own_spend_count(books):
    assert hold(books, served("a0"), total=10_000, spent_today=1_000) is HoldRefused.DAILY_BUDGET  # none left today
    assert hold(books, served("a1", reserved=300), total=10_000, spent=500, spent_today=700) is None
    # The ledger's figures were higher than the mirror's: the mirror now holds them ...
    assert books.exposure(TODAY) == ({"c1": 300}, {"c1": 300}, {"c1": 500}, {"c1": 700})
    assert hold(books, served("a2", reserved=1)) is HoldRefused.DAILY_BUDGET  # 700 spent + 300 held today
    # ... and counts them for a replica whose figures are older: 500 spent + 300 held leave nothing of 800.
    assert hold(books, served("a3", reserved=1), total=800, daily=10_000) is HoldRefused.TOTAL_BUDGET
    assert hold(books, served("a4", reserved=100), total=801, daily=10_000) is None


def test_a_snapshot_of_the_day_before_neither_refuses_the_hold_nor_sets_todays_spend(books):
    # The replica loaded its campaigns yesterday, when this one had spent its whole daily budget; the
    # auction is today's. Yesterday's figure says nothing of today: the hold passes and today's mirror stays empty.
    yesterday = TODAY - timedelta(days=1)
    assert hold(books, served("a0"), total=10_000, spent_today=1_000, ledger_day=yesterday) is None
    assert books.exposure(TODAY) == ({"c1": 400}, {"c1": 400}, {}, {})
    # The same figure for today's snapshot refuses, as above.
    assert hold(books, served("a1"), total=10_000, spent_today=1_000, ledger_day=TODAY) is HoldRefused.DAILY_BUDGET


def test_the_frequency_cap_counts_every_ad_served_to_the_user_that_day(books):
    assert [hold(books, served(f"a{i}", reserved=1), cap=2) for i in range(3)] == [
        None, None, HoldRefused.FREQUENCY_CAP,
    ]  # fmt: skip
    assert hold(books, served("b0", reserved=1, user="u2"), cap=2) is None  # another user
    assert hold(books, served("c0", campaign_id="c2", reserved=1), cap=2) is None  # another campaign
    assert hold(books, served("n0", reserved=1, user=None), cap=None) is None  # no user: nothing to count
    assert books.frequency_today("u1", TODAY) == {"c1": 2, "c2": 1}
    assert books.frequency_today("u1", TODAY + timedelta(days=1)) == {}
    assert books.frequency_today(None, TODAY) == {}


def test_a_settlement_frees_the_hold_and_keeps_the_ledgers_largest_totals(books):
    assert hold(books, served("a0")) is None and hold(books, served("a1", reserved=300)) is None
    books.settle([Settlement("a0", "c1", TODAY, 400, 400)])
    books.settle([Settlement("a0", "c1", TODAY, 400, 400)])  # a retry: nothing more
    assert books.exposure(TODAY) == ({"c1": 300}, {"c1": 300}, {"c1": 400}, {"c1": 400})
    books.settle([Settlement("a1", "c1", TODAY, 350, 350)])  # refused over budget, told older totals: freed only
    assert books.exposure(TODAY) == ({"c1": 0}, {"c1": 0}, {"c1": 400}, {"c1": 400})
    books.settle([Settlement("a7", "c1", TODAY)])  # a retry answered from the journal: no totals, nothing held
    assert books.exposure(TODAY) == ({"c1": 0}, {"c1": 0}, {"c1": 400}, {"c1": 400})
    assert hold(books, served("a2", reserved=600)) is None  # 400 spent, nothing held: 600 left
    assert hold(books, served("a3", reserved=1)) is HoldRefused.TOTAL_BUDGET  # 400 + 600: none left


def test_a_sweep_frees_only_the_expired_holds_whoever_took_them(books):
    assert hold(books, replace(served("a0"), expires_at=NOW + timedelta(seconds=10))) is None
    assert hold(books, served("a1", reserved=100)) is None
    assert books.sweep(NOW + timedelta(seconds=9)) == 0
    assert books.sweep(NOW + timedelta(seconds=10)) == 1
    assert books.exposure(TODAY)[0] == {"c1": 100}
    books.settle([Settlement("a0", "c1", TODAY, 400, 400)])  # its event came in time after all: nothing freed twice
    assert books.exposure(TODAY) == ({"c1": 100}, {"c1": 100}, {"c1": 400}, {"c1": 400})


def test_a_lost_store_is_rebuilt_once_from_the_campaign_stores_figures(books):
    assert not books.built()
    open_auction = served("a9", reserved=250)
    yesterday = replace(served("a8", reserved=50), served_at=NOW - timedelta(days=1))
    source = RebuildSource(
        day=TODAY, first_day=TODAY - timedelta(days=1), spent={"c1": 700, "c2": 5}, spent_today={"c1": 100},
        open_auctions=[open_auction, yesterday],
        frequency=[("u1", "c1", 4)], frequency_day=TODAY,
    )  # fmt: skip
    assert books.rebuild(source) is True
    assert books.rebuild(source) is False  # built: the others leave it
    held, held_today, spent, spent_today = books.exposure(TODAY)
    assert (held, held_today, spent, spent_today) == ({"c1": 300}, {"c1": 250}, {"c1": 700, "c2": 5}, {"c1": 100})
    assert books.frequency_today("u1", TODAY) == {"c1": 4}
    books.client.delete(books.key("epoch"))  # as if the first rebuild was cut off before its end
    assert books.rebuild(source) is True
    assert books.exposure(TODAY) == (held, held_today, spent, spent_today)  # nothing counted twice
    assert books.client.hget(books.key("held", day_tag(TODAY - timedelta(days=1))), "c1") == b"50"
    assert books.frequency_today("u1", TODAY) == {"c1": 4}
    books.settle([Settlement("a8", "c1", TODAY)])  # yesterday's reservation is freed from yesterday's day
    assert books.exposure(TODAY)[0] == {"c1": 250}
    assert books.client.hget(books.key("held", day_tag(TODAY - timedelta(days=1))), "c1") == b"0"


def test_an_unreachable_store_says_so(shared_store_url):
    gone = SharedBooks("redis://127.0.0.1:1/0", namespace="x", timeout_s=0.2, served_s=600, auction_ttl_s=3600)
    assert gone.ping().startswith("the shared store does not answer")
    with pytest.raises(SharedStoreUnavailable, match="did not take the auction's hold"):
        hold(gone, served("a0"))
    with pytest.raises(SharedStoreUnavailable, match="did not read the served auctions"):
        gone.served(["a0"])
