"""Silver: unified user profiles and a unified ad catalog, from the bronze Kaggle tables.

Reads bronze and overwrites silver/users and silver/ads, so a re-run gives the same tables
(`adstream silver [users|ads|all]`). Each bronze table is read at the Delta version the caller names (the
DAG: the one its triggering Asset event names), or at its latest. The transforms and their documented
choices are in spark_jobs.silver_transforms.
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import DataFrame, SparkSession

from adstream.contracts import Table
from adstream.settings import Settings
from spark_jobs.silver_transforms import build_silver_ads, build_silver_users

WHICH = ("users", "ads", "all")  # the tables a run may build


def read_at_version(spark: SparkSession, settings: Settings, table: Table, version: int | None = None) -> DataFrame:
    """``table`` at Delta ``version``; at its latest when None."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(settings.lake_path(table))


def _overwrite(frame: DataFrame, settings: Settings, table: Table) -> int:
    frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(settings.lake_path(table))
    return frame.sparkSession.read.format("delta").load(settings.lake_path(table)).count()


def build(
    spark: SparkSession, settings: Settings, which: str = "all", bronze_versions: Mapping[Table, int] | None = None
) -> dict[str, int]:
    """Overwrites the silver tables ``which`` names (one of WHICH) from bronze, each bronze table at the version
    ``bronze_versions`` names (the latest when it names none); returns the rows written per table."""
    versions = dict(bronze_versions or {})

    def read(table: Table) -> DataFrame:
        return read_at_version(spark, settings, table, versions.get(table))

    written = {}
    if which in ("users", "all"):
        users = build_silver_users(read(Table.BRONZE_ADVERTISING), read(Table.BRONZE_ADS16_USERS))
        written[Table.SILVER_USERS.value] = _overwrite(users, settings, Table.SILVER_USERS)
    if which in ("ads", "all"):
        ads = build_silver_ads(read(Table.BRONZE_AMAZON_ADS), read(Table.BRONZE_ADS16_ADS))
        written[Table.SILVER_ADS.value] = _overwrite(ads, settings, Table.SILVER_ADS)
    return written
