"""The optimizer's windows and forecasts against closed-form answers on synthetic windows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from adstream.decisions import platform_index as platform_of
from optimizer.forecast import (
    PRIOR_STRENGTH_IMPRESSIONS,
    Beta,
    beta_posterior,
    forecast,
    prior_strength,
    trend_of_moments,
    trigamma,
    weighted_trend,
)
from optimizer.windows import CLICKS, CONVERSIONS, IMPRESSIONS, PLATFORMS, SPEND, Windows, moments_of


def test_platforms_are_channel_by_device_and_anything_else_is_none():
    assert len(PLATFORMS) == 8 and PLATFORMS[platform_of("app", "ctv")] == "app/ctv"
    assert platform_of("web", "mobile") == 0 and platform_of("dooh", "mobile") == -1 and platform_of(None, None) == -1


def test_a_window_counts_per_bucket_and_forgets_what_slides_out():
    windows = Windows(buckets=3, bucket_s=60)
    t0 = 1_800_000_000 - 1_800_000_000 % 60
    values = np.array([[1, 0, 0, 2_000], [1, 1, 0, 500_000], [1, 1, 1, 500_000], [5, 0, 0, 0]])
    counted = windows.add(["a", "a", "b", "a"], np.array([0, 0, 3, -1]), np.array([t0, t0 + 10, t0 + 70, t0]), values)
    assert counted == 3  # the last has no platform
    totals = windows.totals()
    assert totals[windows.rows["a"], 0].tolist() == [2, 1, 0, 502_000]
    assert totals[windows.rows["b"], 3].tolist() == [1, 1, 1, 500_000]
    ordered = windows.ordered()
    assert ordered[windows.rows["a"], 0, IMPRESSIONS].tolist() == [0, 2, 0]  # buckets t0-60, t0, t0+60
    windows.advance(t0 + 190)  # buckets t0+60 to t0+180 now: t0's slides out, t0+60's stays
    assert windows.totals()[windows.rows["a"], 0, IMPRESSIONS] == 0
    assert windows.totals()[windows.rows["b"], 3, CONVERSIONS] == 1
    # An event older than the window is not counted.
    assert windows.add(["a"], np.array([0]), np.array([t0 - 600.0]), np.array([[1, 0, 0, 0]])) == 0


def test_rows_grow_past_the_first_allocation():
    windows = Windows()
    ids = [f"c{i}" for i in range(40)]
    windows.add(ids, np.zeros(40, dtype=np.int64), np.full(40, 1_800_000_000.0), np.ones((40, 4), dtype=np.int64))
    assert windows.totals().shape == (40, 8, 4) and int(windows.totals()[:, 0, SPEND].sum()) == 40


def test_the_trend_is_the_weighted_least_squares_line():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(3, 10))
    w = rng.uniform(0.5, 3.0, size=(3, 10))
    trend = weighted_trend(y, w)
    for cell in range(3):
        x = np.arange(10.0)
        slope, intercept = np.polyfit(x, y[cell], 1, w=np.sqrt(w[cell]))  # polyfit weights multiply residuals
        assert trend.slope[cell] == pytest.approx(slope) and trend.level[cell] == pytest.approx(intercept + 9 * slope)
    # A line is recovered exactly; one weighted bucket has no slope; none has nothing.
    exact = weighted_trend(np.array([[1.0, 3.0, 5.0, 7.0]]), np.ones((1, 4)))
    assert exact.slope[0] == pytest.approx(2.0) and exact.at(1)[0] == pytest.approx(9.0)
    one = weighted_trend(np.array([[0.0, 4.0, 0.0]]), np.array([[0.0, 2.0, 0.0]]))
    assert one.slope[0] == 0.0 and one.level[0] == 4.0
    assert weighted_trend(np.zeros((1, 3)), np.zeros((1, 3))).level[0] == 0.0


def test_the_beta_posterior_is_conjugate_and_shrinks_toward_the_category_prior():
    posterior = beta_posterior(np.array([0.0, 30.0, 3_000.0]), np.array([0.0, 1_000.0, 100_000.0]), np.array(0.01), 200)
    assert posterior.alpha.tolist() == [2.0, 32.0, 3_002.0]
    assert posterior.beta.tolist() == pytest.approx([198.0, 1_168.0, 97_198.0])
    assert posterior.mean[0] == pytest.approx(0.01)  # no data: the prior
    assert 0.01 < posterior.mean[1] < 0.03  # some: between
    assert posterior.mean[2] == pytest.approx(0.03, abs=1e-3)  # plenty: its own rate
    assert posterior.variance[1] == pytest.approx(stats.beta(32, 1_168).var())
    assert posterior.cdf(0.02)[1] == pytest.approx(stats.beta(32, 1_168).cdf(0.02))


@pytest.mark.parametrize("strength", [50.0, 300.0])
def test_the_prior_strength_is_read_off_how_far_the_cells_rates_spread_around_their_priors(strength):
    # 400 cells whose true rates are drawn from Beta(m s, (1 - m) s) around priors m from 1 % to 20 %.
    rng = np.random.default_rng(0)
    mean = rng.uniform(0.01, 0.2, size=400)
    trials = rng.integers(500, 3_000, size=400)
    successes = rng.binomial(trials, rng.beta(mean * strength, (1 - mean) * strength))
    assert prior_strength(successes, trials, mean, 1.0, 1e6) == pytest.approx(strength, rel=0.3)


def test_the_prior_strength_stays_within_its_floor_and_ceiling():
    rng = np.random.default_rng(1)
    trials = np.full(300, 1_000)
    alike = rng.binomial(trials, 0.05)  # every cell at its prior: no spread beyond the binomial's
    assert prior_strength(alike, trials, np.full(300, 0.05), 20.0, 2_000.0) == 2_000.0
    apart = rng.binomial(trials, rng.beta(0.25, 4.75, size=300))  # Beta(0.25, 4.75): a strength of 5
    assert prior_strength(apart, trials, np.full(300, 0.05), 20.0, 2_000.0) == 20.0
    # No cell with two trials: nothing to judge by, the floor.
    assert prior_strength(np.array([0, 1]), np.array([0, 1]), np.array(0.05), 20.0, 2_000.0) == 20.0


def test_a_forecast_reads_totals_rates_and_trends_off_the_ordered_window():
    ordered = np.zeros((2, 8, 4, 3), dtype=np.int64)
    ordered[0, 1, IMPRESSIONS] = [100, 200, 300]
    ordered[0, 1, CLICKS] = [2, 6, 12]  # CTR 2 %, 3 %, 4 %: rising a point a bucket
    ordered[0, 1, CONVERSIONS] = [0, 1, 1]
    ordered[0, 1, SPEND] = [1_000_000, 3_000_000, 6_000_000]  # 0.5 USD a click throughout
    result = forecast(moments_of(ordered), np.array([0.02, 0.05]), np.array([0.05, 0.05]), buckets=3)
    assert result.clicks[0, 1] == 20 and result.spend_micros[0, 1] == 10_000_000
    assert result.cpc_micros[0, 1] == 500_000 and np.isnan(result.cpc_micros[1, 1])
    # One cell, 20 clicks of 600 against a 2 % prior: no more spread than the floor's prior allows.
    assert result.ctr_strength == PRIOR_STRENGTH_IMPRESSIONS
    assert result.ctr.alpha[0, 1] == pytest.approx(0.02 * PRIOR_STRENGTH_IMPRESSIONS + 20)
    assert result.ctr.mean[1, 5] == pytest.approx(0.05)  # an empty cell is its campaign's prior
    assert result.ctr_trend.slope[0, 1] > 0.009 and result.cpc_trend.slope[0, 1] == pytest.approx(0.0, abs=1e-6)


def test_the_windows_moments_are_kept_exactly_as_events_arrive_and_buckets_slide_out():
    rng = np.random.default_rng(11)
    windows = Windows(buckets=5, bucket_s=60)
    t0 = 1_800_000_000 - 1_800_000_000 % 60
    for minute in range(12):  # the ring wraps twice; some minutes skip, some events come late
        n = int(rng.integers(0, 40))
        at = t0 + 60.0 * minute + rng.uniform(-150, 60, size=n)
        ids = [f"c{i}" for i in rng.integers(0, 3, size=n)]
        values = rng.integers(0, 5, size=(n, 4)) * np.array([1, 1, 1, 250_000])
        windows.add(ids, rng.integers(0, 8, size=n), at, values)
        if minute % 4 == 3:
            windows.advance(t0 + 60.0 * (minute + 2))  # a quiet stretch
        expected = moments_of(windows.ordered())
        assert (windows.moments[: len(windows.campaign_ids)] == expected).all(), minute


def test_trends_from_moments_are_the_weighted_least_squares_of_the_rates():
    rng = np.random.default_rng(3)
    trials = rng.integers(0, 50, size=(4, 8, 6)).astype(float)
    successes = np.floor(trials * rng.uniform(0, 0.3, size=trials.shape))
    rate = np.where(trials > 0, successes / np.where(trials > 0, trials, 1), 0.0)
    reference = weighted_trend(rate, trials)
    from_moments = trend_of_moments(moments_of(trials), moments_of(successes), newest=5.0)
    np.testing.assert_allclose(from_moments.slope, reference.slope, atol=1e-12)
    np.testing.assert_allclose(from_moments.level, reference.level, atol=1e-12)


def test_trigamma_matches_scipys_and_the_quantile_approximates_the_betas_inverse():
    from scipy.special import betaincinv, polygamma

    x = np.array([0.05, 0.5, 1.0, 2.5, 7.0, 40.0, 1e4])
    np.testing.assert_allclose(trigamma(x), polygamma(1, x), rtol=1e-8)
    rng = np.random.default_rng(5)
    q = rng.uniform(0.02, 0.98, size=5_000)
    for low, tolerance in ((2.0, 0.08), (10.0, 0.02)):
        alpha = rng.uniform(low, 5 * low, size=q.size)
        posterior = Beta(alpha=alpha, beta=alpha * rng.uniform(5, 40, size=q.size))
        relative = np.abs(posterior.quantile(q) / betaincinv(posterior.alpha, posterior.beta, q) - 1)
        assert np.quantile(relative, 0.95) < tolerance, (low, np.quantile(relative, 0.95))
    # Thin cells: the draws' mean is near the Beta's, so exploring neither favours nor starves them.
    thin = Beta(alpha=np.full(20_000, 1.0), beta=np.full(20_000, 19.0))
    assert thin.quantile(rng.uniform(size=20_000)).mean() == pytest.approx(0.05, rel=0.15)
