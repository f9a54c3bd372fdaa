"""The champion compiled to native code (treelite + tl2cgen): equal to predict_proba, refused where it must be."""

from __future__ import annotations

import hashlib
import platform
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import tl2cgen
import treelite
from sklearn.pipeline import Pipeline

from adstream.contracts import REGISTERED_MODEL
from ml import native as native_module
from ml.features import FEATURES, LABEL
from ml.native import (
    CompilerUnavailable,
    NativeArtifact,
    NativeScorer,
    NotCompilable,
    build_native,
    load_native,
    platform_tag,
)
from ml.pipelines import FAMILIES
from ml.registry import (
    NATIVE_ARTIFACT_TAG,
    NATIVE_COMPILER_TAG,
    NATIVE_SKIPPED_TAG,
    model_artifact,
    native_artifact,
)
from ml.scorer import Coded, CompiledScorer
from ml.split import time_split
from ml.tracking import tracking_client
from tests.ml.factories import awkward_candidates, training_frame
from tests.ml.registered import register

TOLERANCE = 1e-6
SHA = "0" * 64  # stands for the skops file's sha256 where no file is involved
TREE_FAMILIES = [family for family in FAMILIES if family != "logistic_regression"]


def _low_word_all_ones(values: np.ndarray) -> np.ndarray:
    """``values`` with the low 32 bits of each float64 set: what tl2cgen's union would read as missing."""
    return (np.asarray(values, dtype=np.float64).view(np.uint64) | np.uint64(0xFFFFFFFF)).view(np.float64)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training set and 100 candidates with NaN numerics, None/NaN/pd.NA categories, unseen
    categories and values whose low word is all ones."""
    train, holdout = time_split(training_frame(800, seed=5))
    candidates = awkward_candidates(holdout, rows=100)
    for name in ("ad_ctr_smoothed", "category_ctr_smoothed", "daily_internet_usage"):
        candidates.loc[60:79, name] = _low_word_all_ones(candidates.loc[60:79, name].to_numpy(dtype=float))
    return train, candidates


@pytest.fixture(scope="module")
def every_family(data) -> dict[str, tuple[Pipeline, CompiledScorer, NativeArtifact | None]]:
    """Per family, fitted once: the pipeline, its CompiledScorer, its native artifact (None: nothing to compile)."""
    train, _ = data
    built = {}
    for family, make in FAMILIES.items():
        pipeline = make().fit(train[list(FEATURES)], train[LABEL].to_numpy())
        compiled = CompiledScorer.from_pipeline(pipeline)
        try:
            artifact = build_native(compiled, SHA, model_version="7")
        except NotCompilable:
            artifact = None
        built[family] = (pipeline, compiled, artifact)
    return built


@pytest.fixture(params=list(FAMILIES))
def built(request, every_family) -> tuple[str, Pipeline, CompiledScorer, NativeArtifact | None]:
    return request.param, *every_family[request.param]


@pytest.fixture(params=TREE_FAMILIES)
def tree_built(request, every_family) -> tuple[str, Pipeline, CompiledScorer, NativeArtifact]:
    return request.param, *every_family[request.param]


def served_scorer(compiled: CompiledScorer, artifact: NativeArtifact | None) -> CompiledScorer | NativeScorer:
    """What serving scores with: the native scorer where there is one, else the CompiledScorer."""
    return compiled if artifact is None else load_native(artifact, compiled, SHA)


def test_the_batch_holds_every_awkward_value(data):
    train, candidates = data
    assert not set(candidates["country"]) <= set(train["country"])
    assert candidates["device_type"].isna().sum() >= 10 and candidates["gender"].isna().sum() >= 5
    assert candidates["age"].isna().sum() == 5


def test_tree_families_compile_and_linear_regression_stays_on_numpy(built):
    family, _, compiled, artifact = built
    if family == "logistic_regression":
        assert artifact is None  # a dot product: nothing for native code to speed up
    else:
        assert isinstance(load_native(artifact, compiled, SHA), NativeScorer)


def test_every_family_as_served_equals_predict_proba_within_1e_6(built, data):
    family, pipeline, compiled, artifact = built
    _, candidates = data
    expected = pipeline.predict_proba(candidates)[:, 1]
    scorer = served_scorer(compiled, artifact)
    assert scorer.kind == ("numpy" if family == "logistic_regression" else "native")
    as_lists = {name: candidates[name].tolist() for name in FEATURES}
    as_arrays = {name: candidates[name].to_numpy() for name in FEATURES}
    np.testing.assert_allclose(scorer.score(as_lists), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(scorer.score(as_arrays), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(scorer.score_records(candidates.to_dict(orient="records")), expected, atol=TOLERANCE)
    assert expected.std() > 0.1  # scores that vary, or the comparison says little


def test_native_scores_categories_given_as_coded_and_an_empty_batch(built, data):
    _, pipeline, compiled, artifact = built
    _, candidates = data
    scorer = served_scorer(compiled, artifact)
    batch: dict = {name: candidates[name].to_numpy() for name in FEATURES}
    for name in ("gender", "income_band", "country", "ad_category", "device_type"):
        column = candidates[name].tolist()
        index = {value: i for i, value in enumerate(dict.fromkeys(column))}
        batch[name] = Coded(tuple(index), np.array([index[value] for value in column], dtype=np.intp))
    np.testing.assert_allclose(scorer.score(batch), pipeline.predict_proba(candidates)[:, 1], atol=TOLERANCE)
    assert scorer.score({name: [] for name in FEATURES}).shape == (0,)


@pytest.mark.parametrize("family", TREE_FAMILIES)
def test_native_equals_predict_proba_when_missingness_itself_predicts_clicks(family):
    # Trees then split on "missing or not" (threshold +inf in HistGradientBoosting).
    frame = training_frame(1_000, seed=4, null_share=0.3)
    frame.loc[frame["area_income"].isna(), "label"] = 1
    train, holdout = time_split(frame)
    pipeline = FAMILIES[family]().fit(train[list(FEATURES)], train[LABEL].to_numpy())
    candidates = holdout[list(FEATURES)].head(100).copy()
    assert candidates["area_income"].isna().sum() >= 10
    if family == "gradient_boosted_trees":  # the only family whose pipeline takes infinities
        candidates.loc[candidates.index[:5], "area_income"] = np.inf
        candidates.loc[candidates.index[5:10], "age"] = -np.inf
    compiled = CompiledScorer.from_pipeline(pipeline)
    scorer = load_native(build_native(compiled, SHA), compiled, SHA)
    got = scorer.score({name: candidates[name].to_numpy() for name in FEATURES})
    np.testing.assert_allclose(got, pipeline.predict_proba(candidates)[:, 1], rtol=0, atol=TOLERANCE)


def test_the_manifest_names_what_built_the_library_and_for_what(tree_built):
    family, _, compiled, artifact = tree_built
    manifest = artifact.manifest
    assert manifest["model_sha256"] == SHA and manifest["model_version"] == "7"
    assert manifest["family"] == family and manifest["features"] == list(compiled.features)
    assert manifest["platform"] == platform_tag()
    assert platform_tag().startswith(f"{sys.platform}-{platform.machine()}-")  # e.g. linux-x86_64-glibc
    assert manifest["compiler"]["treelite"] == treelite.__version__
    assert manifest["compiler"]["tl2cgen"] == tl2cgen.__version__
    assert manifest["compiler"]["toolchain_version"].startswith("gcc")
    assert manifest["library_sha256"] == hashlib.sha256(artifact.library).hexdigest()
    assert artifact.compiler.startswith(f"treelite {treelite.__version__}, tl2cgen {tl2cgen.__version__}, gcc")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"platform": "darwin-arm64-unknown"}, "platform"),
        ({"model_sha256": "f" * 64}, "sha256"),
        ({"libc_version": "99.0"}, "libc"),
        ({"compiler": {"tl2cgen": "0.1.0"}}, "tl2cgen"),
        ({"features": ["age"]}, "feature order"),
        ({"library_sha256": "e" * 64}, "corrupted"),
    ],
)
def test_an_artifact_for_another_platform_or_model_is_refused(tree_built, change, why, caplog):
    _, _, compiled, artifact = tree_built
    other = replace(artifact, manifest=artifact.manifest | change)
    assert load_native(other, compiled, SHA) is None
    assert why in caplog.text


def test_a_library_that_does_not_load_is_refused(tree_built, caplog):
    _, _, compiled, artifact = tree_built
    garbage = b"not a shared library"
    other = NativeArtifact(artifact.manifest | {"library_sha256": hashlib.sha256(garbage).hexdigest()}, garbage)
    assert load_native(other, compiled, SHA) is None
    assert "does not load" in caplog.text


def test_the_artifact_round_trips_through_a_directory(tree_built, tmp_path):
    _, _, _, artifact = tree_built
    assert NativeArtifact.read(artifact.write(tmp_path / "native")) == artifact


def test_without_a_c_compiler_nothing_is_compiled(tree_built):
    _, _, compiled, _ = tree_built
    with pytest.raises(CompilerUnavailable):
        build_native(compiled, SHA, toolchain="no-such-cc")


# --- registration: the library is compiled and logged beside the registered version ---


def _log_and_register(uri: str, pipeline) -> str:
    return register(uri, pipeline, "gradient_boosted_trees")


@pytest.fixture(scope="module")
def gbdt(every_family) -> Pipeline:
    return every_family["gradient_boosted_trees"][0]


def test_registration_logs_the_native_library_beside_the_version(mlflow_uri, gbdt, data):
    version = _log_and_register(mlflow_uri, gbdt)
    tags = tracking_client(mlflow_uri).get_model_version(REGISTERED_MODEL, version).tags
    assert tags[NATIVE_ARTIFACT_TAG].startswith(f"native/{platform_tag()}-")
    assert tags[NATIVE_COMPILER_TAG].startswith(f"treelite {treelite.__version__}, tl2cgen {tl2cgen.__version__}")
    artifact = native_artifact(mlflow_uri, version)
    sha256 = hashlib.sha256(model_artifact(mlflow_uri, version)).hexdigest()
    assert (artifact.manifest["model_sha256"], artifact.manifest["model_version"]) == (sha256, version)
    scorer = load_native(artifact, CompiledScorer.from_pipeline(gbdt), sha256)
    _, candidates = data
    got = scorer.score({name: candidates[name].tolist() for name in FEATURES})
    np.testing.assert_allclose(got, gbdt.predict_proba(candidates)[:, 1], rtol=0, atol=TOLERANCE)


def test_registration_without_a_c_compiler_registers_without_native_code(mlflow_uri, gbdt, monkeypatch, caplog):
    monkeypatch.setattr(native_module, "TOOLCHAIN", "no-such-cc")
    version = _log_and_register(mlflow_uri, gbdt)
    tags = tracking_client(mlflow_uri).get_model_version(REGISTERED_MODEL, version).tags
    assert NATIVE_ARTIFACT_TAG not in tags and "no-such-cc" in tags[NATIVE_SKIPPED_TAG]
    assert native_artifact(mlflow_uri, version) is None
    assert "registered without native code" in caplog.text


def test_a_linear_model_is_registered_without_native_code_and_says_why(mlflow_uri, every_family):
    version = _log_and_register(mlflow_uri, every_family["logistic_regression"][0])
    tags = tracking_client(mlflow_uri).get_model_version(REGISTERED_MODEL, version).tags
    assert "NotCompilable" in tags[NATIVE_SKIPPED_TAG]
    assert native_artifact(mlflow_uri, version) is None
