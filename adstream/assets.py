"""Airflow Assets for lake tables, so DAGs can be scheduled on the tables other DAGs publish.

Identity is the table's logical name, not its path, so a moved LAKE_ROOT keeps the schedule.
"""

from __future__ import annotations

from airflow.sdk import Asset

from adstream.contracts import REGISTERED_MODEL, Table


def table_asset(table: Table) -> Asset:
    return Asset(name=table.value, uri=f"adstream://lake/{table.value}", group="lake")


def registered_model_asset(name: str = REGISTERED_MODEL) -> Asset:
    """An MLflow registered model (default ``ctr-model``) whose champion alias serving loads."""
    return Asset(name=name, uri=f"adstream://mlflow/{name}", group="model")
