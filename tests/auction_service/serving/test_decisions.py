"""The optimizer's decisions as serving applies them: placed bids, caps, pauses, and the shared store's copy."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from adstream.decisions import Served, pack, serve_key, unpack, unpack_all, version_key
from adstream.events import PLATFORMS, CampaignGoals
from auction_service.domain import AuctionContext
from auction_service.serving.decisions import DecisionBook, DecisionTable, platform_of
from tests.auction_service.serving.test_auction import make_campaign, make_context

GOALS = CampaignGoals(optimize=True, conversion_value_micros=10_000_000)
WEB_MOBILE, APP_CTV = PLATFORMS.index("web/mobile"), PLATFORMS.index("app/ctv")


def test_a_request_maps_to_its_platform_or_to_none():
    assert platform_of(make_context(channel="web", device_type="mobile")) == WEB_MOBILE
    assert platform_of(make_context(channel="app", device_type="ctv")) == APP_CTV
    assert platform_of(make_context(channel=None, device_type="mobile")) == -1
    assert platform_of(AuctionContext(auction_id="a", at=make_context().at, channel="dooh", device_type="ctv")) == -1


def test_placed_bids_are_base_times_multiplier_under_the_caps_and_a_zero_pauses():
    goals = GOALS.model_copy(update={"max_bid_micros": 1_500_000, "platform_bid_limits_micros": {"app/ctv": 700_000}})
    campaigns = (
        make_campaign("opt", bid_micros=1_000_000, goals=goals),
        make_campaign("off", bid_micros=1_000_000),  # no goals: its decision, if any, is ignored
        make_campaign("new", bid_micros=1_000_000, goals=GOALS),  # optimized, no decision yet
    )
    multipliers = [0] * len(PLATFORMS)
    multipliers[WEB_MOBILE], multipliers[APP_CTV] = 1_800_000, 900_000
    decided = {"opt": Served(1, 0, tuple(multipliers)), "off": Served(1, 0, tuple([2_000_000] * len(PLATFORMS)))}
    table = DecisionTable.of(campaigns, decided)
    rows = np.arange(3)
    bidding, placed = table.placed_bids(rows, WEB_MOBILE)
    assert bidding.tolist() == [True, True, True] and placed.tolist() == [1_500_000, 1_000_000, 1_000_000]
    bidding, placed = table.placed_bids(rows, APP_CTV)
    assert placed.tolist() == [700_000, 1_000_000, 1_000_000]  # 0.9 x 1 USD, then the platform's limit
    bidding, placed = table.placed_bids(rows, PLATFORMS.index("web/desktop"))
    assert bidding.tolist() == [False, True, True] and placed.tolist() == [1_000_000, 1_000_000]  # "opt" paused
    assert table.placed_bids(rows, -1) is None  # no platform: base bids
    assert DecisionTable.of(campaigns[1:], decided).placed_bids(np.arange(2), WEB_MOBILE) is None


def test_a_decision_packs_and_unpacks_and_garbage_is_skipped():
    values = tuple(range(0, 2_000_001, 250_000))[: len(PLATFORMS)]
    assert unpack(pack(7, 1_800_000_000_000_000, values)) == Served(7, 1_800_000_000_000_000, values)
    with pytest.raises(ValueError):
        pack(7, 0, [3_000_000] * len(PLATFORMS))
    good = pack(1, 0, values).encode()
    assert unpack_all({b"a": good, b"b": b"1 2 3", b"c": b"x"}) == {"a": Served(1, 0, values)}


def test_the_book_rereads_only_when_the_version_moves_and_keeps_the_last_when_the_store_is_down(shared_store_url):
    client = redis.Redis.from_url(shared_store_url)
    book = DecisionBook(client, "dec-test")
    campaigns = (make_campaign("opt", bid_micros=1_000_000, goals=GOALS),)
    seen_us = int((time.time() - 3.0) * 1_000_000)  # the decision's newest event: 3 s ago
    client.hset(serve_key("dec-test"), "opt", pack(1, seen_us, [500_000] * len(PLATFORMS)))
    client.incr(version_key("dec-test"))
    book.read()
    assert book.table(campaigns).placed_bids(np.arange(1), WEB_MOBILE)[1].tolist() == [500_000]
    lag = book.lag_quantiles()
    assert lag["decisions"] == 1 and 3.0 <= lag["p95"] < 10.0
    client.hset(serve_key("dec-test"), "opt", pack(2, seen_us, [2_000_000] * len(PLATFORMS)))
    book.read()  # the version did not move: the copy stands
    assert book.reads == 1 and book.table(campaigns).placed_bids(np.arange(1), WEB_MOBILE)[1].tolist() == [500_000]
    client.incr(version_key("dec-test"))
    book.read()
    assert book.reads == 2 and book.table(campaigns).placed_bids(np.arange(1), WEB_MOBILE)[1].tolist() == [2_000_000]
    assert book.lag_quantiles()["decisions"] == 2  # a new version of the campaign's decision: one more lag
    down = DecisionBook(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), "dec-test")
    down._decided = {"opt": Served(1, 0, (500_000,) * len(PLATFORMS))}
    down.read()  # refused: the last decisions keep serving
    assert down.table(campaigns).placed_bids(np.arange(1), WEB_MOBILE)[1].tolist() == [500_000]
    client.delete(serve_key("dec-test"), version_key("dec-test"))
