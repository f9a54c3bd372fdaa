import numpy as np
import pandas as pd
import pytest

from ml.features import FEATURES, LABEL
from ml.metrics import evaluate, normalized_entropy, roc_auc
from ml.pipelines import FAMILIES, MISSING_CATEGORY, FillMissingCategory, logistic_regression
from ml.split import time_split
from tests.ml.factories import training_frame


@pytest.fixture(scope="module")
def advertising_like():
    return time_split(training_frame(1_000, seed=3))


def fit(build, train: pd.DataFrame):
    return build().fit(train[list(FEATURES)], train[LABEL].to_numpy())


def test_logistic_regression_separates_advertising_like_clicks_on_the_later_holdout(advertising_like):
    train, holdout = advertising_like
    pctr = fit(logistic_regression, train).predict_proba(holdout[list(FEATURES)])[:, 1]
    assert roc_auc(holdout[LABEL], pctr) >= 0.95


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_beats_the_constant_ctr_baseline_which_scores_ne_about_one(family, advertising_like):
    train, holdout = advertising_like
    constant = np.full(len(holdout), train[LABEL].mean())
    assert normalized_entropy(holdout[LABEL], constant) == pytest.approx(1.0, abs=0.02)
    pctr = fit(FAMILIES[family], train).predict_proba(holdout[list(FEATURES)])[:, 1]
    metrics = evaluate(holdout[LABEL], pctr)
    assert metrics["normalized_entropy"] < 0.8
    assert 0.8 <= metrics["calibration"] <= 1.2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_deterministic(family, advertising_like):
    train, holdout = advertising_like
    first = fit(FAMILIES[family], train).predict_proba(holdout[list(FEATURES)])
    second = fit(FAMILIES[family], train).predict_proba(holdout[list(FEATURES)])
    np.testing.assert_array_equal(first, second)


def test_none_nan_and_pandas_na_are_one_missing_category():
    column = pd.DataFrame({"device_type": pd.Series(["mobile", None, np.nan, pd.NA], dtype=object)})
    filled = FillMissingCategory().fit(column).transform(column)
    assert filled[:, 0].tolist() == ["mobile", MISSING_CATEGORY, MISSING_CATEGORY, MISSING_CATEGORY]
