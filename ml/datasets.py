"""A training's input as an MLflow dataset whose source is a Delta table at one version.

A run's inputs then name the table and the version it read, and so does every model version it registers.
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow.data
import pandas as pd
from mlflow.data.dataset import Dataset
from mlflow.data.delta_dataset_source import DeltaDatasetSource


class VersionedDeltaSource(DeltaDatasetSource):
    """MLflow's Delta source, keeping version 0: MLflow 3.17 leaves a version that is 0 out of the logged
    source, and every table's first version is 0."""

    def to_dict(self) -> dict[Any, Any]:
        info = super().to_dict()
        if self._delta_table_version is not None:
            info["delta_table_version"] = self._delta_table_version
        return info


def delta_dataset(frame: pd.DataFrame, path: str, version: int, name: str, targets: str) -> Dataset:
    """``frame``, read from the Delta table at ``path`` at ``version``, as a dataset for ``mlflow.log_input``."""
    source = VersionedDeltaSource(path=path, delta_table_version=version)
    with warnings.catch_warnings():  # its schema's advice on integer columns is for model signatures
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_pandas(frame, source=source, name=name, targets=targets)
