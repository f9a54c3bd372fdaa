"""Fixtures for the CTR training tests: a real MLflow store (SQLite + local artifacts) per test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from deltalake import write_deltalake
from threadpoolctl import threadpool_limits

from adstream.contracts import MLFLOW_EXPERIMENT, Table
from adstream.settings import Settings
from ml.tracking import tracking_client
from ml.train import load_training_set, train
from tests.conftest import make_settings
from tests.ml.factories import training_frame


def one_openmp_thread() -> threadpool_limits:
    # The suite shares a few cores with other jobs; OpenMP's spinning workers then make
    # HistGradientBoosting fits 10x slower or worse. One thread changes timings, not results.
    return threadpool_limits(limits=1, user_api="openmp")


@pytest.fixture(scope="module", autouse=True)
def _one_openmp_thread_per_module() -> Iterator[None]:
    with one_openmp_thread():
        yield


@pytest.fixture(scope="session")
def mlflow_db_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its schema in place; creating one takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    tracking_client(f"sqlite:///{path}").search_experiments()
    return path


def new_store(directory: Path, template: Path) -> str:
    """A tracking + registry URI for an empty store in ``directory`` with experiment ``ctr``."""
    database = directory / "mlflow.db"
    shutil.copyfile(template, database)
    uri = f"sqlite:///{database}"
    tracking_client(uri).create_experiment(MLFLOW_EXPERIMENT, artifact_location=str(directory / "artifacts"))
    return uri


def forget_fluent_uris(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow exports its process-wide URIs as environment variables; monkeypatch restores the originals."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


@pytest.fixture
def mlflow_uri(tmp_path: Path, mlflow_db_template: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.chdir(tmp_path)  # nothing MLflow writes by default may land in the repo
    forget_fluent_uris(monkeypatch)
    yield new_store(tmp_path, mlflow_db_template)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture(scope="session")
def trained(
    tmp_path_factory: pytest.TempPathFactory, mlflow_db_template: Path
) -> Iterator[tuple[Settings, pd.DataFrame]]:
    """``adstream train``'s work done once, on a 600-row Delta training set at version 1, into a fresh store."""
    workdir = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as monkeypatch, one_openmp_thread():
        monkeypatch.chdir(workdir)
        forget_fluent_uris(monkeypatch)
        settings = make_settings(workdir, mlflow_tracking_uri=new_store(workdir, mlflow_db_template))
        location, _ = settings.delta_rs_location(Table.GOLD_CTR_TRAINING_SET)
        frame = training_frame(600, seed=21)
        write_deltalake(location, frame.head(300))
        write_deltalake(location, frame.tail(300), mode="append")  # version 1
        train(settings, *load_training_set(location), training_table=location)
        yield settings, frame
        mlflow.set_tracking_uri(None)
