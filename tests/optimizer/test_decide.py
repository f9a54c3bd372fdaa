"""The decision rule: a better platform bids more, a money-losing one is paused, a thin cell is explored,
the bounds hold, and thin campaigns fall back to the base bid."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.decide import (
    MAX_MULTIPLIER,
    MIN_CLICKS,
    PRICING_CODES,
    Campaigns,
    Reason,
    decide,
)
from optimizer.forecast import forecast
from optimizer.windows import CLICKS, CONVERSIONS, IMPRESSIONS, SPEND, moments_of

USD = 1_000_000


def _window(cells: dict[tuple[int, int], tuple[int, int, int, int]], campaigns: int = 1) -> np.ndarray:
    """Ordered windows with each (campaign, platform)'s (impressions, clicks, conversions, spend) in one bucket."""
    ordered = np.zeros((campaigns, 8, 4, 30), dtype=np.int64)
    for (row, platform), (impressions, clicks, conversions, spend) in cells.items():
        ordered[row, platform, [IMPRESSIONS, CLICKS, CONVERSIONS, SPEND], -1] = [
            impressions,
            clicks,
            conversions,
            spend,
        ]
    return ordered


def _campaigns(n: int = 1, pricing: str = "CPC", bid: int = USD, value: int = 20 * USD, **overrides) -> Campaigns:
    fields = {
        "pricing": np.full(n, PRICING_CODES[pricing]) if isinstance(pricing, str) else pricing,
        "bid_micros": np.full(n, bid), "value_micros": np.full(n, value),
        "optimize": np.ones(n, dtype=bool), "max_bid_micros": np.full(n, np.inf),
        "platform_limit_micros": np.full((n, 8), np.inf),
    }  # fmt: skip
    return Campaigns(**(fields | overrides))


def _decide(ordered: np.ndarray, campaigns: Campaigns, seed: int = 0):
    n = ordered.shape[0]
    quantiles = np.random.default_rng(seed).uniform(size=(2, n, 8))
    predicted = forecast(moments_of(ordered), np.full(n, 0.03), np.full(n, 0.05), buckets=ordered.shape[-1])
    return decide(campaigns, predicted, quantiles)


def test_a_clearly_better_platform_bids_more_and_a_money_losing_one_is_paused():
    # A CPC campaign paying 1 USD a click, a conversion worth 20 USD: platform 0 converts 20 % of clicks
    # (4 USD a click), platform 1 converts 1 % (0.20 USD a click, against 1 USD paid).
    ordered = _window({(0, 0): (20_000, 600, 120, 600 * USD), (0, 1): (20_000, 600, 6, 600 * USD)})
    decision = _decide(ordered, _campaigns())
    assert decision.multiplier[0, 0] == MAX_MULTIPLIER  # value 4 USD a click on a 1 USD bid: the bound
    assert decision.multiplier[0, 1] == 0.0 and decision.reason[0, 1] == Reason.PAUSED
    assert decision.p_losing[0, 1] > 0.95 and decision.p_losing[0, 0] < 1e-6
    assert decision.roi_per_click_micros[0, 0] > 0 > decision.roi_per_click_micros[0, 1]


def test_a_multiplier_is_the_value_over_the_bid_per_pricing_model():
    cells = {(row, 0): (1_000_000, 30_000, 1_500, 15_000 * USD) for row in range(3)}  # CTR 3 %, CVR 5 %, 0.50 a click
    ordered = _window(cells, campaigns=3)
    campaigns = _campaigns(
        3,
        pricing=np.array([PRICING_CODES["CPM"], PRICING_CODES["CPC"], PRICING_CODES["CPA"]]),
        bid_micros=np.array([30 * USD, USD, 10 * USD]),
        value_micros=np.full(3, 15 * USD),
    )
    decision = _decide(ordered, campaigns)
    # CPM: 0.03 x 0.05 x 15 / (30 / 1000) = 0.75; CPC: 0.05 x 15 / 1 = 0.75; CPA: 15 / 10 = 1.5.
    assert decision.multiplier[:, 0] == pytest.approx([0.75, 0.75, 1.5], rel=0.06)


def test_a_cpa_campaign_bids_its_value_per_conversion_on_every_platform_and_is_never_paused():
    # Platform 0 converts 10 % of clicks, platform 1 0.1 %: a CPC campaign bids them apart and pauses the
    # second; a CPA campaign pays per conversion, the same price wherever it converts, so it bids V / bid on both.
    cells = {(row, 0): (100_000, 3_000, 300, 3_000 * USD) for row in range(2)}
    cells |= {(row, 1): (100_000, 3_000, 3, 3_000 * USD) for row in range(2)}
    campaigns = _campaigns(2, pricing=np.array([PRICING_CODES["CPC"], PRICING_CODES["CPA"]]),
                           bid_micros=np.array([USD, 10 * USD]), value_micros=np.full(2, 15 * USD))  # fmt: skip
    decision = _decide(_window(cells, campaigns=2), campaigns)
    cpc, cpa = decision.multiplier[0], decision.multiplier[1]
    assert cpc[0] == pytest.approx(1.5, rel=0.1) and cpc[1] == 0.0 and decision.reason[0, 1] == Reason.PAUSED
    assert cpa[0] == cpa[1] == pytest.approx(1.5) and (decision.reason[1] == Reason.VALUE).all()


def test_a_thin_cell_is_explored_now_and_then_and_a_measured_one_is_not():
    # Platform 0 is well measured at 5 % CVR; platform 2 has 6 clicks (no conversion yet). Two other
    # campaigns convert at 1 % and 12 % against the same 5 % prior: campaigns differ, so a thin cell's
    # own CVR is uncertain and its prior weighs little.
    ordered = _window(
        {(0, 0): (400_000, 12_000, 600, 12_000 * USD), (0, 2): (200, 6, 0, 6 * USD),
         (1, 0): (400_000, 12_000, 120, 12_000 * USD), (2, 0): (400_000, 12_000, 1_440, 12_000 * USD)},
        campaigns=3,
    )  # fmt: skip
    draws = np.array([_decide(ordered, _campaigns(3, value=20 * USD), seed=s).multiplier[0] for s in range(200)])
    assert draws[:, 0].std() < 0.1  # well measured: about 0.05 x 20 / 1 = 1.0 each tick
    assert draws[:, 2].std() > 0.3 and (draws[:, 2] > 1.5).mean() > 0.05  # thin: sometimes bid high
    reasons = np.array([_decide(ordered, _campaigns(3, value=20 * USD), seed=s).reason[0, 2] for s in range(200)])
    assert (reasons == Reason.EXPLORE).any() and not (reasons == Reason.PAUSED).any()  # too few clicks to pause


def test_where_campaigns_convert_alike_a_thin_cell_bids_near_its_priors_value():
    # Five campaigns convert at exactly their 5 % prior on platform 0: nothing says a campaign differs from
    # the market, so campaign 0's thin platform 2 (6 clicks) bids about the prior's value, 0.05 x 20 / 1 = 1.0,
    # instead of a wide draw (with the floor's 20-click prior, a tenth of draws would pass 1.9).
    cells = {(row, 0): (400_000, 12_000, 600, 12_000 * USD) for row in range(5)}
    ordered = _window(cells | {(0, 2): (200, 6, 0, 6 * USD)}, campaigns=5)
    decisions = [_decide(ordered, _campaigns(5, value=20 * USD), seed=s) for s in range(200)]
    draws = np.array([decision.multiplier[0, 2] for decision in decisions])
    assert draws.std() < 0.15 and abs(np.median(draws) - 1.0) < 0.05 and draws.max() < 1.5


def test_the_bounds_hold_whatever_the_value():
    ordered = _window({(0, p): (10_000, 300, 150, 300 * USD) for p in range(8)})  # 50 % CVR: worth far more
    limits = np.full((1, 8), np.inf)
    limits[0, 3] = 1.2 * USD
    decision = _decide(ordered, _campaigns(value=100 * USD, max_bid_micros=np.array([1.5 * USD]),
                                           platform_limit_micros=limits))  # fmt: skip
    assert (decision.multiplier >= 0).all() and (decision.multiplier <= MAX_MULTIPLIER).all()
    assert decision.multiplier[0, 3] == pytest.approx(1.2) and decision.reason[0, 3] == Reason.CAPPED
    assert decision.multiplier[0, 0] == pytest.approx(1.5)  # the max bid
    assert (decision.multiplier * USD <= 1.5 * USD + 1e-6).all()


def test_thin_campaigns_no_value_and_static_campaigns_keep_the_base_bid():
    ordered = _window({(0, 0): (1_000, MIN_CLICKS - 1, 5, 29 * USD), (1, 0): (40_000, 1_200, 60, 1_200 * USD),
                       (2, 0): (40_000, 1_200, 1, 1_200 * USD)}, campaigns=3)  # fmt: skip
    campaigns = _campaigns(3, value_micros=np.array([20 * USD, 0, 20 * USD]), optimize=np.array([True, True, False]))
    decision = _decide(ordered, campaigns)
    assert (decision.multiplier == 1.0).all()
    assert decision.reason[0, 0] == Reason.FALLBACK and decision.reason[1, 0] == Reason.FALLBACK
    assert decision.reason[2, 0] == Reason.STATIC  # even though it loses money: optimize is off
