"""What commands and Airflow tasks run on: settings, a Spark session, the campaign store, an MLflow client.

Built once per process by ``resources()``. Nothing costly happens when it is built: the JVM
starts on the first ``spark(...)`` call, the campaign store is migrated on the first use of
``campaign_sessions``, and the MLflow client is made on the first use of ``tracking``.
Product functions take these as arguments; only this module builds them.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

import typer
from pyspark.sql import SparkSession
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from adstream.settings import Settings, get_settings
from auction_service.campaign_store.db import make_engine, make_session_factory, migrate
from ml.tracking import tracking_client
from spark_jobs.session import get_spark

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Each job's Spark application name, as its UI and the cluster show it.
SPARK_APPS = {
    "silver": "silver",
    "features": "features",
    "maintain": "adstream-lake-maintenance",
    "smoke": "adstream-smoke",
}


class Resources:
    """One process's resources, each made on first use and then shared."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._spark: SparkSession | None = None

    def spark(self, app_name: str, extra: dict[str, str] | None = None, *, long_running: bool = False) -> SparkSession:
        """The process's Spark session; the first call starts it with this name, options and sizing.

        A process runs one job, so later calls get the same session (as ``getOrCreate`` would).
        ``long_running`` sizes the JVM for the stream, which runs for days.
        """
        if self._spark is None:
            self._spark = get_spark(app_name, self.settings, extra, long_running=long_running)
        return self._spark

    @property
    def spark_started(self) -> bool:
        return self._spark is not None

    @cached_property
    def campaign_engine(self) -> Engine:
        """The campaign store's engine, migrated to the newest schema."""
        engine = make_engine(self.settings)
        migrate(self.settings, engine)
        return engine

    @cached_property
    def campaign_sessions(self) -> sessionmaker[Session]:
        return make_session_factory(self.campaign_engine)

    @cached_property
    def tracking(self) -> MlflowClient:
        """A client for MLflow runs and the model registry at MLFLOW_TRACKING_URI."""
        return tracking_client(self.settings.mlflow_tracking_uri)

    def close(self) -> None:
        """Releases the campaign store's connections (the Spark session ends with the process)."""
        if "campaign_engine" in self.__dict__:
            self.__dict__.pop("campaign_sessions", None)
            self.__dict__.pop("campaign_engine").dispose()


@lru_cache(maxsize=1)
def resources() -> Resources:
    """This process's resources, on the process-wide settings."""
    return Resources(get_settings())


def current(ctx: typer.Context) -> Resources:
    """The resources a command runs on: those its caller passed as the context object (tests), or this process's."""
    return ctx.find_object(Resources) or resources()
