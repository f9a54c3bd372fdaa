"""pCTR calibration: the prior correction on a synthetic 3 % stream, and the online Platt map under drift."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from ml.calibration import (
    MAX_SLOPE,
    MIN_SLOPE,
    Calibration,
    CalibrationKind,
    ColdStart,
    category_codes,
    fit_platt,
    identity,
    logit,
    pricing_codes,
    prior_correction,
    recency_weights,
    sigmoid,
)

AT = datetime(2026, 12, 6, tzinfo=UTC)
TRUE_INTERCEPT = -4.0  # with the slope below, a 3 % click rate over N(0, 1) features (checked below)
TRUE_COEF = np.array([1.0, -0.6])


def _stream(rng: np.random.Generator, n: int, intercept: float = TRUE_INTERCEPT) -> tuple[np.ndarray, np.ndarray]:
    features = rng.normal(size=(n, 2))
    clicked = rng.random(n) < sigmoid(intercept + features @ TRUE_COEF)
    return features, clicked


def _balanced(features: np.ndarray, clicked: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every click and as many non-clicks, drawn uniformly: a 50 %-positive training set, like the bootstrap."""
    negatives = rng.choice(np.flatnonzero(~clicked), size=int(clicked.sum()), replace=False)
    rows = np.concatenate([np.flatnonzero(clicked), negatives])
    return features[rows], clicked[rows]


def test_the_prior_correction_calibrates_a_model_trained_on_half_clicks_to_a_three_percent_stream():
    rng = np.random.default_rng(7)
    history, history_clicked = _stream(rng, 400_000)
    assert 0.027 < history_clicked.mean() < 0.033  # the stream's true CTR is about 3 %
    train_x, train_y = _balanced(history, history_clicked, rng)
    assert train_y.mean() == 0.5
    model = LogisticRegression().fit(train_x, train_y)

    live, live_clicked = _stream(rng, 300_000)
    raw = model.predict_proba(live)[:, 1]
    # Uncorrected, the model expects about 13x the clicks the stream gives.
    assert raw.sum() / live_clicked.sum() > 10
    corrected = prior_correction("1", train_positive_rate=0.5, prior_ctr=0.03).apply(raw)
    predicted_over_observed = corrected.sum() / live_clicked.sum()
    assert 0.9 <= predicted_over_observed <= 1.1
    # A shift in log-odds keeps the order: the ranking is the model's.
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(corrected, kind="stable"))


def test_the_prior_correction_is_the_down_sampling_formula():
    # Negatives down-sampled by w = odds(0.03) / odds(0.5): q = p / (p + (1 - p) / w).
    w = (0.03 / 0.97) / 1.0
    p = np.array([0.1, 0.5, 0.9])
    expected = p / (p + (1 - p) / w)
    assert np.allclose(prior_correction("1", 0.5, 0.03).apply(p), expected, rtol=1e-9)


@pytest.mark.parametrize("rates", [(0.0, 0.03), (0.5, 1.0), (1.2, 0.03), (0.5, -0.1)])
def test_the_prior_correction_refuses_a_rate_that_is_not_a_probability(rates):
    with pytest.raises(ValueError, match="must be in"):
        prior_correction("1", *rates)


def _platt_refits(drift_at_s: float, *, half_life_s: float, refit_every_s: float, end_s: float):
    """A model whose log-odds are off by a constant that jumps at ``drift_at_s``; Platt refitted on the
    traffic so far every ``refit_every_s``. Yields (time, calibration in force, next interval's traffic)."""
    rng = np.random.default_rng(11)
    per_second = 50
    times, scores, clicks = [], [], []
    calibration = prior_correction("3", train_positive_rate=0.5, prior_ctr=0.03)
    t = 0.0
    while t < end_s:
        n = int(per_second * refit_every_s)
        at = t + rng.random(n) * refit_every_s
        score = sigmoid(rng.normal(0.0, 1.0, n))  # the model's score, half-positive scale
        true_offset = np.where(at < drift_at_s, -3.5, -2.9)  # the truth's log-odds below the model's
        clicked = rng.random(n) < sigmoid(logit(score) + true_offset)
        yield t, calibration, score, clicked
        times.append(at), scores.append(score), clicks.append(clicked)
        t += refit_every_s
        all_t, all_s, all_c = np.concatenate(times), np.concatenate(scores), np.concatenate(clicks)
        calibration = fit_platt(
            all_s, all_c, calibration, weights=recency_weights(t - all_t, half_life_s), fitted_at=AT
        )


def test_online_platt_converges_on_a_drifting_stream_within_a_bounded_lag():
    drift_at, half_life, refit_every = 3600.0, 600.0, 120.0
    ratios = {}
    for t, calibration, score, clicked in _platt_refits(
        drift_at, half_life_s=half_life, refit_every_s=refit_every, end_s=7200.0
    ):
        ratios[t] = calibration.apply(score).sum() / clicked.sum()
    # Before the drift: calibrated from 20 minutes on (the prior alone is off: its 3 % is not the truth).
    settled = [ratio for t, ratio in ratios.items() if 1200 <= t < drift_at]
    assert 0.9 <= np.median(settled) <= 1.1
    assert all(0.8 <= ratio <= 1.25 for ratio in settled)
    # Right after the jump in true CTR (x1.8), the old map under-predicts ...
    assert ratios[drift_at] < 0.75
    # ... and 3 half-lives (30 minutes) on, every 2-minute interval is within 0.8-1.25, the median 0.9-1.1.
    recovered = [ratio for t, ratio in ratios.items() if t >= drift_at + 3 * half_life]
    assert 0.9 <= np.median(recovered) <= 1.1
    assert all(0.8 <= ratio <= 1.25 for ratio in recovered)


def test_a_fit_on_a_handful_of_clicks_stays_near_its_prior():
    prior = prior_correction("3", 0.5, 0.03)
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    fitted = fit_platt(scores, np.array([1, 1, 1, 1]), prior, fitted_at=AT)  # four clicks in four: no evidence of 100 %
    assert abs(fitted.intercept - prior.intercept) < 3 * 1.0
    assert MIN_SLOPE <= fitted.slope <= MAX_SLOPE
    assert fitted.kind == CalibrationKind.PLATT and fitted.clicks == 4 and fitted.impressions == 4


def test_the_slope_is_kept_positive_whatever_the_data():
    # Clicks only on the lowest scores: the data asks for a decreasing map, which would reorder candidates.
    scores = np.linspace(0.01, 0.99, 2000)
    fitted = fit_platt(scores, scores < 0.1, identity("1"), fitted_at=AT)
    assert fitted.slope == MIN_SLOPE
    served = fitted.apply(scores)
    assert np.all(np.diff(served) > 0)


def test_a_slope_held_at_its_bound_refits_the_intercept_so_the_map_still_matches_the_clicks():
    # Winners' scores are high (logit around 4) and the truth ignores them: a flat 4 % click rate. The best
    # slope is 0, below MIN_SLOPE; at MIN_SLOPE the intercept must come down by about MIN_SLOPE x 4, or every
    # served pCTR is about twice the clicks (keeping the intercept fitted for slope 0 serves about 8.5 %).
    rng = np.random.default_rng(21)
    n = 20_000
    scores = sigmoid(rng.normal(4.0, 1.0, size=n))
    clicked = rng.random(n) < 0.04
    fitted = fit_platt(scores, clicked, identity("1"), fitted_at=AT)
    assert fitted.slope == MIN_SLOPE
    assert fitted.intercept == pytest.approx(logit(0.04) - MIN_SLOPE * 4.0, abs=0.1)
    assert clicked.sum() / fitted.apply(scores).sum() == pytest.approx(1.0, abs=0.03)


def test_a_calibration_round_trips_through_json_and_refuses_an_out_of_range_slope():
    calibration = prior_correction("4", 0.48, 0.03)
    assert Calibration.from_json(calibration.to_json()) == calibration
    assert calibration.calibration_id == "4:prior"
    bad = calibration.to_json().replace('"slope": 1.0', '"slope": -1.0')
    with pytest.raises(ValueError, match="out of range"):
        Calibration.from_json(bad)


def test_the_identity_returns_the_scores_unchanged():
    scores = np.array([0.0, 0.25, 1.0])
    assert np.array_equal(identity("1").apply(scores), scores)


def test_a_fit_far_from_its_prior_converges_instead_of_overshooting():
    # Scores that rank but are far too confident (as a model trained on other data serves): the truth's
    # log-odds are 0.25 x the score's minus 3.7. A full Newton step from the prior (slope 1) overshoots.
    rng = np.random.default_rng(5)
    scores = sigmoid(rng.normal(1.0, 4.0, 3000))
    clicked = rng.uniform(size=scores.size) < sigmoid(0.25 * logit(scores) - 3.7)
    fitted = fit_platt(scores, clicked, prior_correction("1", 0.22, 0.03), fitted_at=AT)
    assert fitted.slope == pytest.approx(0.25, abs=0.08) and fitted.intercept == pytest.approx(-3.7, abs=0.3)
    assert fitted.apply(scores).sum() == pytest.approx(clicked.sum(), rel=0.05)


def test_cold_start_brings_the_served_winners_to_the_prior_ctr_within_a_hundred_auctions():
    rng = np.random.default_rng(9)
    cold = ColdStart(prior_ctr=0.03)
    served = []
    for _ in range(1500):
        # 100 candidates of an overconfident model; the auction takes the highest pCTR.
        candidates = sigmoid(rng.normal(0.0, 3.0, 100))
        pctr = cold.apply("7", candidates)
        winner = float(pctr.max())
        cold.observe("7", winner)
        served.append(winner)
    assert np.mean(served[:20]) > 0.5  # what the model alone serves
    # From the 100th auction on, the served winners expect the prior's clicks (it hunts by about 30 % around
    # it over a hundred auctions, and averages out over more).
    assert np.mean(served[100:]) == pytest.approx(0.03, rel=0.1)
    assert all(0.015 < np.mean(served[i : i + 100]) < 0.06 for i in range(100, 1500, 100))
    # A shift in log-odds: the candidates keep their order.
    candidates = sigmoid(rng.normal(0.0, 3.0, 100))
    assert np.array_equal(np.argsort(cold.apply("7", candidates)), np.argsort(candidates))
    # A new model version starts afresh.
    assert np.array_equal(cold.apply("8", candidates), candidates)


def _served_by_auction(rng: np.random.Generator, auctions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(winner's model score, clicked, pricing code) of auctions between 10 CPC candidates, valued at their
    score, and one CPM candidate at a price of its own. The model is unbiased in log-odds but noisy, as any is."""
    true_logit = rng.normal(-3.5, 0.5, size=(auctions, 10))
    score = sigmoid(true_logit + rng.normal(0.0, 1.0, size=(auctions, 10)))
    best = score.argmax(axis=1)
    cpc_wins = 1_000 * score[np.arange(auctions), best] > rng.uniform(50, 150, size=auctions)  # CPC's eCPM vs CPM's
    cpm_score = sigmoid(rng.normal(-3.5, 0.5, size=auctions) + rng.normal(0.0, 1.0, size=auctions))
    cpm_truth = logit(cpm_score)  # the CPM winner is not chosen on its score: its truth is its score's, on average
    winner_score = np.where(cpc_wins, score[np.arange(auctions), best], cpm_score)
    winner_truth = np.where(cpc_wins, true_logit[np.arange(auctions), best], cpm_truth)
    clicked = rng.random(auctions) < sigmoid(winner_truth)
    return winner_score, clicked, np.where(cpc_wins, 1, 0).astype(np.int8)  # codes: CPM 0, CPC 1


def test_offsets_per_pricing_model_undo_the_winners_curse_that_one_pooled_map_cannot():
    rng = np.random.default_rng(23)
    scores, clicked, pricing = _served_by_auction(rng, 60_000)
    assert 0.2 < pricing.mean() < 0.8  # both pricing models win a fair share
    start = identity("1")
    pooled = fit_platt(scores, clicked, start, fitted_at=AT)
    per_model = fit_platt(scores, clicked, start, pricing=pricing, fitted_at=AT)
    # Judged on fresh auctions of the same traffic: observed / expected clicks per pricing model.
    scores, clicked, pricing = _served_by_auction(rng, 60_000)

    def ratio(calibration: Calibration, code: int, with_offsets: bool) -> float:
        rows = pricing == code
        served = calibration.apply(scores[rows], pricing[rows] if with_offsets else None)
        return clicked[rows].sum() / served.sum()

    # The premise: one map for both serves CPC winners above their clicks and CPM winners below theirs.
    assert ratio(pooled, 1, False) < 0.9 and ratio(pooled, 0, False) > 1.25
    assert 0.9 < ratio(per_model, 0, True) < 1.1 and 0.9 < ratio(per_model, 1, True) < 1.1
    assert per_model.offset_cpc < per_model.offset_cpm - 0.2  # CPC winners are marked down
    assert per_model.offset_cpa == 0.0  # no CPA rows: its offset stays at its prior


def test_offsets_apply_per_candidate_and_round_trip():
    calibration = Calibration("3", CalibrationKind.PLATT, slope=1.0, intercept=-1.0, offset_cpc=-0.5, offset_cpa=0.25)
    scores = np.full(4, 0.5)  # logit 0
    codes = pricing_codes(["CPM", "CPC", "CPA", None])
    assert list(codes) == [0, 1, 2, -1]
    served = calibration.apply(scores, codes)
    assert np.allclose(logit(served), [-1.0, -1.5, -0.75, -1.0])
    assert np.allclose(logit(calibration.apply(scores)), -1.0)  # without the candidates' models: the pooled map
    assert Calibration.from_json(calibration.to_json()) == calibration
    # A map written before offsets existed still reads, with none.
    old = '{"clicks": 0, "fitted_at": "", "impressions": 0, "intercept": 0.5, "kind": "prior", "model_version": "2", ' \
          '"prior_ctr": null, "slope": 1.0, "train_positive_rate": null}'  # fmt: skip
    assert Calibration.from_json(old).offsets.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert not Calibration("3", CalibrationKind.PLATT, offset_cpm=0.1).is_identity


def test_category_offsets_undo_a_models_bias_for_a_whole_category():
    # The model is calibrated on average but scores "Books" ads twice too high and "Toys" ads twice too low
    # (in odds); the live truth is the same for both.
    rng = np.random.default_rng(5)
    n = 40_000
    true_logit = rng.normal(-3.5, 0.8, size=n)
    category = rng.choice(np.array(["Books", "Toys", "Garden"], dtype=object), size=n)
    bias = np.select([category == "Books", category == "Toys"], [np.log(2.0), -np.log(2.0)], 0.0)
    scores = sigmoid(true_logit + bias)
    clicked = rng.random(n) < sigmoid(true_logit)
    start = identity("1")
    pooled = fit_platt(scores, clicked, start, fitted_at=AT)
    fitted = fit_platt(scores, clicked, start, categories=category, fitted_at=AT)
    offsets = dict(fitted.category_offsets)
    assert sorted(offsets) == ["Books", "Garden", "Toys"]
    assert abs(offsets["Books"] - offsets["Toys"] + 2 * np.log(2.0)) < 0.2  # the two biases, undone
    codes = category_codes(category)

    def ratio(calibration: Calibration, name: str, with_offsets: bool) -> float:
        rows = category == name
        served = calibration.apply(scores[rows], category=codes[rows] if with_offsets else None)
        return clicked[rows].sum() / served.sum()

    assert ratio(pooled, "Books", False) < 0.7 and ratio(pooled, "Toys", False) > 1.4  # the premise
    for name in ("Books", "Toys", "Garden"):
        assert 0.9 < ratio(fitted, name, True) < 1.1


def test_category_offsets_apply_by_code_and_round_trip():
    calibration = Calibration("3", CalibrationKind.PLATT, category_offsets={"Books": -0.5, "Toys": 0.25})
    assert calibration.category_offsets == (("Books", -0.5), ("Toys", 0.25))
    # Codes come from one process-wide vocabulary; a category the map has no offset for, or none, gets 0.
    codes = category_codes(["Toys", "Books", "Unseen", None])
    assert codes[3] == -1 and len(set(codes[:3].tolist())) == 3
    served = calibration.apply(np.full(4, 0.5), category=codes)
    assert np.allclose(logit(served), [0.25, -0.5, 0.0, 0.0])
    # A category first seen after the map was applied once still finds its offset (the table is rebuilt).
    later = category_codes(["Later"])
    assert np.allclose(logit(calibration.apply(np.full(1, 0.5), category=later)), 0.0)
    assert Calibration.from_json(calibration.to_json()) == calibration
    assert not calibration.is_identity
    with pytest.raises(ValueError, match="out of range"):
        Calibration.from_json(calibration.to_json().replace("0.25", "NaN"))


def test_a_refit_starts_from_its_priors_offsets_and_keeps_those_the_data_says_nothing_about():
    # An earlier map learned that CPC winners are overrated (-0.6) and that "Toys" clicks above the pooled map
    # (+0.4). The window holds only CPM impressions of "Books", clicked exactly as that map says.
    earlier = Calibration("3", CalibrationKind.PLATT, slope=1.0, intercept=-3.0, offset_cpc=-0.6, offset_cpa=0.2,
                          category_offsets={"Toys": 0.4})  # fmt: skip
    rng = np.random.default_rng(11)
    n = 20_000
    scores = sigmoid(rng.normal(0.0, 1.0, size=n))
    clicked = rng.random(n) < sigmoid(logit(scores) - 3.0)
    pricing = pricing_codes(["CPM"] * n)
    books = np.full(n, "Books", dtype=object)
    fitted = fit_platt(scores, clicked, earlier, pricing=pricing, categories=books, fitted_at=AT)
    # Nothing in the window bears on CPC, CPA or Toys: their offsets are the prior's, to float precision.
    assert fitted.offset_cpc == pytest.approx(-0.6, abs=1e-9)
    assert fitted.offset_cpa == pytest.approx(0.2, abs=1e-9)
    assert dict(fitted.category_offsets)["Toys"] == pytest.approx(0.4, abs=1e-9)
    # What it does bear on is fitted: CPM Books ads click at the earlier map's rate.
    cpm_books = fitted.intercept + fitted.offset_cpm + dict(fitted.category_offsets)["Books"]
    assert fitted.slope == pytest.approx(1.0, abs=0.1) and cpm_books == pytest.approx(-3.0, abs=0.15)
    # From a registered calibration (no offsets) the same window leaves the CPC offset at 0 and knows no Toys.
    fresh = fit_platt(scores, clicked, prior_correction("3", 0.5, 0.03), pricing=pricing, categories=books,
                      fitted_at=AT)  # fmt: skip
    assert fresh.offset_cpc == 0.0 and "Toys" not in dict(fresh.category_offsets)
