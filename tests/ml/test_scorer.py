import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from ml.features import FEATURES, LABEL
from ml.pipelines import FAMILIES
from ml.scorer import Coded, CompiledScorer, UnsupportedModelError
from ml.split import time_split
from tests.ml.factories import awkward_candidates, training_frame


@pytest.fixture(scope="module")
def data():
    train, holdout = time_split(training_frame(800, seed=5))
    return train, awkward_candidates(holdout, rows=100)


@pytest.fixture(scope="module", params=list(FAMILIES))
def fitted(request, data):
    train, _ = data
    return request.param, FAMILIES[request.param]().fit(train[list(FEATURES)], train[LABEL].to_numpy())


def test_the_batch_really_holds_unseen_categories_and_missing_values(data):
    train, candidates = data
    assert not set(candidates["country"]) <= set(train["country"])
    assert not set(candidates["ad_category"]) <= set(train["ad_category"])
    assert candidates["device_type"].isna().sum() >= 10 and candidates["age"].isna().sum() == 5


def test_compiled_scores_equal_predict_proba_on_100_candidates(fitted, data):
    _, pipeline = fitted
    _, candidates = data
    expected = pipeline.predict_proba(candidates)[:, 1]
    scorer = CompiledScorer.from_pipeline(pipeline)
    as_lists = {name: candidates[name].tolist() for name in FEATURES}
    as_arrays = {name: candidates[name].to_numpy() for name in FEATURES}
    np.testing.assert_allclose(scorer.score(as_lists), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scorer.score(as_arrays), expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scorer.score_records(candidates.to_dict(orient="records")), expected, rtol=0, atol=1e-9)
    assert expected.std() > 0.1  # a model that says the same for everyone would make this test vacuous


def test_categorical_columns_given_as_distinct_values_and_codes_score_the_same(fitted, data):
    _, pipeline = fitted
    _, candidates = data
    expected = pipeline.predict_proba(candidates)[:, 1]
    batch: dict = {name: candidates[name].to_numpy() for name in FEATURES}
    for name in ("gender", "income_band", "country", "ad_category", "device_type"):
        # None, NaN and unseen values among the distinct ones (the batch holds all three)
        column = candidates[name].tolist()
        index = {value: i for i, value in enumerate(dict.fromkeys(column))}  # by identity first: NA, NaN
        batch[name] = Coded(tuple(index), np.array([index[value] for value in column], dtype=np.intp))
    scorer = CompiledScorer.from_pipeline(pipeline)
    np.testing.assert_allclose(scorer.score(batch), expected, rtol=0, atol=1e-9)
    one_user = {name: candidates[name].to_numpy()[:1].repeat(7) for name in FEATURES}
    repeated = one_user | {"country": Coded.repeat(candidates["country"].iloc[0], 7)}
    np.testing.assert_allclose(scorer.score(repeated), scorer.score(one_user), rtol=0, atol=1e-12)


def test_an_absent_key_in_a_record_scores_as_missing(fitted, data):
    _, pipeline = fitted
    _, candidates = data
    records = candidates.head(3).to_dict(orient="records")
    for record in records:
        del record["device_type"]
    expected = pipeline.predict_proba(candidates.head(3).assign(device_type=None))[:, 1]
    np.testing.assert_allclose(
        CompiledScorer.from_pipeline(pipeline).score_records(records), expected, rtol=0, atol=1e-9
    )


def test_a_batch_without_a_feature_column_is_refused_naming_it(fitted, data):
    _, pipeline = fitted
    _, candidates = data
    batch = {name: candidates[name].tolist() for name in FEATURES if name != "area_income"}
    with pytest.raises(KeyError, match="area_income"):
        CompiledScorer.from_pipeline(pipeline).score(batch)


def test_a_pipeline_of_another_shape_is_refused():
    train = training_frame(50)
    pipeline = Pipeline([("classifier", DummyClassifier())]).fit(train[list(FEATURES)], train[LABEL])
    with pytest.raises(UnsupportedModelError):
        CompiledScorer.from_pipeline(pipeline)


def test_the_scorer_names_its_family_and_features_and_scores_an_empty_batch(fitted):
    family, pipeline = fitted
    scorer = CompiledScorer.from_pipeline(pipeline)
    assert scorer.family == family
    assert sorted(scorer.features) == sorted(FEATURES)
    assert scorer.score({name: [] for name in FEATURES}).shape == (0,)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_scores_stay_equal_when_missingness_itself_predicts_clicks(family):
    frame = training_frame(1_000, seed=4, null_share=0.3)
    frame.loc[frame["area_income"].isna(), "label"] = 1  # trees learn "missing or not" splits on it
    train, holdout = time_split(frame)
    pipeline = FAMILIES[family]().fit(train[list(FEATURES)], train[LABEL].to_numpy())
    candidates = holdout[list(FEATURES)].head(100)
    assert candidates["area_income"].isna().sum() >= 10
    expected = pipeline.predict_proba(candidates)[:, 1]
    got = CompiledScorer.from_pipeline(pipeline).score({name: candidates[name].to_numpy() for name in FEATURES})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
