"""The optimizer's decision: a bid multiplier per campaign x platform, every tick, from the forecasts.

Pure numpy: no I/O, no clock; the random draws come from the generator passed in.

**Bid your value.** In a second-price auction the bid that maximizes an advertiser's surplus is its
value for what it pays for. A CPM campaign pays per impression, worth CTR_p x CVR_p x V on platform
p (V: the campaign's conversion value, or its target CPA when it states one instead); a CPC campaign
pays per click, worth CVR_p x V. A CPA campaign pays per conversion, worth V wherever it happens: its
cost per conversion is the price it clears at, whatever the platform converts at (the auction prices
it with the default pCVR and the platform carries the conversion risk), so a platform that converts
more is no cheaper per conversion to it, and bidding it up would only raise its price. The
multiplier that turns the bid into the value is

    CPM: CTR_p CVR_p V / (bid / 1000)     CPC: CVR_p V / bid     CPA: V / bid (every platform)

(pCTR cancels where the auction already uses it). A CPA campaign is never paused: it never pays
more than its bid per conversion. It is clipped to [MIN_MULTIPLIER, MAX_MULTIPLIER]
and so that bid x multiplier stays under the campaign's max bid and the platform's bid limit.

**Budget across platforms.** Pacing multiplies every bid of a campaign by its λ, the price of its
budget (``auction_service.serving.pacing``): with bids proportional to value, a uniform λ is the
dual update of Balseiro, Lu and Mirrokni ("dual mirror descent", 2020), bid = value / (1 + μ), and
the budget goes where value per cost is highest, marginal ROI equal across the platforms that
serve. The order is base bid x platform multiplier x λ, capped at the max bid.

**Uncertainty.** CTR and CVR are drawn from their Beta posteriors (Thompson sampling), so a thin
cell, whose posterior is wide, sometimes draws high and gets traffic to learn from; a well-measured
one draws near its mean. A draw is the posterior's quantile at a uniform number the caller passes
(``quantiles``): the service keeps a cell's numbers for a round of decisions and draws new ones each
round, so between rounds a multiplier moves only as its posterior does (the decisions stay put, and a
restart on the same data reproduces them). A platform is **paused** (multiplier 0) when the posterior says with
PAUSE_CONFIDENCE that a click costs more than it returns (P(CVR x V < CPC) >= 0.95) over
MIN_PAUSE_CLICKS clicks or more: money spent there is waste. The **fallback** is the base bid
(multiplier 1): for a campaign whose window holds fewer than MIN_CLICKS clicks, or no value.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy.special import betainc

from optimizer.forecast import Forecast

MIN_MULTIPLIER, MAX_MULTIPLIER = 0.0, 2.0
MIN_CLICKS = 30  # a campaign's clicks in the window before it leaves the base bid
MIN_PAUSE_CLICKS = 50  # a platform's clicks before it may be paused
PAUSE_CONFIDENCE = 0.95
PRICING_CODES = {"CPM": 0, "CPC": 1, "CPA": 2}


class Reason(IntEnum):
    """Why a cell got its multiplier (written with every decision)."""

    STATIC = 0  # optimize is off: the base bid
    FALLBACK = 1  # too little data, or no conversion value: the base bid
    VALUE = 2  # bid its value: the posterior draw near its mean
    EXPLORE = 3  # a thin cell's draw well above its mean: traffic to learn from
    PAUSED = 4  # confidently losing money: no bids
    CAPPED = 5  # its value, cut to the max bid or the platform's limit


@dataclass(frozen=True)
class Campaigns:
    """The campaigns of a tick, one entry per window row."""

    pricing: np.ndarray  # PRICING_CODES
    bid_micros: np.ndarray  # the base bid, in its pricing model's unit
    value_micros: np.ndarray  # the value of a conversion (or the target CPA); 0 when none
    optimize: np.ndarray  # bool
    max_bid_micros: np.ndarray  # float, inf when none
    platform_limit_micros: np.ndarray  # (campaigns, platforms) float, inf when none


@dataclass(frozen=True)
class Decision:
    """Per campaign x platform: the multiplier, the reason, and what it was decided on."""

    multiplier: np.ndarray
    reason: np.ndarray
    cvr_drawn: np.ndarray  # the Thompson draw of each cell's CVR
    value_per_click_micros: np.ndarray  # the drawn CVR x V
    cpc_micros: np.ndarray  # the expected cost per click (NaN without clicks)
    roi_per_click_micros: np.ndarray  # value per click - cost per click
    p_losing: np.ndarray  # P(CVR x V < CPC) under the posterior, where a pause is possible (else 0)


def decide(campaigns: Campaigns, forecast: Forecast, quantiles: np.ndarray) -> Decision:
    """The decision of every cell; ``quantiles`` (2, campaigns, platforms) are the uniform numbers the CTR
    and CVR draws invert (module docstring)."""
    shape = forecast.clicks.shape
    if quantiles.shape != (2, *shape):
        raise ValueError(f"quantiles must be (2, {shape[0]}, {shape[1]}), got {quantiles.shape}")
    n = shape[0]
    if not all(len(getattr(campaigns, f)) == n for f in ("pricing", "bid_micros", "value_micros", "optimize")):
        raise ValueError("the campaigns and the forecast must have one row per campaign")
    value = campaigns.value_micros.astype(np.float64)[:, None]
    bid = campaigns.bid_micros.astype(np.float64)[:, None]
    pricing = campaigns.pricing[:, None]
    ctr_draw = np.clip(forecast.ctr.quantile(quantiles[0]), 1e-9, 1.0)
    cvr_draw = np.clip(forecast.cvr.quantile(quantiles[1]), 0.0, 1.0)
    per_impression = ctr_draw * cvr_draw * value
    with np.errstate(divide="ignore", invalid="ignore"):
        multiplier = np.select(
            [pricing == PRICING_CODES["CPM"], pricing == PRICING_CODES["CPC"]],
            [per_impression / (bid / 1000), cvr_draw * value / bid],
            np.broadcast_to(value / bid, shape),
        )
        cpc = np.where(forecast.clicks > 0, forecast.spend_micros / forecast.clicks, np.nan)
    # P(losing) where a pause is possible only: the Beta's CDF is the tick's dearest function.
    judged = (forecast.clicks >= MIN_PAUSE_CLICKS) & (value > 0) & (pricing != PRICING_CODES["CPA"])
    p_losing = np.zeros(shape)
    if judged.any():
        cells = np.nonzero(judged)
        threshold = cpc[cells] / np.broadcast_to(value, shape)[cells]
        p_losing[cells] = betainc(forecast.cvr.alpha[cells], forecast.cvr.beta[cells], np.clip(threshold, 0.0, 1.0))
    value_per_click = cvr_draw * value
    multiplier = np.clip(np.nan_to_num(multiplier, nan=1.0, posinf=MAX_MULTIPLIER), MIN_MULTIPLIER, MAX_MULTIPLIER)
    drawn_high = (cvr_draw > forecast.cvr.mean + 2 * np.sqrt(forecast.cvr.variance)) & (pricing != PRICING_CODES["CPA"])
    reason = np.where(drawn_high, Reason.EXPLORE, Reason.VALUE).astype(np.int8)
    cap = np.minimum(campaigns.max_bid_micros.astype(np.float64)[:, None], campaigns.platform_limit_micros) / bid
    capped = multiplier > cap
    multiplier = np.where(capped, cap, multiplier)
    reason = np.where(capped, Reason.CAPPED, reason)
    paused = (p_losing >= PAUSE_CONFIDENCE) & (forecast.clicks >= MIN_PAUSE_CLICKS)
    multiplier = np.where(paused, 0.0, multiplier)
    reason = np.where(paused, Reason.PAUSED, reason)
    thin = (forecast.clicks.sum(axis=1) < MIN_CLICKS) | (campaigns.value_micros <= 0)
    fallback = np.broadcast_to(thin[:, None], shape)
    multiplier = np.where(fallback, np.minimum(1.0, cap), multiplier)
    reason = np.where(fallback, Reason.FALLBACK, reason)
    static = np.broadcast_to(~campaigns.optimize.astype(bool)[:, None], shape)
    multiplier = np.where(static, 1.0, multiplier)
    reason = np.where(static, Reason.STATIC, reason).astype(np.int8)
    return Decision(
        multiplier=multiplier,
        reason=reason,
        cvr_drawn=cvr_draw,
        value_per_click_micros=value_per_click,
        cpc_micros=cpc,
        roi_per_click_micros=value_per_click - cpc,
        p_losing=p_losing,
    )
