import math

import pytest

from ml.metrics import calibration, evaluate, log_loss, normalized_entropy, pr_auc, roc_auc

# Four impressions, two clicks. Worked by hand:
#   log loss = -(ln 0.8 + ln 0.5 + ln 0.9 + ln 0.4) / 4 = 1.937941979... / 4 = 0.484485495
#   base CTR 0.5, entropy ln 2 = 0.693147181, so NE = 0.484485495 / 0.693147181 = 0.698964821
#   calibration = (0.8 + 0.5 + 0.1 + 0.4) / 2 clicks = 0.9
#   ROC AUC: of the 4 (click, non-click) pairs only (0.4, 0.5) is misordered -> 3/4
#   PR AUC (average precision): ranked 0.8+ 0.5- 0.4+ 0.1-, precision 1 at recall 1/2 and
#   2/3 at recall 1 -> 1/2 * 1 + 1/2 * 2/3 = 5/6
Y = [1, 0, 0, 1]
P = [0.8, 0.5, 0.1, 0.4]


def test_log_loss_of_four_examples():
    assert log_loss(Y, P) == pytest.approx(0.484485495, abs=1e-9)


def test_normalized_entropy_divides_by_the_entropy_of_the_evaluated_sets_ctr():
    assert normalized_entropy(Y, P) == pytest.approx(0.698964821, abs=1e-9)


def test_calibration_is_predicted_over_observed_clicks():
    assert calibration(Y, P) == pytest.approx(0.9)


def test_ranking_metrics():
    assert roc_auc(Y, P) == pytest.approx(0.75)
    assert pr_auc(Y, P) == pytest.approx(5 / 6)


def test_predicting_the_sets_own_ctr_scores_ne_exactly_one():
    assert normalized_entropy([1, 0, 0, 0], [0.25] * 4) == pytest.approx(1.0, abs=1e-12)


def test_a_coin_flip_on_a_quarter_ctr_set_scores_ne_above_one():
    # log loss ln 2 = 0.693147181; entropy of 0.25 = 0.562335145; NE = 1.232622907
    assert normalized_entropy([1, 0, 0, 0], [0.5] * 4) == pytest.approx(1.232622907, abs=1e-9)


def test_a_single_class_set_has_no_ne_auc_or_calibration():
    assert math.isnan(normalized_entropy([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(calibration([0, 0, 0], [0.1, 0.2, 0.3]))


def test_a_confident_mistake_costs_a_large_but_finite_loss():
    assert 30 < log_loss([1], [0.0]) < 40  # -ln(1e-15) = 34.5


def test_evaluate_reports_every_metric():
    assert evaluate(Y, P) == pytest.approx(
        {
            "roc_auc": 0.75,
            "log_loss": 0.484485495,
            "normalized_entropy": 0.698964821,
            "calibration": 0.9,
            "pr_auc": 5 / 6,
            "base_ctr": 0.5,
            "examples": 4.0,
        }
    )


def test_labels_must_be_zero_or_one_and_lengths_equal():
    with pytest.raises(ValueError, match="0/1"):
        evaluate([1, 2], [0.5, 0.5])
    with pytest.raises(ValueError, match="equal length"):
        evaluate([1, 0], [0.5])
