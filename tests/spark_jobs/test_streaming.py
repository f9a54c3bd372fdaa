"""The streaming job: Kafka -> bronze/silver/quarantine/gold Delta, exactly once.

Expected values come from the records each test produces, never from the code under test.
Topics are per test (``--topic``) so the session broker's other users cannot change the counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyspark.sql import Row
from pyspark.sql.types import ArrayType, StructField, StructType
from pyspark.testing import assertDataFrameEqual

from adstream.contracts import Table, Topic, quarantine_table
from adstream.events import PLATFORMS, CampaignDecision, FeedbackEvent, RefusedEvent
from adstream.exporter import serve
from adstream.messaging import ensure_topics, make_producer
from adstream.settings import Settings, child_process_env
from devstack import services
from spark_jobs import ivt, streaming
from spark_jobs.billing.spend import reconcile_spend
from spark_jobs.ivt_transforms import ADDED_EVENT_COLUMNS
from spark_jobs.metrics import StreamingMetrics, kafka_offsets_behind
from spark_jobs.stream_transforms import (
    KAFKA_RECORD_DDL,
    EventClock,
    QuarantineReason,
    advance_clock,
    first_per_key,
    kpi_by_minute,
    parse_records,
    watermark_for,
)
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.slow

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
FEEDBACK = streaming.SOURCES["feedback"]
REFUSED = streaming.SOURCES["refused"]
ADSTREAM = str(Path(sys.executable).with_name("adstream"))  # the console script the editable install creates


def feedback(event_id: str, event_type: str = "impression", at: datetime = T0, **fields: object) -> dict:
    """A valid ad-feedback record, as the auction service publishes it (validated by the model)."""
    values: dict = {
        "event_id": event_id, "event_type": event_type, "event_time": at, "auction_id": f"auc-{event_id}",
        "campaign_id": "cmp-1", "advertiser_id": "adv-1", "ad_id": "ad-1", "device_type": "mobile",
        "channel": "app", "content_type": "video", "pricing_model": "CPM", "cost_micros": 0, "pctr": None,
    }  # fmt: skip
    values.update(fields)
    return FeedbackEvent(**values).model_dump(mode="json")


def encoded(record: dict | str) -> bytes:
    return (record if isinstance(record, str) else json.dumps(record)).encode()


def kafka_frame(spark, values: list[dict | str], kafka_time: datetime = T0 + MINUTE, topic: str = "ad-feedback"):
    """Rows shaped like the Kafka source's, one partition, offsets 0.."""
    rows = [(b"k", encoded(value), topic, 0, offset, kafka_time, 0) for offset, value in enumerate(values)]
    return spark.createDataFrame(rows, KAFKA_RECORD_DDL)


def lake_settings(tmp_path: Path, kafka_settings: Settings | None = None, **overrides: object) -> Settings:
    if kafka_settings is not None:
        overrides["kafka_bootstrap_servers"] = kafka_settings.kafka_bootstrap_servers
    return make_settings(tmp_path, **overrides)


def table(spark, settings: Settings, name: str):
    return spark.read.format("delta").load(settings.lake_path(name))


def produce(settings: Settings, topic: str, values: list[dict | str], producer=None) -> None:
    owned = producer is None
    producer = producer or make_producer(settings, value_serializer=None)
    for value in values:
        key = value["auction_id"] if isinstance(value, dict) else "malformed"
        producer.send(topic, key=key, value=encoded(value))
    if owned:
        producer.flush(timeout=60)
        producer.close()


# --- pure transforms ---


def test_each_schema_violation_is_quarantined_with_its_reason_and_origin(spark):
    good = feedback("e-ok", cost_micros=2_500)
    without_campaign = {k: v for k, v in feedback("e-m").items() if k != "campaign_id"}
    cases = [
        (good, None),
        ("{not json", QuarantineReason.MALFORMED_JSON),
        ('["a", "list"]', QuarantineReason.MALFORMED_JSON),
        ({**feedback("e-v"), "schema_version": 2}, QuarantineReason.WRONG_SCHEMA_VERSION),
        (without_campaign, QuarantineReason.MISSING_FIELD),
        ({**feedback("e-t"), "cost_micros": "2500"}, QuarantineReason.WRONG_TYPE),
        ({**feedback("e-z"), "event_time": "2026-03-01T12:00:00"}, QuarantineReason.WRONG_TYPE),
        ({**feedback("e-n"), "cost_micros": -1}, QuarantineReason.OUT_OF_RANGE),
        ({**feedback("e-p"), "pctr": 1.5}, QuarantineReason.OUT_OF_RANGE),
        ({**feedback("e-u"), "event_type": "hover"}, QuarantineReason.UNKNOWN_VALUE),
        ({**feedback("e-r"), "pricing_model": "CPX"}, QuarantineReason.UNKNOWN_VALUE),
        (feedback("e-f", at=T0 + timedelta(hours=1)), QuarantineReason.FUTURE),
        (feedback("e-l", at=T0 - timedelta(minutes=20)), QuarantineReason.LATE),
        ({**feedback("e-x"), "added_later": "ignored"}, None),  # an optional addition is not a new version
        # Late and of an unknown type: the schema's reason comes first (the watermark is the last check).
        ({**feedback("e-q", at=T0 - timedelta(minutes=20)), "event_type": "hover"}, QuarantineReason.UNKNOWN_VALUE),
    ]
    records = kafka_frame(spark, [value for value, _ in cases], topic="ad-feedback-test")
    valid, quarantined = parse_records(
        records,
        FeedbackEvent,
        ingested_at=T0 + MINUTE,
        watermark_micros=int((T0 - timedelta(minutes=10)).timestamp() * 1_000_000),
        max_ahead=timedelta(minutes=10),
    )

    assert sorted(row.event_id for row in valid.collect()) == ["e-ok", "e-x"]
    rejected = {row.kafka_offset: row for row in quarantined.collect()}
    expected = {offset: reason.value for offset, (_, reason) in enumerate(cases) if reason is not None}
    assert {offset: row.reason for offset, row in rejected.items()} == expected
    assert "cost_micros" in rejected[7].detail and "campaign_id" in rejected[4].detail
    assert "behind the watermark" in rejected[12].detail and "event_type = hover" in rejected[14].detail
    assert rejected[1].raw_value == "{not json"
    assert {(row.kafka_topic, row.kafka_partition) for row in rejected.values()} == {("ad-feedback-test", 0)}


def test_silver_rows_carry_exactly_the_model_columns_plus_origin(spark):
    record = feedback("e-1", cost_micros=2_500, pctr=0.25)
    del record["currency"]  # a defaulted field may be left out
    valid, _ = parse_records(
        kafka_frame(spark, [record]), FeedbackEvent, ingested_at=T0, watermark_micros=None, max_ahead=MINUTE * 10
    )
    assert valid.columns[: len(FeedbackEvent.model_fields)] == list(FeedbackEvent.model_fields)
    assert set(valid.columns) - set(FeedbackEvent.model_fields) == {
        "kafka_topic", "kafka_partition", "kafka_offset", "ingested_at", "event_date",
    }  # fmt: skip
    (row,) = valid.collect()
    assert (row.currency, row.cost_micros, row.pctr, row.event_date.isoformat()) == ("USD", 2_500, 0.25, "2026-03-01")


def test_a_batch_keeps_the_first_copy_of_each_event_id(spark):
    copies = [feedback("e-1"), feedback("e-2"), feedback("e-1", cost_micros=7), feedback("e-1")]
    valid, _ = parse_records(
        kafka_frame(spark, copies), FeedbackEvent, ingested_at=T0, watermark_micros=None, max_ahead=MINUTE * 10
    )
    kept = {row.event_id: (row.kafka_offset, row.cost_micros) for row in first_per_key(valid, "event_id").collect()}
    assert kept == {"e-1": (0, 0), "e-2": (1, 0)}


def test_the_watermark_trails_the_latest_event_of_earlier_batches_and_replays_see_the_same():
    delay = timedelta(minutes=10)
    us = 1_000_000
    assert watermark_for(0, None, delay) is None
    after_0 = advance_clock(None, 0, None, 1_000 * us)
    assert watermark_for(1, after_0, delay) == 400 * us
    # An older batch maximum does not move the clock back.
    after_1 = advance_clock(after_0, 1, 400 * us, 900 * us)
    assert after_1 == EventClock(1, 400 * us, 1_000 * us)
    assert watermark_for(2, after_1, delay) == 400 * us
    # Batch 1 replayed after its clock was written: the watermark it used, not a newer one.
    assert watermark_for(1, advance_clock(after_1, 1, 400 * us, 2_000 * us), delay) == 400 * us


def test_the_clock_is_read_back_from_the_newest_commit_of_its_own_query():
    clock = EventClock(7, 400, 1_000)
    carried = streaming.clock_metadata("adstream-feedback-q1", clock)
    assert json.loads(carried) == {
        "app_id": "adstream-feedback-q1",
        "event_clock": {"batch_id": 7, "watermark_micros": 400, "max_event_time_micros": 1_000},
    }
    older = streaming.clock_metadata("adstream-feedback-q1", EventClock(6, None, 900))
    other_query = streaming.clock_metadata("adstream-feedback-q0", EventClock(99, 1, 2))
    # Newest first: another query's clock and foreign metadata are skipped.
    assert (
        streaming.latest_clock([other_query, "compaction by maintenance", carried, older], "adstream-feedback-q1")
        == clock
    )
    assert streaming.latest_clock([other_query, "{}"], "adstream-feedback-q1") is None


def test_kpi_minute_values_for_a_hand_computed_input(spark):
    at = T0 + timedelta(seconds=5)
    events = [
        # cmp-1, 12:00, mobile/app/video: 4 CPM impressions of 2,500 micros, 1 click, 2 starts, 1 complete.
        feedback("i1", at=at, cost_micros=2_500, pctr=0.1),
        feedback("i2", at=at, cost_micros=2_500, pctr=0.2),
        feedback("i3", at=at, cost_micros=2_500, pctr=0.3),
        feedback("i4", at=at + timedelta(seconds=50), cost_micros=2_500, pctr=0.4),
        feedback("c1", "click", at=at),
        feedback("s1", "video_start", at=at),
        feedback("s2", "video_start", at=at),
        feedback("v1", "video_complete", at=at),
        # cmp-2, 12:01, no device: a CPC impression (free) and a paid click of 1.333333 USD; 1 conversion.
        feedback("j1", at=at + MINUTE, campaign_id="cmp-2", pricing_model="CPC", device_type=None, pctr=0.05),
        feedback("d1", "click", at=at + MINUTE, campaign_id="cmp-2", pricing_model="CPC", device_type=None,
                 cost_micros=1_333_333),
        feedback("k1", "conversion", at=at + MINUTE, campaign_id="cmp-2", pricing_model="CPC", device_type=None),
        # Neither counted nor spent: a GIVT impression, an SIVT click (charged, credited by billing), a second
        # click of d1's auction the ledger refused as a duplicate, and a click with no impression before it.
        feedback("b1", at=at, charge_status="invalid_traffic", ivt_category="givt", ivt_reason="known_bot_ua",
                 pctr=0.9),
        feedback("b2", "click", at=at, cost_micros=0, ivt_category="sivt", ivt_reason="user_click_rate"),
        feedback("d2", "click", at=at + MINUTE, campaign_id="cmp-2", pricing_model="CPC", device_type=None,
                 charge_status="duplicate_auction"),
        feedback("d3", "click", at=at + MINUTE, campaign_id="cmp-2", pricing_model="CPC", device_type=None,
                 charge_status="out_of_order"),
        feedback("d4", "click", at=at + MINUTE, campaign_id="cmp-2", pricing_model="CPC", device_type=None,
                 charge_status="charged", cost_micros=500_000, ivt_category="sivt", ivt_reason="ip_click_rate"),
    ]  # fmt: skip
    valid, _ = parse_records(
        kafka_frame(spark, events), FeedbackEvent, ingested_at=T0, watermark_micros=None, max_ahead=MINUTE * 10
    )
    kpis = kpi_by_minute(valid)
    cmp_1 = {
        "campaign_id": "cmp-1",
        "minute": T0,
        "device_type": "mobile",
        "channel": "app",
        "content_type": "video",
        "impressions": 4,
        "clicks": 1,
        "conversions": 0,
        "video_starts": 2,
        "video_completes": 1,
        "spend_micros": 10_000,
        "spend": Decimal("0.010000"),
        "ctr": 1 / 4,
        "ad_completion_rate": 1 / 2,
        "rpai": Decimal("0.002500"),
        "ad_relevance_score": (0.1 + 0.2 + 0.3 + 0.4) / 4,
        "ivt_impressions": 1,
        "ivt_clicks": 1,
        "event_date": T0.date(),
    }
    cmp_2 = {
        **cmp_1, "campaign_id": "cmp-2", "minute": T0 + MINUTE, "device_type": "unknown",
        "impressions": 1, "clicks": 1, "conversions": 1, "video_starts": 0, "video_completes": 0,
        "spend_micros": 1_333_333, "spend": Decimal("1.333333"), "ctr": 1.0, "ad_completion_rate": None,
        "rpai": Decimal("1.333333"), "ad_relevance_score": 0.05, "ivt_impressions": 0, "ivt_clicks": 1,
    }  # fmt: skip
    expected = spark.createDataFrame([Row(**cmp_1), Row(**cmp_2)], kpis.schema)
    assertDataFrameEqual(kpis, expected, rtol=1e-9)
    assert dict(kpis.dtypes)["spend"] == "decimal(18,6)" and dict(kpis.dtypes)["spend_micros"] == "bigint"


# --- one micro-batch against real Delta tables ---


def delta_versions(spark, settings: Settings, *names: str) -> dict[str, int]:
    from delta.tables import DeltaTable

    return {name: DeltaTable.forPath(spark, settings.lake_path(name)).history(1).collect()[0].version for name in names}


def test_a_replayed_batch_id_writes_nothing_twice(spark, tmp_path):
    settings = lake_settings(tmp_path)
    streaming.ensure_tables(spark, settings, FEEDBACK)
    batch = streaming.MicroBatch(settings, FEEDBACK, app_id="test-replay")
    first = [feedback("e-1", cost_micros=2_500, pctr=0.2), feedback("e-2", "click"), "not json"]
    counts = batch.process(kafka_frame(spark, first), 0, ingested_at=T0 + MINUTE)
    assert counts == {"silver": 2, QuarantineReason.MALFORMED_JSON.value: 1}
    tables = (FEEDBACK.bronze, FEEDBACK.silver, FEEDBACK.quarantine)
    versions = delta_versions(spark, settings, *tables)

    # Spark replays batch 0 after a crash; even with other content, no table commits anything.
    replay = [*first, feedback("e-3", cost_micros=9_999), "{also bad"]
    batch.process(kafka_frame(spark, replay), 0, ingested_at=T0 + 2 * MINUTE)
    assert delta_versions(spark, settings, *tables) == versions
    assert table(spark, settings, FEEDBACK.bronze).count() == 3

    # The next batch id is written.
    batch.process(kafka_frame(spark, [feedback("e-3", cost_micros=9_999)]), 1, ingested_at=T0 + 2 * MINUTE)
    assert table(spark, settings, FEEDBACK.silver).count() == 3


def test_kpi_batches_recompute_their_minutes_from_silver_and_a_replay_commits_nothing(spark, tmp_path):
    settings = lake_settings(tmp_path)
    streaming.ensure_tables(spark, settings, FEEDBACK)
    batch = streaming.MicroBatch(settings, FEEDBACK, app_id="test-kpi-feedback")
    kpis = streaming.KpiBatch(settings, app_id="test-kpi")
    silver = table(spark, settings, FEEDBACK.silver)

    def totals() -> list[tuple]:
        rows = table(spark, settings, Table.GOLD_KPI_MINUTE).collect()
        return sorted((row.campaign_id, row.minute, row.impressions, row.clicks, row.spend_micros) for row in rows)

    batch.process(kafka_frame(spark, [feedback("e-1", cost_micros=2_500), feedback("e-2", "click")]), 0, ingested_at=T0)
    assert kpis.process(silver, 0) == 2
    assert totals() == [("cmp-1", T0.replace(tzinfo=None), 1, 1, 2_500)]

    # Only e-3 is new to silver, but its minute is recomputed from all three events, not added to.
    batch.process(kafka_frame(spark, [feedback("e-3", at=T0 + timedelta(seconds=30), cost_micros=1_000)]), 1,
                  ingested_at=T0)  # fmt: skip
    new_rows = silver.where("event_id = 'e-3'")
    gold_version = delta_versions(spark, settings, Table.GOLD_KPI_MINUTE)
    assert kpis.process(new_rows, 0) == 1  # a replay of KPI batch 0: Delta skips the MERGE
    assert delta_versions(spark, settings, Table.GOLD_KPI_MINUTE) == gold_version
    assert kpis.process(new_rows, 1) == 1
    assert totals() == [("cmp-1", T0.replace(tzinfo=None), 2, 1, 3_500)]
    gold_version = delta_versions(spark, settings, Table.GOLD_KPI_MINUTE)
    assert kpis.process(silver.where("event_id = 'none'"), 2) == 0  # nothing new: no commit
    assert delta_versions(spark, settings, Table.GOLD_KPI_MINUTE) == gold_version


def test_a_kpi_merge_that_loses_to_a_compaction_is_run_again(spark, tmp_path, monkeypatch):
    from delta.exceptions import ConcurrentDeleteReadException

    settings = lake_settings(tmp_path)
    streaming.ensure_tables(spark, settings, FEEDBACK)
    streaming.MicroBatch(settings, FEEDBACK, app_id="test-retry").process(
        kafka_frame(spark, [feedback("e-1", cost_micros=2_500)]), 0, ingested_at=T0
    )
    kpis = streaming.KpiBatch(settings, app_id="test-retry-kpi")
    merge, attempts = kpis._merge_kpis, []

    def compacted_first(*args):
        attempts.append(args[-1])
        if len(attempts) == 1:
            raise ConcurrentDeleteReadException("a concurrent OPTIMIZE removed a file this MERGE read", None, None)
        return merge(*args)

    monkeypatch.setattr(kpis, "_merge_kpis", compacted_first)
    assert kpis.process(table(spark, settings, FEEDBACK.silver), 0) == 1
    assert attempts == [0, 0]
    assert [row.impressions for row in table(spark, settings, Table.GOLD_KPI_MINUTE).collect()] == [1]

    def always_compacted(*args):
        raise ConcurrentDeleteReadException("again", None, None)

    monkeypatch.setattr(kpis, "_merge_kpis", always_compacted)
    with pytest.raises(ConcurrentDeleteReadException):
        kpis.process(table(spark, settings, FEEDBACK.silver), 1)


def test_reconcile_spend_sums_billable_micros_per_campaign_and_hour(spark, tmp_path):
    settings = lake_settings(tmp_path)
    streaming.ensure_tables(spark, settings, FEEDBACK)
    ten, eleven = T0 - timedelta(hours=2), T0 - timedelta(hours=1)  # 10:00 and 11:00
    events = [
        feedback("a1", at=ten + timedelta(minutes=5), cost_micros=1_500),
        feedback("a2", at=ten + timedelta(minutes=59, seconds=59), cost_micros=2_500),
        feedback("a3", "click", at=ten + timedelta(minutes=6)),  # not billable: no cost
        feedback("a4", at=eleven, cost_micros=4_000),
        feedback("b1", "click", at=eleven + timedelta(minutes=30), campaign_id="cmp-2", pricing_model="CPC",
                 cost_micros=700_000),
        feedback("z1", at=T0, cost_micros=99),  # outside [10:00, 12:00)
        feedback("z0", at=ten - timedelta(seconds=1), cost_micros=98),  # outside too
    ]  # fmt: skip
    batch = streaming.MicroBatch(settings, FEEDBACK, app_id="test-spend")
    batch.process(kafka_frame(spark, [*events, events[0]], kafka_time=T0 + MINUTE), 0, ingested_at=T0)  # a copy
    assert reconcile_spend(spark, settings, ten, T0) == {
        ("cmp-1", ten): 4_000,
        ("cmp-1", eleven): 4_000,
        ("cmp-2", eleven): 700_000,
    }
    with pytest.raises(ValueError, match="timezone-aware"):
        reconcile_spend(spark, settings, ten.replace(tzinfo=None), T0)


def test_duplicates_replays_out_of_order_and_late_events_land_once(spark, tmp_path):
    settings = lake_settings(tmp_path)
    streaming.ensure_tables(spark, settings, FEEDBACK)
    batch = streaming.MicroBatch(settings, FEEDBACK, app_id="test-dedupe")
    first = [feedback(f"e{i}", at=T0 + i * MINUTE, cost_micros=1_000) for i in range(5)]
    kafka_time = T0 + 10 * MINUTE
    batch.process(kafka_frame(spark, [*first, first[1], first[1]], kafka_time), 0, ingested_at=kafka_time)
    # The watermark of the next batch: e4's time (T0 + 4 min) - 10 min = T0 - 6 min.
    second = [
        first[2],  # a replay, later in the stream
        feedback("e5", at=T0 - 5 * MINUTE, cost_micros=1_000),  # out of order, within the watermark
        feedback("e6", at=T0 - 7 * MINUTE, cost_micros=1_000),  # behind the watermark
        feedback("e7", at=T0 + 5 * MINUTE, cost_micros=1_000),
        first[0],
    ]
    # A restarted job (a new MicroBatch) reads the clock from the bronze commit of batch 0.
    restarted = streaming.MicroBatch(settings, FEEDBACK, app_id="test-dedupe")
    counts = restarted.process(kafka_frame(spark, second, kafka_time), 1, ingested_at=kafka_time)
    assert counts == {"silver": 4, "late": 1}

    silver = table(spark, settings, Table.SILVER_FEEDBACK_EVENTS)
    assert sorted(row.event_id for row in silver.collect()) == ["e0", "e1", "e2", "e3", "e4", "e5", "e7"]
    quarantined = table(spark, settings, quarantine_table("feedback")).collect()
    assert [(json.loads(row.raw_value)["event_id"], row.reason) for row in quarantined] == [("e6", "late")]
    assert table(spark, settings, Table.BRONZE_FEEDBACK_RAW).count() == 12
    streaming.KpiBatch(settings, app_id="test-dedupe-kpi").process(silver, 0)
    gold = table(spark, settings, Table.GOLD_KPI_MINUTE).collect()
    assert sorted((row.minute.minute, row.impressions, row.spend_micros) for row in gold) == sorted(
        ((T0 + i * MINUTE).minute, 1, 1_000) for i in (-5, 0, 1, 2, 3, 4, 5)
    )


def click(event_id: str, seconds: float, user_id: str | None, ip: str | None, **fields: object) -> dict:
    return feedback(event_id, "click", at=T0 + timedelta(seconds=seconds), user_id=user_id, ip=ip, **fields)


def test_sivt_tags_user_and_ip_click_rate_outliers_against_the_clicks_silver_holds(spark, tmp_path):
    # More than 2 clicks in the 60 s ending at a click (itself included) make it an outlier.
    settings = lake_settings(tmp_path, ivt_sivt_window_s=60, ivt_sivt_max_clicks=2)
    streaming.ensure_tables(spark, settings, FEEDBACK)
    batch = streaming.MicroBatch(settings, FEEDBACK, app_id="test-sivt")
    first = [
        click("k1", 0, "u1", "10.0.0.1"), click("k2", 10, "u1", "10.0.0.2"),
        feedback("i1", at=T0 + timedelta(seconds=11), user_id="u1", ip="10.0.0.1"),  # not a click: not counted
        *(click(f"a{i}", 12 + i, None, None) for i in range(5)),  # anonymous: no user or IP to rate
        # Three users behind one IP: its third click in the window is an outlier.
        click("p1", 1, "u2", "9.9.9.9"), click("p2", 2, "u3", "9.9.9.9"), click("p3", 3, "u4", "9.9.9.9"),
        # A click delivered twice is one click: u7 has two, not three.
        click("r1", 40, "u7", "8.8.8.8"), click("r1", 40, "u7", "8.8.8.8"), click("r2", 41, "u7", "8.8.8.8"),
    ]  # fmt: skip
    batch.process(kafka_frame(spark, first), 0, ingested_at=T0 + MINUTE)
    second = [
        click("k3", 20, "u1", "10.0.0.3"),  # u1's third click in (-40 s, 20 s]: k1 and k2 are in silver
        click("g1", 21, "u1", "10.0.0.3", ivt_category="givt", ivt_reason="fast_click"),  # keeps its GIVT tag
        click("k4", 85, "u1", "10.0.0.3"),  # (25 s, 85 s] holds k4 only
        click("p4", 70, "u5", "9.9.9.9"),  # the IP's earlier clicks are out of its window
        # Both the user's and the IP's third: the user's reason is given.
        click("q1", 30, "u6", "7.7.7.7"), click("q2", 31, "u6", "7.7.7.7"), click("q3", 32, "u6", "7.7.7.7"),
    ]  # fmt: skip
    batch.process(kafka_frame(spark, second), 1, ingested_at=T0 + 2 * MINUTE)

    silver = table(spark, settings, Table.SILVER_FEEDBACK_EVENTS)
    tags = {row.event_id: (row.ivt_category, row.ivt_reason) for row in silver.collect()}
    assert len(tags) == len(first) + len(second) - 1  # r1's copy
    assert {event_id: tag for event_id, tag in tags.items() if tag != (None, None)} == {
        "p3": ("sivt", "ip_click_rate"),
        "k3": ("sivt", "user_click_rate"),
        "g1": ("givt", "fast_click"),
        "q3": ("sivt", "user_click_rate"),
    }
    # The same tags without Spark, as a run's summary reads them (the days asked are the partitions read).
    summary = ivt.ivt_summary(settings, T0, T0 + MINUTE)
    assert len(summary) == len(first) + len(second) - 3  # r1's copy; k4 and p4 are in the next minute
    assert dict(zip(summary["event_id"], summary["ivt_reason"], strict=True))["k3"] == "user_click_rate"


def test_refused_events_land_in_quarantine_events_once_and_malformed_ones_with_a_reason(spark, tmp_path):
    settings = lake_settings(tmp_path)
    streaming.ensure_tables(spark, settings, REFUSED)
    batch = streaming.AppendBatch(settings, REFUSED, app_id="test-refused")
    forged = RefusedEvent(
        event_id="ev-1", event_type="click", auction_id="auc-1", reason="signature_invalid",
        detail="the token's signature does not match", refused_at=T0, user_agent="curl/8.5", ip="203.0.113.7",
    ).model_dump(mode="json")  # fmt: skip
    unsigned = RefusedEvent(reason="token_missing", detail="no token", refused_at=T0 + MINUTE).model_dump(mode="json")
    no_reason = {k: v for k, v in forged.items() if k != "reason"}
    records = [forged, unsigned, forged, "{not json", no_reason]  # the same forged click sent twice: two refusals
    assert batch.process(kafka_frame(spark, records, topic="refused-events"), 0, ingested_at=T0 + MINUTE) == {
        "landed": 3, "malformed_json": 1, "missing_field": 1,
    }  # fmt: skip
    versions = delta_versions(spark, settings, Table.QUARANTINE_EVENTS, REFUSED.quarantine)
    batch.process(kafka_frame(spark, records, topic="refused-events"), 0, ingested_at=T0 + 2 * MINUTE)
    assert delta_versions(spark, settings, Table.QUARANTINE_EVENTS, REFUSED.quarantine) == versions  # a replay

    refused = table(spark, settings, Table.QUARANTINE_EVENTS)
    assert sorted((row.kafka_offset, row.reason, row.event_id, row.ip) for row in refused.collect()) == [
        (0, "signature_invalid", "ev-1", "203.0.113.7"), (1, "token_missing", None, None),
        (2, "signature_invalid", "ev-1", "203.0.113.7"),
    ]  # fmt: skip
    assert {row.refused_date.isoformat() for row in refused.collect()} == {"2026-03-01"}
    malformed = table(spark, settings, quarantine_table("refused")).collect()
    assert sorted((row.kafka_offset, row.reason) for row in malformed) == [(3, "malformed_json"), (4, "missing_field")]


def test_optimizer_decisions_land_once_per_record_with_their_platforms(spark, tmp_path):
    settings = lake_settings(tmp_path)
    decisions = streaming.SOURCES["decisions"]
    streaming.ensure_tables(spark, settings, decisions)
    batch = streaming.AppendBatch(settings, decisions, app_id="test-decisions")
    platforms = [
        {"platform": platform, "multiplier": 1.5 if platform == "web/mobile" else 0.0, "reason": "value",
         "impressions": 100, "clicks": 4, "conversions": 1, "spend_micros": 2_000_000, "ctr": 0.04, "cvr": 0.25,
         "cvr_drawn": 0.2, "ctr_trend_per_bucket": 0.001, "cvr_trend_per_bucket": 0.0, "cpc_micros": 500_000.0,
         "roi_per_click_micros": 1_500_000.0, "p_losing": 0.01}
        for platform in PLATFORMS
    ]  # fmt: skip
    decision = CampaignDecision(
        decision_id="c1:1", campaign_id="c1", version=1, decided_at=T0, window_start=T0 - 30 * MINUTE,
        value_micros=10_000_000, base_bid_micros=1_000_000, platforms=platforms,
    ).model_dump(mode="json")  # fmt: skip
    too_high = decision | {"decision_id": "c1:2", "platforms": [p | {"multiplier": 3.0} for p in platforms]}
    frame = kafka_frame(spark, [decision, too_high], topic="campaign-decisions")
    assert batch.process(frame, 0, ingested_at=T0) == {"landed": 1, "out_of_range": 1}
    batch.process(frame, 0, ingested_at=T0)  # a replay of the batch lands nothing more
    landed = table(spark, settings, Table.GOLD_OPTIMIZER_DECISIONS).collect()
    assert [(row.decision_id, row.decided_date.isoformat()) for row in landed] == [("c1:1", "2026-03-01")]
    assert [p.platform for p in landed[0].platforms] == list(PLATFORMS)
    assert landed[0].platforms[0].multiplier == 1.5 and landed[0].platforms[0].cpc_micros == 500_000.0


def test_a_decisions_table_from_before_the_priors_gains_the_nested_fields_and_lands_them(spark, tmp_path):
    settings = lake_settings(tmp_path)
    decisions = streaming.SOURCES["decisions"]
    path = settings.lake_path(Table.GOLD_OPTIMIZER_DECISIONS)
    streaming.ensure_tables(spark, settings, decisions)
    current = table(spark, settings, Table.GOLD_OPTIMIZER_DECISIONS).schema
    # The table as the job wrote it before a platform's decision carried its priors.
    platform = current["platforms"].dataType.elementType
    old_platform = StructType([f for f in platform.fields if f.name not in ("prior_ctr", "prior_cvr")])
    old = StructType(
        [StructField(f.name, ArrayType(old_platform)) if f.name == "platforms" else f for f in current.fields]
    )
    shutil.rmtree(path)
    spark.createDataFrame([], old).write.format("delta").partitionBy("decided_date").save(path)
    assert "prior_ctr" not in table(spark, settings, Table.GOLD_OPTIMIZER_DECISIONS).schema["platforms"].simpleString()

    streaming.ensure_tables(spark, settings, decisions)
    gained = table(spark, settings, Table.GOLD_OPTIMIZER_DECISIONS).schema["platforms"].dataType.elementType
    assert {"prior_ctr", "prior_cvr"} <= set(gained.fieldNames())
    platforms = [
        {"platform": p, "multiplier": 1.0, "reason": "value", "impressions": 100, "clicks": 4, "conversions": 1,
         "spend_micros": 2_000_000, "ctr": 0.04, "cvr": 0.25, "cvr_drawn": 0.2, "ctr_trend_per_bucket": 0.0,
         "cvr_trend_per_bucket": 0.0, "p_losing": 0.01, "prior_ctr": 0.031, "prior_cvr": 0.052}
        for p in PLATFORMS
    ]  # fmt: skip
    decision = CampaignDecision(
        decision_id="c1:1", campaign_id="c1", version=1, decided_at=T0, window_start=T0 - 30 * MINUTE,
        value_micros=10_000_000, base_bid_micros=1_000_000, ctr_prior_strength=250.0, cvr_prior_strength=40.0,
        platforms=platforms,
    ).model_dump(mode="json")  # fmt: skip
    batch = streaming.AppendBatch(settings, decisions, app_id="test-decision-priors")
    assert batch.process(kafka_frame(spark, [decision], topic="campaign-decisions"), 0, ingested_at=T0) == {"landed": 1}
    (row,) = table(spark, settings, Table.GOLD_OPTIMIZER_DECISIONS).collect()
    assert (row.ctr_prior_strength, row.cvr_prior_strength) == (250.0, 40.0)
    assert {(p.prior_ctr, p.prior_cvr) for p in row.platforms} == {(0.031, 0.052)}


def test_tables_from_before_the_added_fields_take_the_new_columns_and_keep_streaming(spark, tmp_path):
    settings = lake_settings(tmp_path)
    silver_path, gold_path = settings.lake_path(FEEDBACK.silver), settings.lake_path(Table.GOLD_KPI_MINUTE)
    # silver and gold as the job wrote them before FeedbackEvent gained its optional fields.
    old_event = feedback("old-1", at=T0, cost_micros=2_500)
    valid, _ = parse_records(
        kafka_frame(spark, [old_event]), FeedbackEvent, ingested_at=T0, watermark_micros=None, max_ahead=MINUTE * 10
    )
    old_silver = valid.drop(*ADDED_EVENT_COLUMNS)
    old_silver.write.format("delta").partitionBy("event_date").save(silver_path)
    kpi_by_minute(valid).drop("ivt_impressions", "ivt_clicks").write.format("delta").save(gold_path)
    streaming.start_kpi_query(spark, settings, available_now=True, trigger_s=1).awaitTermination()

    streaming.ensure_tables(spark, settings, FEEDBACK)
    assert set(ADDED_EVENT_COLUMNS) <= set(table(spark, settings, FEEDBACK.silver).columns)
    new_events = [
        feedback("new-1", at=T0 + timedelta(seconds=5), cost_micros=2_500, charge_status="charged",
                 publisher_id="pub-1"),
        feedback("new-2", at=T0 + timedelta(seconds=6), charge_status="invalid_traffic", ivt_category="givt",
                 ivt_reason="datacenter_ip", ip="198.51.100.4"),
    ]  # fmt: skip
    streaming.MicroBatch(settings, FEEDBACK, app_id="test-evolve").process(
        kafka_frame(spark, new_events), 0, ingested_at=T0 + MINUTE
    )
    # The KPI query resumes from its checkpoint over the evolved table.
    streaming.start_kpi_query(spark, settings, available_now=True, trigger_s=1).awaitTermination()

    silver = {row.event_id: row for row in table(spark, settings, FEEDBACK.silver).collect()}
    assert (silver["old-1"].charge_status, silver["old-1"].ivt_category) == (None, None)
    assert (silver["new-1"].charge_status, silver["new-1"].publisher_id) == ("charged", "pub-1")
    assert (silver["new-2"].ivt_reason, silver["new-2"].ip) == ("datacenter_ip", "198.51.100.4")
    (kpi,) = table(spark, settings, Table.GOLD_KPI_MINUTE).collect()
    assert (kpi.impressions, kpi.spend_micros, kpi.ivt_impressions) == (2, 5_000, 1)


def test_the_health_check_passes_only_while_a_job_beats(tmp_path):
    settings = make_settings(tmp_path)
    assert streaming.check_heartbeat(settings) == 1  # no job has run
    beat = streaming.heartbeat_file(settings)
    beat.parent.mkdir(parents=True)
    beat.write_text(json.dumps({"pid": 12345, "queries": {}}))
    assert streaming.check_heartbeat(settings) == 0
    stale = time.time() - 31  # the check allows 30 s between beats
    os.utime(beat, (stale, stale))
    assert streaming.check_heartbeat(settings) == 1


def test_a_run_streams_the_sources_asked_for():
    assert streaming.sources_for() == list(streaming.SOURCES.values())
    assert {source.topic for source in streaming.sources_for("all")} == {
        Topic.AD_FEEDBACK, Topic.AUCTIONS, Topic.REFUSED_EVENTS, Topic.CAMPAIGN_DECISIONS,
    }  # fmt: skip
    assert streaming.sources_for("refused") == [REFUSED]
    assert streaming.sources_for("auctions") == [streaming.SOURCES["auctions"]]
    (renamed,) = streaming.sources_for("feedback", "ad-feedback-test")
    assert renamed == replace(FEEDBACK, topic="ad-feedback-test")
    with pytest.raises(ValueError, match="--topic needs a single --source"):
        streaming.sources_for("all", "ad-feedback-test")
    with pytest.raises(ValueError, match="unknown source 'clicks'"):
        streaming.sources_for("clicks")


# --- through Kafka ---


def _job(settings: Settings, log: Path, *args: str) -> subprocess.Popen:
    env = child_process_env(
        **services.settings_env(settings),
        SPARK_DRIVER_MEMORY="1g",
        PYSPARK_SUBMIT_ARGS="--conf spark.ui.enabled=false pyspark-shell",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [ADSTREAM, "stream", "--source", "feedback", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=services.PROJECT_ROOT, start_new_session=True,
        )  # fmt: skip


def _wait_for(condition, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    pytest.fail(f"{what} did not happen within {timeout_s:.0f}s; job log:\n{tail}")


def test_records_behind_are_the_latest_minus_the_end_offsets_summed_over_partitions():
    end = json.dumps({"ad-feedback": {"0": 10, "1": 4}})
    latest = json.dumps({"ad-feedback": {"0": 25, "1": 4, "2": 3}})  # partition 2 not read yet: from 0
    assert kafka_offsets_behind(end, latest) == {"ad-feedback": 15 + 0 + 3}
    assert kafka_offsets_behind(latest, latest) == {"ad-feedback": 0}
    assert kafka_offsets_behind(end, None) == {}
    assert kafka_offsets_behind("5", "7") == {}  # not a Kafka source's offsets (a Delta source's are other JSON)


def test_the_metrics_listener_reports_every_batch_its_rows_and_the_records_left(spark, tmp_path, kafka_settings,
                                                                                  monkeypatch):  # fmt: skip
    settings = lake_settings(tmp_path, kafka_settings)
    source = replace(REFUSED, topic=f"refused-events-{uuid.uuid4().hex[:8]}")  # one query, the cheapest batches
    ensure_topics(settings, [source.topic])
    refused = [
        RefusedEvent(event_id=f"m-{i}", event_type="click", auction_id=f"auc-{i}", reason="token_missing",
                     detail="no token", refused_at=T0).model_dump(mode="json")
        for i in range(15)
    ]  # fmt: skip
    produce(settings, source.topic, refused)
    monkeypatch.setattr(streaming, "MAX_RECORDS_PER_BATCH", 10)  # two batches: 10, 5
    listener = StreamingMetrics()
    exporter = serve(listener.registry, "127.0.0.1", free_port(), "streaming")
    assert exporter is not None
    spark.streams.addListener(listener)
    try:
        streaming.run(spark, settings, [source], available_now=True)
        deadline = time.monotonic() + 60  # the listener bus delivers after the queries return
        while True:
            families = {f.name: f for f in text_string_to_metric_families(httpx.get(exporter.url).text)}
            ended = {s.labels["query"] for s in families["adstream_streaming_queries_terminated"].samples}
            if source.query_name in ended or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        spark.streams.removeListener(listener)
        exporter.close()

    def sample(family: str, name: str, **labels: str) -> float:
        (value,) = [s.value for s in families[family].samples if s.name == name and s.labels.items() >= labels.items()]
        return value

    query = source.query_name
    assert sample("adstream_streaming_batch_input_rows", "adstream_streaming_batch_input_rows_sum", query=query) == 15
    assert sample("adstream_streaming_batch_input_rows", "adstream_streaming_batch_input_rows_count", query=query) == 2
    durations = ("adstream_streaming_batch_duration_seconds", "adstream_streaming_batch_duration_seconds")
    assert sample(durations[0], f"{durations[1]}_count", query=query) == 2
    assert sample(durations[0], f"{durations[1]}_sum", query=query) > 0
    behind = "adstream_streaming_offsets_behind_latest"
    assert sample(behind, behind, query=query, topic=source.topic) == 0  # all read by the last batch
    last = sample("adstream_streaming_last_batch_timestamp_seconds", "adstream_streaming_last_batch_timestamp_seconds",
                  query=query)  # fmt: skip
    assert abs(last - time.time()) < 600
    assert sample("adstream_streaming_queries_terminated", "adstream_streaming_queries_terminated_total",
                  query=query, failed="false") == 1  # fmt: skip
    assert any(name.startswith("process_") for name in families)


def _batches_reported(settings: Settings, query: str) -> float:
    """The micro-batches of ``query`` a running job reports on STREAMING_METRICS_PORT (0 until it serves)."""
    try:
        text = httpx.get(f"http://127.0.0.1:{settings.streaming_metrics_port}/metrics", timeout=2).text
    except httpx.TransportError:
        return 0
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "adstream_streaming_batch_input_rows_count" and sample.labels.get("query") == query
    )


def test_a_job_killed_mid_run_restarts_from_its_checkpoint_and_lands_every_record_once(spark, tmp_path, kafka_settings):
    settings = lake_settings(tmp_path, kafka_settings, spark_master="local[2]", spark_shuffle_partitions=1,
                             streaming_metrics_port=free_port())  # fmt: skip
    topic = f"ad-feedback-{uuid.uuid4().hex[:8]}"
    ensure_topics(settings, [topic])
    now = datetime.now(UTC) - timedelta(minutes=5)
    malformed_kinds = ["{truncated", '{"schema_version": 1}', "null"]
    records: list[dict | str] = []
    for i in range(2_000):
        if i % 100 == 42:  # 1 %
            records.append(malformed_kinds[i % 3])
        else:
            records.append(feedback(f"ev-{i:05d}", at=now + timedelta(milliseconds=i), cost_micros=i))
    records += [records[i] for i in range(0, 2_000, 250)]  # re-sent copies of 8 valid events
    unique_valid = {record["event_id"]: record for record in records if isinstance(record, dict)}
    valid_ids = set(unique_valid)
    log = tmp_path / "streaming.log"

    produce(settings, topic, records[:1_000])
    job = _job(settings, log, "--topic", topic, "--trigger-s", "1")
    first_batch = Path(settings.lake_path(Table.BRONZE_FEEDBACK_RAW)) / "_delta_log" / f"{1:020d}.json"
    _wait_for(first_batch.exists, 150, "the first batch", log)
    _wait_for(lambda: _batches_reported(settings, FEEDBACK.query_name) > 0, 60, "the job's batches on /metrics", log)
    producer = make_producer(settings, value_serializer=None)
    for chunk in range(1_000, len(records), 250):
        produce(settings, topic, records[chunk : chunk + 250], producer)
        producer.flush(timeout=30)
        time.sleep(0.3)
    producer.close()
    os.killpg(job.pid, signal.SIGKILL)  # no chance to finish the batch or commit offsets
    assert job.wait(timeout=30) == -signal.SIGKILL

    # The restart needs no manual step: the checkpoint says where to resume.
    streaming.run(spark, settings, [replace(FEEDBACK, topic=topic)], available_now=True)

    silver = table(spark, settings, Table.SILVER_FEEDBACK_EVENTS)
    assert silver.count() == silver.select("event_id").distinct().count() == len(valid_ids)
    assert {row.event_id for row in silver.select("event_id").collect()} == valid_ids
    quarantine = table(spark, settings, quarantine_table("feedback")).collect()
    assert sorted(row.raw_value for row in quarantine) == sorted(r for r in records if isinstance(r, str))
    assert {row.reason for row in quarantine} == {"malformed_json", "missing_field"}
    (kpis,) = (
        table(spark, settings, Table.GOLD_KPI_MINUTE).selectExpr("sum(impressions)", "sum(spend_micros)").collect()
    )
    assert tuple(kpis) == (len(unique_valid), sum(record["cost_micros"] for record in unique_valid.values()))
    bronze = table(spark, settings, Table.BRONZE_FEEDBACK_RAW)
    assert bronze.count() == bronze.select("kafka_partition", "kafka_offset").distinct().count() == len(records)


def test_a_broker_outage_during_production_loses_and_duplicates_nothing(spark, tmp_path):
    # A broker of its own: this test stops it.
    settings = make_settings(tmp_path, spark_master="local[2]", spark_shuffle_partitions=1)
    (broker,) = services.build_services(settings, ["kafka"])
    services.start(settings, broker)
    try:
        services.wait_healthy(settings, broker)
        ensure_topics(settings, [Topic.AD_FEEDBACK])
        source = FEEDBACK
        now = datetime.now(UTC) - timedelta(minutes=5)
        events = [feedback(f"out-{i:04d}", at=now + timedelta(milliseconds=i), cost_micros=10) for i in range(600)]
        producer = make_producer(
            settings, value_serializer=None, delivery_timeout_ms=180_000, reconnect_backoff_max_ms=1_000
        )
        produce(settings, Topic.AD_FEEDBACK, events[:300], producer)
        producer.flush(timeout=30)
        streaming.run(spark, settings, [source], available_now=True)
        assert table(spark, settings, Table.SILVER_FEEDBACK_EVENTS).count() == 300

        assert services.stop(settings, broker) == "stopped"
        produce(settings, Topic.AD_FEEDBACK, events[300:], producer)  # buffered and retried by the producer
        services.start(settings, broker)  # the same data directory
        services.wait_healthy(settings, broker)
        producer.flush(timeout=120)
        producer.close()

        streaming.run(spark, settings, [source], available_now=True)
        silver = table(spark, settings, Table.SILVER_FEEDBACK_EVENTS)
        assert silver.count() == silver.select("event_id").distinct().count() == 600
        assert table(spark, settings, Table.BRONZE_FEEDBACK_RAW).count() == 600  # the producer sent each once

        # The `streaming` service on this lake: it resumes from the same checkpoint with nothing to do,
        # is healthy once its driver loop beats, and `make down` (SIGTERM to its group) ends it cleanly.
        (job,) = services.build_services(settings, ["streaming"])
        services.start(settings, job)
        try:
            services.wait_healthy(settings, job)
            assert set(json.loads(streaming.heartbeat_file(settings).read_text())["queries"]) == {
                "feedback_stream", "auctions_stream", "refused_stream", "decisions_stream", "kpi_minute_stream",
            }  # fmt: skip
        finally:
            assert services.stop(settings, job) == "stopped"
        assert "streaming stopped" in services.log_file(settings, "streaming").read_text()  # exit 0, not torn down
        assert table(spark, settings, Table.SILVER_FEEDBACK_EVENTS).count() == 600
    finally:
        services.stop(settings, broker)
