"""The streaming benchmark's pure parts: durations, percentiles, slopes, Delta-log latency and batch timing.

Expected values are worked out by hand in the comments, never computed by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from adstream.events import FeedbackEvent
from benchmarks import streaming as bench
from benchmarks.streaming import DeltaCommit

T = 1_700_000_000_000  # a commit time, epoch ms


def test_durations_read_like_the_make_variable():
    assert bench.parse_duration("30m") == 1800
    assert bench.parse_duration("2m") == 120
    assert bench.parse_duration("90s") == 90
    assert bench.parse_duration("1h30m") == 5400
    assert bench.parse_duration("45") == 45
    assert bench.parse_duration("0") == 0
    for bad in ("", "30x", "m", "3 m 2"):
        with pytest.raises(ValueError):
            bench.parse_duration(bad)


def test_percentiles_interpolate_between_ranks():
    values = [float(v) for v in (10, 1, 9, 2, 8, 3, 7, 4, 6, 5)]  # 1..10, shuffled
    # rank = q/100 * (n - 1): p50 -> 4.5 -> between 5 and 6; p95 -> 8.55 -> 9 + 0.55; p99 -> 8.91 -> 9.91.
    assert bench.percentile(values, 50) == pytest.approx(5.5)
    assert bench.percentile(values, 95) == pytest.approx(9.55)
    assert bench.percentile(values, 99) == pytest.approx(9.91)
    assert (bench.percentile(values, 0), bench.percentile(values, 100)) == (1.0, 10.0)
    assert bench.percentile([7.0], 95) == 7.0
    summary = bench.latency_summary(values)
    assert (summary["events"], summary["p50_s"], summary["max_s"], summary["mean_s"]) == (10, 5.5, 10.0, 5.5)


def test_least_squares_slope():
    assert bench.slope([0, 1, 2, 3], [10, 12, 14, 16]) == pytest.approx(2.0)
    # mean x 1, mean y 2: sum((x-1)(y-2)) = (-1)(-1) + 0 + (1)(0) = 1 over sum((x-1)^2) = 2.
    assert bench.slope([0, 1, 2], [1, 3, 2]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        bench.slope([1], [1])


def test_memory_summary_takes_the_slope_of_the_second_half_in_mb_per_minute():
    # Samples each minute; the span is 0..4 min, so the second half is t >= 2 min: 120, 140, 160 -> 20 MB/min.
    growing = [(0.0, 100.0), (60.0, 110.0), (120.0, 120.0), (180.0, 140.0), (240.0, 160.0)]
    assert bench.memory_summary(growing) == {
        "samples": 5, "start_mb": 100.0, "end_mb": 160.0, "peak_mb": 160.0, "slope_mb_per_min_second_half": 20.0,
    }  # fmt: skip
    # A JVM that grows at start-up, peaks and settles is flat where it counts.
    settled = [(0.0, 100.0), (60.0, 170.0), (120.0, 165.0), (180.0, 165.0), (240.0, 165.0)]
    summary = bench.memory_summary(settled)
    assert (summary["peak_mb"], summary["slope_mb_per_min_second_half"]) == (170.0, 0.0)
    assert bench.memory_summary([])["samples"] == 0


def _log(table: Path, version: int, *actions: dict) -> None:
    log = table / "_delta_log"
    log.mkdir(parents=True, exist_ok=True)
    (log / f"{version:020d}.json").write_text("\n".join(json.dumps(action) for action in actions) + "\n")


def _parquet(table: Path, relative: str, ids: list[str]) -> None:
    path = table / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"event_id": ids, "cost_micros": [0] * len(ids)}), path)


def test_latency_is_the_commit_time_of_the_version_that_added_the_events_file(tmp_path):
    table = tmp_path / "silver"
    # Version 0 creates the table; no file.
    _log(table, 0, {"protocol": {"minReaderVersion": 1}}, {"commitInfo": {"timestamp": T, "operation": "CREATE TABLE"}})
    # Version 1 (batch 0) commits at T + 10 s a file holding two measured events, produced at T + 7.5 s and
    # T + 4 s (2.5 s and 6 s), and a backlog event (no produce time: not measured).
    _parquet(table, "event_date=2026-11-24/part-a.parquet", [
        f"l000000000.{(T + 7_500) * 1000}", f"l000000001.{(T + 4_000) * 1000}", "b000000009",
    ])  # fmt: skip
    _log(
        table, 1,
        {"commitInfo": {"timestamp": T + 10_000, "operation": "MERGE",
                        "operationMetrics": {"numTargetRowsInserted": "3", "executionTimeMs": "900"}}},
        {"txn": {"appId": "adstream-feedback-q", "version": 0}},
        {"add": {"path": "event_date=2026-11-24/part-a.parquet", "stats": json.dumps({"numRecords": 3})}},
    )  # fmt: skip
    # Version 2 (batch 1): an in-commit timestamp (T + 21 s) wins over the wall-clock one; the path is
    # URL-encoded in the log; a remove is not a new file. The soak event produced at T + 19 s waited 2 s.
    _parquet(table, "event_date=2026-11-24/part b.parquet", [f"s000000002.{(T + 19_000) * 1000}"])
    _log(
        table, 2,
        {"commitInfo": {"timestamp": T + 20_000, "inCommitTimestamp": T + 21_000, "operation": "MERGE"}},
        {"txn": {"appId": "adstream-feedback-q", "version": 1}},
        {"remove": {"path": "event_date=2026-11-24/part-a.parquet"}},
        {"add": {"path": "event_date=2026-11-24/part%20b.parquet", "stats": json.dumps({"numRecords": 1})}},
    )  # fmt: skip
    (table / "_delta_log" / "00000000000000000002.checkpoint.parquet").write_bytes(b"not read")

    commits = bench.read_delta_log(table)
    assert [(c.version, c.timestamp_ms, c.txn_version, c.rows_added) for c in commits] == [
        (0, T, None, 0), (1, T + 10_000, 0, 3), (2, T + 21_000, 1, 1),
    ]  # fmt: skip
    assert commits[1].metrics["executionTimeMs"] == "900"
    assert [c.version for c in bench.read_delta_log(table, after_version=1)] == [2]
    assert bench.visibility_latencies(table, commits, "wls") == {"w": [], "l": [2.5, 6.0], "s": [2.0]}
    assert sorted(bench.batch_commits(commits)) == [0, 1]


def test_event_ids_carry_their_produce_time():
    event_id = bench.latency_event_id("l", 42, 1_764_000_000_123_456)
    assert event_id == "l000000042.1764000000123456"
    assert bench.produced_at_us(event_id, "ls") == 1_764_000_000_123_456
    assert bench.produced_at_us(event_id, "s") is None
    assert bench.produced_at_us("b000000001", "bls") is None
    assert bench.produced_at_us("l-garbled.x", "l") is None
    assert len(bench.latency_event_id("s", 999_999_999, 9_999_999_999_999_999)) <= 64  # the model's max_length


def _commit(version: int, at_ms: int, batch: int | None, rows: int = 0, **metrics: str) -> DeltaCommit:
    added = (("part.parquet", rows),) if rows else ()
    return DeltaCommit(version, at_ms, "WRITE", added, batch, dict(metrics))


def test_steady_rate_counts_the_batches_after_the_first_over_the_time_since_the_first():
    commits = [
        _commit(0, 0, None),  # table creation: no rows, not a batch
        _commit(1, 1_000, 0, 4_000),  # the first batch: the clock starts here, its rows are not counted
        _commit(2, 3_000, 1, 600),
        _commit(3, 6_000, 2, 400),
    ]
    # 600 + 400 rows over 6.0 - 1.0 = 5 s.
    assert bench.steady_rate(commits) == {
        "batches": 3, "rows": 5_000, "steady_rows": 1_000, "steady_s": 5.0, "rows_per_s": 200.0,
    }  # fmt: skip
    assert bench.steady_rate(commits[:2])["rows_per_s"] is None


def test_each_batch_is_broken_down_by_the_commits_it_makes_in_order():
    # Batch 0 ends with its bronze commit at 10.0 s. Batch 1: silver 3.0 s later, then bronze 1.0 and quarantine
    # 0.5: 4.5 s. Batch 2 had no rejects, so no quarantine commit. Gold (the KPI query's) is not a step.
    tables = {
        "silver": [_commit(1, 9_000, 0, 90), _commit(2, 13_000, 1, 49_000), _commit(3, 17_000, 2, 39_500)],
        "bronze": [_commit(1, 10_000, 0, 100), _commit(2, 14_000, 1, 50_000), _commit(3, 19_250, 2, 40_000)],
        "quarantine": [_commit(1, 14_500, 1, 250)],
        "gold": [_commit(1, 30_000, 0), _commit(2, 31_000, 1)],
    }
    first, second = bench.batch_breakdown(tables)
    assert first == {
        "batch_id": 1, "records": 50_000, "silver_rows": 49_000, "total_s": 4.5, "planning": None,
        "to_silver": 3.0, "silver_to_bronze": 1.0, "bronze_to_quarantine": 0.5, "spark_commit": None,
    }  # fmt: skip
    # Batch 2 starts at batch 1's quarantine commit (14.5 s): silver 2.5, bronze 2.25.
    assert (second["to_silver"], second["silver_to_bronze"], second["bronze_to_quarantine"]) == (2.5, 2.25, None)
    assert second["total_s"] == 4.75
    medians = bench.breakdown_medians([first, second])
    assert (medians["total_s"], medians["bronze_to_quarantine"], medians["records"]) == (4.625, 0.5, 45_000)

    # With the checkpoint: batch 0 committed to Spark at 10.1 s, batch 1's offsets were written at 10.4 s and
    # its commit at 14.95 s: planning 0.3, to silver 2.6, ..., quarantine -> Spark commit 0.45; 4.85 s in all.
    marks = {"offsets": {1: 10_400, 2: 15_000}, "commits": {0: 10_100, 1: 14_950}}
    first, second = bench.batch_breakdown(tables, marks)
    assert (first["planning"], first["to_silver"], first["spark_commit"]) == (0.3, 2.6, 0.45)
    assert first["total_s"] == pytest.approx(4.85)
    # Batch 2 has no commit file (the job stopped first): it ends at its bronze commit, 19.25 - 14.95 = 4.3 s.
    assert (second["planning"], second["spark_commit"]) == (pytest.approx(0.05), None)
    assert second["total_s"] == pytest.approx(4.3)


def test_the_kpi_query_read_ends_come_from_its_delta_source_offsets(tmp_path):
    offsets = tmp_path / "offsets"
    offsets.mkdir()
    header = 'v1\n{"batchWatermarkMs":0,"batchTimestampMs":1795592465365,"conf":{}}\n'
    source = '{"sourceVersion":1,"reservoirId":"r","reservoirVersion":%d,"index":%d,"isStartingVersion":%s}'
    (offsets / "0").write_text(header + source % (3, 1, "true"))  # the starting snapshot of version 3
    (offsets / "1").write_text(header + source % (7, -1, "false"))  # versions before 7
    (offsets / ".1.crc").write_text("not a batch")
    assert bench.kpi_read_ends(tmp_path) == {0: 4, 1: 7}
    assert bench.kpi_read_ends(tmp_path / "absent") == {}


def test_gold_lag_is_from_each_silver_commit_to_the_gold_commit_of_the_first_kpi_batch_that_read_it():
    silver = [
        _commit(0, 1_000, None),  # table creation: no rows
        _commit(1, 5_000, 0, 100),
        _commit(2, 10_000, 1, 100),
        _commit(3, 15_000, 2, 0),  # a batch of duplicates only: nothing for gold to cover
        _commit(4, 20_000, 3, 100),
        _commit(5, 25_000, 4, 100),  # not read by any KPI batch yet
    ]
    # KPI batch 0 read versions < 2 and committed gold at 12 s; batch 1 (versions < 5) at 31.5 s.
    gold = [_commit(1, 12_000, 0), _commit(2, 31_500, 1)]
    assert bench.kpi_lags(silver, gold, {0: 2, 1: 5}) == [7.0, 21.5, 11.5]
    # A KPI batch that committed nothing (a replay) does not count as covering.
    assert bench.kpi_lags(silver, gold[1:], {0: 2, 1: 5}) == [26.5, 21.5, 11.5]


def test_checkpoint_marks_are_the_times_spark_wrote_each_batch_file(tmp_path):
    import os

    for kind, batch, at_s in (("offsets", 0, 100), ("offsets", 1, 105), ("commits", 0, 104)):
        (tmp_path / kind).mkdir(exist_ok=True)
        path = tmp_path / kind / str(batch)
        path.write_text("v1")
        os.utime(path, (at_s, at_s))
    (tmp_path / "offsets" / ".1.crc").write_text("")  # Hadoop's checksum files are not batches
    assert bench.checkpoint_marks(tmp_path) == {"offsets": {0: 100_000, 1: 105_000}, "commits": {0: 104_000}}
    assert bench.checkpoint_marks(tmp_path / "missing") == {"offsets": {}, "commits": {}}


def test_the_records_are_what_the_service_publishes_plus_copies_and_malformed_ones():
    factory = bench.RecordFactory(seed=3)
    records = [factory.record(f"b{i:09d}", T * 1000 + i) for i in range(20_000)]
    valid, copies, malformed, seen = 0, 0, 0, set()
    for key, value in records:
        try:
            event = FeedbackEvent.model_validate_json(value)
        except ValidationError:
            malformed += 1
            continue
        assert key == event.auction_id
        if event.event_id in seen:
            copies += 1
        else:
            valid += 1
            seen.add(event.event_id)
    tally = factory.tally
    assert (valid, copies, malformed) == (tally.valid, tally.duplicate, tally.malformed)
    # ~1 % copies and ~0.5 % malformed of 20,000: 200 and 100, give or take a few standard deviations.
    assert 140 <= copies <= 260 and 60 <= malformed <= 140


def test_latency_slices_follow_produce_time():
    second = 1_000_000
    # Produced at 0, 1, 2, 3 s; visible 1, 2, 1 and 4 s later. Two slices of the 3 s span: [0, 1.5) and [1.5, 3].
    events = [(0, 1 * second), (1 * second, 3 * second), (2 * second, 3 * second), (3 * second, 7 * second)]
    early, late = bench.latency_slices(events, 2)
    assert (early["from_s"], early["events"], early["p50_s"], early["max_s"]) == (0.0, 2, 1.5, 2.0)
    assert (late["from_s"], late["events"], late["p50_s"], late["max_s"]) == (1.5, 2, 2.5, 4.0)
    assert bench.latency_slices([], 6) == []
