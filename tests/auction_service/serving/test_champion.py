"""The champion in the service, against a real MLflow store (SQLite + local artifacts)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from adstream.contracts import CHAMPION_ALIAS, REGISTERED_MODEL
from adstream.settings import Settings
from auction_service.serving.champion import (
    ADVICE,
    MANIFEST,
    ModelNotReady,
    ModelWatcher,
    PollOutcome,
    ServingModel,
)
from ml import native
from ml.calibrate import write_calibrators
from ml.calibration import Calibration, CalibrationKind, identity, prior_correction
from ml.features import FEATURES, LABEL, NUMERIC_FEATURES
from ml.native import MANIFEST_NAME as NATIVE_MANIFEST
from ml.pipelines import gradient_boosted_trees, logistic_regression
from ml.registry import load_model_version
from ml.scorer import CompiledScorer
from ml.tracking import tracking_client
from tests.conftest import free_port, make_settings
from tests.ml.conftest import forget_fluent_uris, new_store, one_openmp_thread
from tests.ml.factories import awkward_candidates, training_frame
from tests.ml.registered import register


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    with one_openmp_thread():
        yield


@pytest.fixture(scope="module")
def db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    tracking_client(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture(scope="module")
def pipelines() -> dict[str, Pipeline]:
    """Two good champions of different families, one that scores NaN and one the compiler refuses."""
    frame = training_frame(300, seed=31)
    features, labels = frame[list(FEATURES)], frame[LABEL].to_numpy()
    nan_weights = logistic_regression().fit(features, labels)
    nan_weights.named_steps["classifier"].coef_[:] = np.nan
    return {
        "v1": logistic_regression().fit(features, labels),
        "v2": gradient_boosted_trees().fit(features, labels),
        "nan_weights": nan_weights,
        "uncompilable": Pipeline([("classifier", LogisticRegression(max_iter=1000))]).fit(
            frame[list(NUMERIC_FEATURES)].fillna(0.0), labels
        ),
    }


@pytest.fixture(scope="module")
def batch() -> dict[str, list]:
    candidates = awkward_candidates(training_frame(300, seed=32))
    return {name: candidates[name].tolist() for name in FEATURES}


@pytest.fixture
def settings(tmp_path: Path, db_template: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.chdir(tmp_path)  # nothing MLflow writes by default may land in the repo
    forget_fluent_uris(monkeypatch)
    yield make_settings(tmp_path, mlflow_tracking_uri=new_store(tmp_path, db_template))
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def make_champion(uri: str, pipeline: Pipeline, calibration: Calibration | None = None) -> str:
    """Logs and registers ``pipeline``, then moves ``champion`` to it (as a promotion would)."""
    version = register(uri, pipeline, "test", calibration)
    tracking_client(uri).set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version)
    return version


def own_scores(uri: str, version: str, batch: dict[str, list]) -> np.ndarray:
    """What the version's own registered artifact, compiled, gives for ``batch``."""
    return CompiledScorer.from_pipeline(load_model_version(uri, version)).score(batch)


def unreachable(settings: Settings, tmp_path: Path) -> Settings:
    """The same machine (same local copy) with MLFLOW_TRACKING_URI at a port nobody listens on."""
    return make_settings(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", local_dir=settings.local_dir)


def test_loads_the_champion_and_keeps_a_verified_local_copy(settings, pipelines, batch):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, pipelines["v1"])
    serving = ServingModel.load_at_start(settings)
    assert (serving.ready, serving.reason, serving.version) == (True, "", "1")
    assert serving.current.family == "logistic_regression"
    assert serving.current.origin == f"MLflow at {uri}"
    pctr, version = serving.score(batch)
    assert version == "1"
    candidates = awkward_candidates(training_frame(300, seed=32))
    np.testing.assert_allclose(pctr, pipelines["v1"].predict_proba(candidates)[:, 1], rtol=0, atol=1e-9)
    manifest = json.loads((settings.model_cache_dir / MANIFEST).read_text())
    artifact = (settings.model_cache_dir / manifest["artifact"]).read_bytes()
    assert manifest | {"saved_at": None} == {
        "registered_model": REGISTERED_MODEL,
        "version": "1",
        "family": "logistic_regression",
        "tracking_uri": uri,
        "saved_at": None,
        "artifact": "ctr-model-v1.skops",
        "sha256": hashlib.sha256(artifact).hexdigest(),
        "native": None,  # logistic regression: nothing compiled, the numpy scorer serves
        "calibration": identity("1").to_json(),  # registered without one: its raw score is served
    }
    assert serving.current.scorer_kind == "numpy"


def test_poll_swaps_to_a_newly_promoted_champion(settings, pipelines, batch):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, pipelines["v1"])
    serving = ServingModel.load_at_start(settings)
    watcher = ModelWatcher(settings, serving)
    assert watcher.poll_once() is PollOutcome.UNCHANGED
    assert make_champion(uri, pipelines["v2"]) == "2"
    assert watcher.poll_once() is PollOutcome.SWAPPED
    assert (serving.version, serving.current.family) == ("2", "gradient_boosted_trees")
    assert serving.current.scorer_kind == "native"
    np.testing.assert_allclose(serving.score(batch)[0], own_scores(uri, "2", batch), rtol=0, atol=1e-9)
    assert (watcher.swaps, watcher.failures, watcher.poll_errors) == (1, 0, 0)
    assert watcher.poll_once() is PollOutcome.UNCHANGED
    # The local copy follows the swap and the old version's file is gone.
    assert json.loads((settings.model_cache_dir / MANIFEST).read_text())["version"] == "2"
    assert sorted(p.name for p in settings.model_cache_dir.glob("*.skops")) == ["ctr-model-v2.skops"]


def test_requests_scoring_through_a_swap_never_fail_and_each_sees_one_whole_version(settings, pipelines, batch):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, pipelines["v1"])
    serving = ServingModel.load_at_start(settings)
    watcher = ModelWatcher(settings, serving)
    make_champion(uri, pipelines["v2"])
    expected = {version: own_scores(uri, version, batch) for version in ("1", "2")}
    assert not np.allclose(expected["1"], expected["2"])  # otherwise the check below proves nothing
    seen: list[tuple[str, np.ndarray]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def requests() -> None:
        while not done.is_set():
            try:
                pctr, version = serving.score(batch)
                seen.append((version, pctr))
            except BaseException as exc:  # recorded, so the test fails on it rather than the thread dying
                errors.append(exc)

    scoring = threading.Thread(target=requests, daemon=True)
    scoring.start()
    while not seen:
        time.sleep(0.001)
    assert watcher.poll_once() is PollOutcome.SWAPPED
    after_swap = len(seen)
    while len(seen) < after_swap + 50:
        time.sleep(0.001)
    done.set()
    scoring.join(10)
    assert errors == []
    assert {version for version, _ in seen} == {"1", "2"}
    for version, pctr in seen:
        np.testing.assert_allclose(pctr, expected[version], rtol=0, atol=1e-12)
    # A request in flight at the swap may finish on version 1 after it; none starts on 1 once 2 served.
    versions = [version for version, _ in seen]
    assert versions == sorted(versions)


@pytest.mark.parametrize("registry", ["unreachable", "without a champion"])
def test_without_mlflow_champion_at_start_the_local_copy_serves(
    settings, pipelines, batch, tmp_path, db_template, registry
):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, pipelines["v1"])
    ServingModel.load_at_start(settings)  # writes the local copy
    expected = own_scores(uri, "1", batch)
    if registry == "unreachable":
        later = unreachable(settings, tmp_path / "later")
    else:
        empty_store = tmp_path / "empty-store"
        empty_store.mkdir()
        later = make_settings(
            tmp_path / "later", mlflow_tracking_uri=new_store(empty_store, db_template), local_dir=settings.local_dir
        )
    serving = ServingModel.load_at_start(later)
    assert (serving.ready, serving.version, serving.current.family) == (True, "1", "logistic_regression")
    assert serving.current.origin.startswith("local copy saved ") and serving.current.origin.endswith(uri)
    np.testing.assert_array_equal(serving.score(batch)[0], expected)
    # The watcher keeps trying and keeps the copy serving meanwhile.
    watcher = ModelWatcher(later, serving)
    outcome = watcher.poll_once()
    assert outcome is (PollOutcome.UNREACHABLE if registry == "unreachable" else PollOutcome.NO_CHAMPION)
    assert serving.version == "1"


def test_without_a_local_copy_the_model_is_not_ready_and_says_why(settings, tmp_path):
    down = unreachable(settings, tmp_path / "down")
    serving = ServingModel.load_at_start(down)
    assert not serving.ready
    assert serving.reason == (
        f"MLflow at {down.mlflow_tracking_uri} is unreachable (MLFLOW_TRACKING_URI), and no local copy exists "
        f"in {down.model_cache_dir}; train a model (DAG ctr_training) or start MLflow"
    )
    with pytest.raises(ModelNotReady, match="MLFLOW_TRACKING_URI"):
        serving.score({})


def test_a_model_not_ready_at_start_becomes_ready_with_the_first_champion(settings, pipelines):
    serving = ServingModel.load_at_start(settings)
    assert not serving.ready
    assert "has no ctr-model@champion" in serving.reason
    watcher = ModelWatcher(settings, serving)
    assert watcher.poll_once() is PollOutcome.NO_CHAMPION
    assert serving.reason.endswith(f"no usable local copy in {settings.model_cache_dir}); {ADVICE}")
    make_champion(settings.mlflow_tracking_uri, pipelines["v1"])
    assert watcher.poll_once() is PollOutcome.SWAPPED
    assert (serving.ready, serving.reason, serving.version) == (True, "", "1")


@pytest.mark.parametrize("damage", ["artifact bytes", "manifest"])
def test_a_corrupted_local_copy_is_refused(settings, pipelines, tmp_path, damage):
    make_champion(settings.mlflow_tracking_uri, pipelines["v1"])
    ServingModel.load_at_start(settings)
    if damage == "artifact bytes":
        artifact = settings.model_cache_dir / "ctr-model-v1.skops"
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
        why = "has sha256 [0-9a-f]{64}, its manifest says [0-9a-f]{64}: corrupted"
    else:
        (settings.model_cache_dir / MANIFEST).write_text('{"version": "1", "artifa')
        why = "champion.json or its artifact is unreadable: JSONDecodeError"
    serving = ServingModel.load_at_start(unreachable(settings, tmp_path / "down"))
    assert not serving.ready
    assert "is unreachable (MLFLOW_TRACKING_URI), and the local copy in" in serving.reason
    assert "was refused" in serving.reason
    assert re.search(why, serving.reason)


@pytest.mark.parametrize(
    ("broken", "why"),
    [("nan_weights", "scores the probe batch to \\[nan, nan\\]"), ("uncompilable", "UnsupportedModelError")],
)
def test_a_broken_new_champion_is_refused_and_the_old_model_keeps_serving(settings, pipelines, batch, broken, why):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, pipelines["v1"])
    serving = ServingModel.load_at_start(settings)
    before = serving.score(batch)[0]
    watcher = ModelWatcher(settings, serving)
    make_champion(uri, pipelines[broken])
    assert watcher.poll_once() is PollOutcome.REFUSED
    assert serving.version == "1"
    np.testing.assert_array_equal(serving.score(batch)[0], before)
    assert (watcher.swaps, watcher.failures) == (0, 1)
    assert watcher.last_error.startswith("ctr-model version 2 refused (")
    assert watcher.last_error.endswith("still serving version 1")
    assert re.search(why, watcher.last_error)
    # Not downloaded again on every poll, and the local copy is still the good version.
    assert watcher.poll_once() is PollOutcome.SKIPPED
    assert watcher.failures == 1
    assert json.loads((settings.model_cache_dir / MANIFEST).read_text())["version"] == "1"


def test_the_watcher_thread_swaps_on_its_own_and_stops(tmp_path, db_template, pipelines, monkeypatch):
    monkeypatch.chdir(tmp_path)
    forget_fluent_uris(monkeypatch)
    settings = make_settings(tmp_path, mlflow_tracking_uri=new_store(tmp_path, db_template), model_poll_s=0.05)
    make_champion(settings.mlflow_tracking_uri, pipelines["v1"])
    serving = ServingModel.load_at_start(settings)
    watcher = ModelWatcher(settings, serving)
    watcher.start()
    try:
        assert watcher.running
        make_champion(settings.mlflow_tracking_uri, pipelines["v2"])
        deadline = time.monotonic() + 60
        while serving.version != "2" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert serving.version == "2"
    finally:
        watcher.stop()
        mlflow.set_tracking_uri(None)
    assert not watcher.running
    assert watcher.swaps == 1


def test_a_tree_champion_is_served_by_its_native_library_and_its_local_copy_keeps_it(settings, pipelines, tmp_path):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, pipelines["v2"])  # registration compiled and logged the library
    serving = ServingModel.load_at_start(settings)
    assert (serving.current.family, serving.current.scorer_kind) == ("gradient_boosted_trees", "native")
    assert serving.current.scorer.manifest["model_version"] == "1"
    candidates = awkward_candidates(training_frame(300, seed=32))
    columns = {name: candidates[name].tolist() for name in FEATURES}
    expected = pipelines["v2"].predict_proba(candidates)[:, 1]
    np.testing.assert_allclose(serving.score(columns)[0], expected, rtol=0, atol=1e-6)
    manifest = json.loads((settings.model_cache_dir / MANIFEST).read_text())
    assert manifest["native"] == "ctr-model-v1.native"
    assert sorted(p.name for p in (settings.model_cache_dir / manifest["native"]).iterdir()) == [
        "ctr-model.so",
        NATIVE_MANIFEST,
    ]
    copy = ServingModel.load_at_start(unreachable(settings, tmp_path / "down"))
    assert (copy.version, copy.current.scorer_kind) == ("1", "native")
    np.testing.assert_allclose(copy.score(columns)[0], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"platform": "plan9-mips-unknown"}, "built for platform plan9-mips-unknown"),
        ({"model_sha256": "0" * 64}, "built from model sha256 " + "0" * 64),
    ],
    ids=["other platform", "other model"],
)
def test_a_native_library_for_another_platform_or_model_falls_back_to_numpy(
    settings, pipelines, batch, tmp_path, change, why, caplog
):
    uri = settings.mlflow_tracking_uri
    make_champion(uri, pipelines["v2"])
    ServingModel.load_at_start(settings)  # writes the local copy, library included
    native_dir = settings.model_cache_dir / "ctr-model-v1.native"
    native_manifest = json.loads((native_dir / NATIVE_MANIFEST).read_text())
    (native_dir / NATIVE_MANIFEST).write_text(json.dumps(native_manifest | change))
    serving = ServingModel.load_at_start(unreachable(settings, tmp_path / "down"))
    assert (serving.ready, serving.version, serving.current.scorer_kind) == (True, "1", "numpy")
    assert isinstance(serving.current.scorer, CompiledScorer)
    np.testing.assert_array_equal(serving.score(batch)[0], own_scores(uri, "1", batch))
    assert why in caplog.text and "scoring with numpy" in caplog.text


def test_a_version_registered_without_a_compiler_is_served_by_numpy(settings, pipelines, monkeypatch):
    monkeypatch.setattr(native, "TOOLCHAIN", "no-such-cc")
    make_champion(settings.mlflow_tracking_uri, pipelines["v2"])
    serving = ServingModel.load_at_start(settings)
    assert (serving.ready, serving.current.scorer_kind) == (True, "numpy")
    assert json.loads((settings.model_cache_dir / MANIFEST).read_text())["native"] is None


# --- calibration ----------------------------------------------------------------------------------


def test_the_champion_serves_its_registered_calibration_and_its_local_copy_keeps_it(
    settings, pipelines, batch, tmp_path
):
    correction = prior_correction("", train_positive_rate=0.5, prior_ctr=0.03)
    make_champion(settings.mlflow_tracking_uri, pipelines["v1"], correction)
    serving = ServingModel.load_at_start(settings)
    raw = pipelines["v1"].predict_proba(awkward_candidates(training_frame(300, seed=32)))[:, 1]
    # Written out: odds x odds(3 %) / odds(50 %).
    odds = raw / (1 - raw) * (0.03 / 0.97)
    expected = odds / (1 + odds)
    pctr, _ = serving.score(batch)
    np.testing.assert_allclose(pctr, expected, rtol=1e-9)
    assert serving.calibration.kind == CalibrationKind.PRIOR and serving.calibration.model_version == "1"
    assert np.all(pctr <= raw) and np.all(np.diff(pctr[np.argsort(raw)]) >= 0)  # lower, in the same order
    served_raw = serving.current.pctrs(batch)[1]
    np.testing.assert_allclose(served_raw, raw, rtol=0, atol=1e-9)

    offline = ServingModel.load_at_start(unreachable(settings, tmp_path))
    assert offline.current.origin.startswith("local copy")
    np.testing.assert_allclose(offline.score(batch)[0], expected, rtol=1e-9)


def test_the_watcher_swaps_in_the_newest_online_calibration_of_the_served_version(settings, pipelines, batch):
    make_champion(settings.mlflow_tracking_uri, pipelines["v1"], prior_correction("", 0.5, 0.03))
    serving = ServingModel.load_at_start(settings)
    watcher = ModelWatcher(settings, serving)
    assert watcher.poll_calibration() is False  # gold/calibrators does not exist yet
    raw = serving.current.pctrs(batch)[1]

    older = Calibration("1", CalibrationKind.PLATT, slope=0.9, intercept=-3.0, fitted_at="2026-12-06T00:00:00+00:00")
    newer = Calibration("1", CalibrationKind.PLATT, slope=1.1, intercept=-3.2, fitted_at="2026-12-06T00:01:00+00:00")
    other = Calibration("7", CalibrationKind.PLATT, slope=2.0, intercept=1.0, fitted_at="2026-12-06T00:02:00+00:00")
    write_calibrators(settings, [older, newer, other])
    assert watcher.poll_calibration() is True
    assert serving.calibration == newer
    logit = np.log(raw) - np.log1p(-raw)
    np.testing.assert_allclose(serving.score(batch)[0], 1 / (1 + np.exp(-(1.1 * logit - 3.2))), rtol=1e-9)
    assert watcher.poll_calibration() is False  # nothing newer
    assert watcher.recalibrations == 1

    # A map of another version never serves this one.
    assert serving.recalibrate(other) is False and serving.calibration == newer

    # A map with offsets per pricing model: each candidate takes its own model's.
    offsets = replace(newer, fitted_at="2026-12-06T00:03:00+00:00", offset_cpc=-0.5, offset_cpa=0.3)
    write_calibrators(settings, [offsets])
    assert watcher.poll_calibration() is True
    pricing = np.resize(np.array([0, 1, 2], dtype=np.int8), len(raw))
    shift = np.array([0.0, -0.5, 0.3])[pricing]
    served = serving.score(batch, pricing)[0]
    np.testing.assert_allclose(served, 1 / (1 + np.exp(-(1.1 * logit - 3.2 + shift))), rtol=1e-9)
