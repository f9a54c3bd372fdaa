"""Platform smoke flow: Kafka -> Spark Structured Streaming -> Delta.

Proves the engines are wired together: events go to a Kafka topic, an
`availableNow` stream lands them in a Delta table exactly once (the Delta sink
plus a checkpoint), and a read-back counts them.

    adstream smoke all --events 100
    adstream smoke produce|land|verify --run-id <id>

The pure parts (the events of a run, parsing Kafka records) are few and small, so they live
here beside the steps rather than in a module of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType, TimestampType

from adstream.contracts import Table, Topic
from adstream.messaging import ensure_topics, make_producer
from adstream.settings import Settings

SMOKE_EVENT_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), nullable=False),
        StructField("run_id", StringType(), nullable=False),
        StructField("seq", IntegerType(), nullable=False),
        StructField("event_time", TimestampType(), nullable=False),
    ]
)
CHECKPOINT = "smoke_events"
STEPS = ("all", "produce", "land", "verify")


class SmokeFailed(RuntimeError):
    """Not every produced smoke event reached the Delta table."""


def smoke_events(run_id: str, count: int, start: datetime) -> Iterator[dict[str, object]]:
    """Deterministic events for one smoke run, one second apart from ``start``."""
    for seq in range(count):
        yield {
            "event_id": f"{run_id}-{seq:06d}",
            "run_id": run_id,
            "seq": seq,
            "event_time": (start + timedelta(seconds=seq)).isoformat(),
        }


def parse_smoke_records(kafka_records: DataFrame) -> DataFrame:
    """Kafka source rows -> typed smoke events, keeping the Kafka coordinates for lineage."""
    parsed = F.from_json(F.col("value").cast("string"), SMOKE_EVENT_SCHEMA)
    return kafka_records.select(
        parsed.alias("event"),
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
    ).select("event.*", "kafka_topic", "kafka_partition", "kafka_offset")


def produce(settings: Settings, run_id: str, count: int) -> int:
    ensure_topics(settings, [Topic.PLATFORM_SMOKE], partitions=1)
    producer = make_producer(settings)
    try:
        for event in smoke_events(run_id, count, datetime.now(UTC)):
            producer.send(Topic.PLATFORM_SMOKE, key=str(event["event_id"]), value=event)
        producer.flush(timeout=30)
    finally:
        producer.close()
    return count


def land(spark: SparkSession, settings: Settings) -> str:
    """Drains the topic into Delta (availableNow); re-running lands only what is new."""
    records = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", Topic.PLATFORM_SMOKE)
        .option("startingOffsets", "earliest")
        .load()
    )
    table_path = settings.lake_path(Table.SMOKE_EVENTS)
    query = (
        parse_smoke_records(records)
        .writeStream.format("delta")
        .option("checkpointLocation", settings.checkpoint_path(CHECKPOINT))
        .outputMode("append")
        .trigger(availableNow=True)
        .start(table_path)
    )
    query.awaitTermination()
    return table_path


def landed_count(spark: SparkSession, settings: Settings, run_id: str) -> int:
    table = spark.read.format("delta").load(settings.lake_path(Table.SMOKE_EVENTS))
    return table.where(F.col("run_id") == run_id).select("event_id").distinct().count()


def verify(spark: SparkSession, settings: Settings, run_id: str, count: int) -> int:
    """Raises unless exactly ``count`` events of ``run_id`` are in the Delta table; returns that count."""
    landed = landed_count(spark, settings, run_id)
    if landed != count:
        raise SmokeFailed(
            f"{landed} of {count} smoke events of run {run_id} reached {settings.lake_path(Table.SMOKE_EVENTS)}"
        )
    return landed


def run_id_for(step: str, run_id: str | None) -> str:
    """The run's id: the one given, or a new random one; ``verify`` needs the id ``produce`` printed."""
    if step == "verify" and run_id is None:
        raise ValueError("`verify` needs the --run-id that `produce` printed")
    return run_id or uuid.uuid4().hex[:12]


def needs_spark(step: str) -> bool:
    return step in ("all", "land", "verify")


def run_steps(settings: Settings, spark: SparkSession | None, step: str, run_id: str, count: int) -> None:
    """Runs ``step`` (one of STEPS; ``all`` is produce, land, verify), saying what each did; raises SmokeFailed.
    ``spark`` may be None when not ``needs_spark(step)``."""
    if step in ("all", "produce"):
        produce(settings, run_id, count)
        print(
            f"produced {count} events of run {run_id} to Kafka topic "
            f"'{Topic.PLATFORM_SMOKE}' at {settings.kafka_bootstrap_servers}"
        )
    if step in ("all", "land"):
        print(f"landed the topic into Delta at {land(spark, settings)}")
    if step in ("all", "verify"):
        print(f"verified: {verify(spark, settings, run_id, count)} events of run {run_id} are in Delta")
