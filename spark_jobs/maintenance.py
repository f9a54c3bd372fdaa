"""Lake maintenance: compact the streaming tables' small files, then vacuum with a safe retention.

A stream commits every few seconds, each commit a few small files: after a day a table
holds thousands, and every reader pays for listing and opening them. ``OPTIMIZE``
rewrites a table's active files into few large ones (a normal Delta commit, so the
stream keeps writing meanwhile); ``VACUUM`` then deletes files no snapshot within the
retention still needs.

Retention: 168 hours (Delta's default) unless ``--retention-hours`` says more. Shorter
would delete files that a lagging reader, a stream restarting from an old checkpoint or
finance's time travel may still open, so it is refused unless ``--allow-short-retention``
(a disposable lake, tests). gold/billing_hourly is compacted but never vacuumed below
the retention either: bills are re-read as issued through time travel.

    adstream maintain [--table silver/feedback_events ...] [--retention-hours 168]

Prints, per table, the active files (the current snapshot) and the data files on storage,
before and after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import SparkSession

from adstream.contracts import Table, quarantine_table
from adstream.settings import Settings

SAFE_RETENTION_HOURS = 168
STREAMING_TABLES: tuple[str, ...] = (
    Table.BRONZE_FEEDBACK_RAW,
    Table.BRONZE_AUCTIONS_RAW,
    Table.SILVER_FEEDBACK_EVENTS,
    Table.SILVER_AUCTIONS,
    quarantine_table("feedback"),
    quarantine_table("auctions"),
    quarantine_table("refused"),
    Table.QUARANTINE_EVENTS,
    Table.GOLD_KPI_MINUTE,
    Table.GOLD_BILLING_HOURLY,
    Table.GOLD_IVT_HOURLY,
    Table.GOLD_EXCHANGE_COSTS_HOURLY,
)


class UnsafeRetention(ValueError):
    """A vacuum retention shorter than readers may still need."""


@dataclass(frozen=True)
class MaintenanceReport:
    table: str
    active_files_before: int
    active_files_after: int
    stored_files_before: int
    stored_files_after: int

    def line(self) -> str:
        return (
            f"{self.table:<26} active files {self.active_files_before:>6} -> {self.active_files_after:<6}"
            f" stored files {self.stored_files_before:>6} -> {self.stored_files_after}"
        )


def check_retention(retention_hours: float, allow_short: bool) -> None:
    """Raises UnsafeRetention for a retention under SAFE_RETENTION_HOURS unless ``allow_short``."""
    if retention_hours < SAFE_RETENTION_HOURS and not allow_short:
        raise UnsafeRetention(
            f"a retention of {retention_hours} h is under the safe {SAFE_RETENTION_HOURS} h: readers, restarting "
            "streams and time travel may still need those files; pass --allow-short-retention for a disposable lake"
        )


def active_files(spark: SparkSession, path: str) -> int:
    return int(spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["numFiles"])


def stored_files(spark: SparkSession, path: str) -> int:
    """Parquet data files under the table's directory, whatever snapshot (if any) still uses them."""
    jvm = spark._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark._jsc.hadoopConfiguration())
    files, count = fs.listFiles(hadoop_path, True), 0
    while files.hasNext():
        file_path = files.next().getPath()
        # _delta_log holds parquet checkpoints of the log itself, not data.
        count += file_path.getName().endswith(".parquet") and file_path.getParent().getName() != "_delta_log"
    return count


def maintain_table(
    spark: SparkSession, path: str, table: str, retention_hours: float, allow_short: bool = False
) -> MaintenanceReport:
    check_retention(retention_hours, allow_short)
    active_before, stored_before = active_files(spark, path), stored_files(spark, path)
    delta = DeltaTable.forPath(spark, path)
    delta.optimize().executeCompaction()
    check_key = "spark.databricks.delta.retentionDurationCheck.enabled"
    previous = spark.conf.get(check_key, "true")
    if allow_short:
        spark.conf.set(check_key, "false")  # Delta's own guard, lifted only as asked
    try:
        delta.vacuum(retention_hours)
    finally:
        spark.conf.set(check_key, previous)
    return MaintenanceReport(table, active_before, active_files(spark, path), stored_before, stored_files(spark, path))


def table_exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def maintain(
    spark: SparkSession,
    settings: Settings,
    tables: Sequence[str] = STREAMING_TABLES,
    retention_hours: float = SAFE_RETENTION_HOURS,
    allow_short: bool = False,
) -> list[MaintenanceReport]:
    """Compacts and vacuums each existing table of ``tables``; missing ones are skipped and said so."""
    check_retention(retention_hours, allow_short)
    reports = []
    for table in tables:
        path = settings.lake_path(table)
        if not table_exists(spark, path):
            print(f"{table:<26} not there yet: skipped")
            continue
        report = maintain_table(spark, path, table, retention_hours, allow_short)
        print(report.line(), flush=True)
        reports.append(report)
    return reports
