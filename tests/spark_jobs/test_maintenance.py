"""Lake maintenance on a real Delta table: compaction keeps every row in fewer files; vacuum honours retention."""

from __future__ import annotations

import pytest

from spark_jobs.maintenance import (
    SAFE_RETENTION_HOURS,
    UnsafeRetention,
    active_files,
    check_retention,
    maintain,
    maintain_table,
    stored_files,
)
from tests.conftest import make_settings

APPENDS = 4


@pytest.fixture
def many_small_files(spark, tmp_path):
    path = str(tmp_path / "lake" / "silver" / "feedback_events")
    for batch in range(APPENDS):  # one small commit per micro-batch, as a stream leaves them
        rows = [(f"e-{batch}-{i}", batch) for i in range(5)]
        spark.createDataFrame(rows, "event_id string, batch int").coalesce(1).write.format("delta").mode("append").save(
            path
        )
    return path


def test_compaction_keeps_every_row_in_one_file_and_a_safe_vacuum_keeps_the_old_files(spark, many_small_files):
    rows_before = sorted(tuple(r) for r in spark.read.format("delta").load(many_small_files).collect())
    report = maintain_table(spark, many_small_files, "silver/feedback_events", SAFE_RETENTION_HOURS)
    assert (report.active_files_before, report.active_files_after) == (APPENDS, 1)
    # Within the retention nothing is deleted: the replaced files stay for readers and time travel.
    assert (report.stored_files_before, report.stored_files_after) == (APPENDS, APPENDS + 1)
    assert sorted(tuple(r) for r in spark.read.format("delta").load(many_small_files).collect()) == rows_before
    assert spark.read.format("delta").option("versionAsOf", 1).load(many_small_files).count() == 2 * 5


def test_a_vacuum_past_the_retention_deletes_the_replaced_files(spark, many_small_files):
    maintain_table(spark, many_small_files, "silver/feedback_events", 0, allow_short=True)
    assert active_files(spark, many_small_files) == stored_files(spark, many_small_files) == 1
    assert spark.read.format("delta").load(many_small_files).count() == APPENDS * 5
    # Delta's own guard is back on for everyone else.
    assert spark.conf.get("spark.databricks.delta.retentionDurationCheck.enabled") == "true"


def test_a_short_retention_is_refused_unless_asked_for(spark, many_small_files):
    with pytest.raises(UnsafeRetention, match="under the safe 168 h"):
        maintain_table(spark, many_small_files, "silver/feedback_events", 24)
    assert active_files(spark, many_small_files) == APPENDS  # nothing was touched
    # The command line checks this before it starts Spark, and names the way out.
    with pytest.raises(UnsafeRetention, match="allow-short-retention"):
        check_retention(1, allow_short=False)
    check_retention(1, allow_short=True)


def test_missing_tables_are_skipped_and_said(spark, tmp_path, capsys):
    settings = make_settings(tmp_path)
    assert maintain(spark, settings, ["silver/auctions"]) == []
    out = capsys.readouterr().out
    assert "silver/auctions" in out and "skipped" in out
