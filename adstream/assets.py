"""Airflow Assets for lake tables, so DAGs can be scheduled on the tables other DAGs publish.

Identity is the table's logical name, not its path, so a moved LAKE_ROOT keeps the schedule.
"""

from __future__ import annotations

from airflow.sdk import Asset

from adstream.contracts import REGISTERED_MODEL, Table


def table_asset(table: Table) -> Asset:
    return Asset(name=table.value, uri=f"adstream://lake/{table.value}", group="lake")


def registered_model_asset() -> Asset:
    """The MLflow registered model whose champion alias serving loads."""
    return Asset(name=REGISTERED_MODEL, uri=f"adstream://mlflow/{REGISTERED_MODEL}", group="model")
