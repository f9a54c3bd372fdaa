"""Silver: unified user profiles and a unified ad catalog, from the bronze Kaggle tables.

Reads bronze and overwrites silver/users and silver/ads, so a re-run gives the same tables
(`adstream silver [users|ads|all]`). The transforms and their documented choices are in
spark_jobs.silver_transforms.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from adstream.contracts import Table
from adstream.settings import Settings
from spark_jobs.silver_transforms import build_silver_ads, build_silver_users

WHICH = ("users", "ads", "all")  # the tables a run may build


def _read(spark: SparkSession, settings: Settings, table: Table) -> DataFrame:
    return spark.read.format("delta").load(settings.lake_path(table))


def _overwrite(frame: DataFrame, settings: Settings, table: Table) -> int:
    frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(settings.lake_path(table))
    return frame.sparkSession.read.format("delta").load(settings.lake_path(table)).count()


def build(spark: SparkSession, settings: Settings, which: str = "all") -> dict[str, int]:
    """Overwrites the silver tables ``which`` names (one of WHICH); returns the rows written per table."""
    written = {}
    if which in ("users", "all"):
        users = build_silver_users(
            _read(spark, settings, Table.BRONZE_ADVERTISING), _read(spark, settings, Table.BRONZE_ADS16_USERS)
        )
        written[Table.SILVER_USERS.value] = _overwrite(users, settings, Table.SILVER_USERS)
    if which in ("ads", "all"):
        ads = build_silver_ads(
            _read(spark, settings, Table.BRONZE_AMAZON_ADS), _read(spark, settings, Table.BRONZE_ADS16_ADS)
        )
        written[Table.SILVER_ADS.value] = _overwrite(ads, settings, Table.SILVER_ADS)
    return written
