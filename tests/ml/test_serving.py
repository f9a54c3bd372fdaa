import numpy as np
import pytest

from ml.registry import load_model_version
from ml.serving import NoChampionError, load_champion_scorer
from ml.tracking import TrackingServerUnreachable
from tests.conftest import free_port
from tests.ml.factories import awkward_candidates


def test_serving_compiles_the_champion_version_it_names(trained):
    settings, frame = trained
    uri = settings.mlflow_tracking_uri
    scorer, version = load_champion_scorer(uri)
    assert version == "1"
    candidates = awkward_candidates(frame.tail(100))
    expected = load_model_version(uri, "1").predict_proba(candidates)[:, 1]
    got = scorer.score({name: candidates[name].tolist() for name in scorer.features})
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_a_registry_without_a_champion_says_so(mlflow_uri):
    with pytest.raises(NoChampionError, match="ctr-model@champion"):
        load_champion_scorer(mlflow_uri)


def test_an_unreachable_registry_names_mlflow_tracking_uri():
    with pytest.raises(TrackingServerUnreachable, match="MLFLOW_TRACKING_URI"):
        load_champion_scorer(f"http://127.0.0.1:{free_port()}")
