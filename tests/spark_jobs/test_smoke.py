"""Real Spark with Delta: a table round trip, and Kafka -> Delta through the connector (availableNow)."""

import json
import uuid
from datetime import UTC, datetime

import pytest
from pyspark.sql import Row
from pyspark.testing import assertDataFrameEqual

from adstream.contracts import Table
from spark_jobs import smoke

pytestmark = pytest.mark.slow


def test_smoke_events_are_deterministic_and_unique():
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    events = list(smoke.smoke_events("r1", 3, start))
    assert [e["event_id"] for e in events] == ["r1-000000", "r1-000001", "r1-000002"]
    assert events[2]["event_time"] == "2026-03-01T12:00:02+00:00"
    assert events == list(smoke.smoke_events("r1", 3, start))


def test_a_run_id_is_new_unless_given_and_verify_needs_one():
    assert smoke.run_id_for("verify", "r1") == smoke.run_id_for("all", "r1") == "r1"
    fresh = smoke.run_id_for("produce", None)
    assert len(fresh) == 12 and fresh != smoke.run_id_for("all", None)
    with pytest.raises(ValueError, match="`verify` needs the --run-id that `produce` printed"):
        smoke.run_id_for("verify", None)
    assert [step for step in smoke.STEPS if smoke.needs_spark(step)] == ["all", "land", "verify"]


def test_parse_keeps_kafka_coordinates_and_types(spark):
    payload = {"event_id": "r1-000001", "run_id": "r1", "seq": 1, "event_time": "2026-03-01T12:00:01+00:00"}
    records = spark.createDataFrame(
        [(json.dumps(payload).encode(), "platform-smoke", 0, 41)],
        "value binary, topic string, partition int, offset long",
    )
    parsed = smoke.parse_smoke_records(records)
    expected = spark.createDataFrame(
        [
            Row(
                event_id="r1-000001",
                run_id="r1",
                seq=1,
                event_time=datetime(2026, 3, 1, 12, 0, 1),
                kafka_topic="platform-smoke",
                kafka_partition=0,
                kafka_offset=41,
            )
        ],
        "event_id string, run_id string, seq int, event_time timestamp, "
        "kafka_topic string, kafka_partition int, kafka_offset long",
    )
    assertDataFrameEqual(parsed, expected)


def test_delta_write_then_read_and_time_travel(spark, tmp_path):
    path = str(tmp_path / "lake" / "bronze" / "roundtrip")
    first = spark.createDataFrame([("c1", 120), ("c2", 80)], "campaign_id string, spend_micros long")
    first.write.format("delta").save(path)
    spark.createDataFrame([("c3", 5)], "campaign_id string, spend_micros long").write.format("delta").mode(
        "append"
    ).save(path)

    assertDataFrameEqual(
        spark.read.format("delta").load(path),
        spark.createDataFrame([("c1", 120), ("c2", 80), ("c3", 5)], "campaign_id string, spend_micros long"),
    )
    assertDataFrameEqual(spark.read.format("delta").option("versionAsOf", 0).load(path), first)
    assert (tmp_path / "lake" / "bronze" / "roundtrip" / "_delta_log" / "00000000000000000001.json").exists()


def test_kafka_topic_lands_in_delta_exactly_once(spark, kafka_settings, tmp_path):
    settings = kafka_settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    run_id = uuid.uuid4().hex[:8]
    smoke.produce(settings, run_id, 25)

    table_path = smoke.land(spark, settings)
    assert table_path == str(tmp_path / "lake" / Table.SMOKE_EVENTS)
    assert smoke.landed_count(spark, settings, run_id) == 25

    # Re-running from the checkpoint lands only what is new: nothing, then the next 5.
    # (Other tests may share the broker's topic, so count this test's runs only.)
    def landed_rows() -> list[Row]:
        table = spark.read.format("delta").load(table_path)
        return table.where(table.run_id.isin(run_id, run_id + "b")).collect()

    smoke.land(spark, settings)
    rows = landed_rows()
    assert len(rows) == len({row.event_id for row in rows}) == 25
    smoke.produce(settings, run_id + "b", 5)
    smoke.land(spark, settings)
    rows = landed_rows()
    assert len(rows) == len({row.event_id for row in rows}) == 30
    assert len({(row.kafka_partition, row.kafka_offset) for row in rows}) == 30
    assert smoke.verify(spark, settings, run_id + "b", 5) == 5
    with pytest.raises(smoke.SmokeFailed, match=f"25 of 30 smoke events of run {run_id}"):
        smoke.verify(spark, settings, run_id, 30)
