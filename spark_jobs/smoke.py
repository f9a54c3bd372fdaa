"""Platform smoke flow: Kafka -> Spark Structured Streaming -> Delta.

Proves the engines are wired together: events go to a Kafka topic, an
`availableNow` stream lands them in a Delta table exactly once (the Delta sink
plus a checkpoint), and a read-back counts them.

    python -m spark_jobs.smoke all --events 100
    python -m spark_jobs.smoke produce|land|verify --run-id <id>
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import IntegerType, StringType, StructField, StructType, TimestampType

from adstream.contracts import Table, Topic
from adstream.messaging import ensure_topics, make_producer
from adstream.settings import Settings, get_settings

SMOKE_EVENT_SCHEMA = StructType(
    [
        StructField("event_id", StringType(), nullable=False),
        StructField("run_id", StringType(), nullable=False),
        StructField("seq", IntegerType(), nullable=False),
        StructField("event_time", TimestampType(), nullable=False),
    ]
)
CHECKPOINT = "smoke_events"


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


def produce_step(run_id: str, count: int) -> str:
    produce(get_settings(), run_id, count)
    return run_id


def land_step() -> str:
    from spark_jobs.session import get_spark

    settings = get_settings()
    return land(get_spark("adstream-smoke", settings), settings)


def verify_step(run_id: str, count: int) -> int:
    """Raises unless exactly ``count`` events of ``run_id`` are in the Delta table."""
    from spark_jobs.session import get_spark

    settings = get_settings()
    landed = landed_count(get_spark("adstream-smoke", settings), settings, run_id)
    if landed != count:
        raise SmokeFailed(
            f"{landed} of {count} smoke events of run {run_id} reached {settings.lake_path(Table.SMOKE_EVENTS)}"
        )
    return landed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark_jobs.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["all", "produce", "land", "verify"])
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--run-id", default=None, help="defaults to a new random id for `all` and `produce`")
    args = parser.parse_args(argv)
    if args.step == "verify" and args.run_id is None:
        parser.error("`verify` needs the --run-id that `produce` printed")
    run_id = args.run_id or uuid.uuid4().hex[:12]
    settings = get_settings()
    try:
        if args.step in ("all", "produce"):
            produce_step(run_id, args.events)
            print(
                f"produced {args.events} events of run {run_id} to Kafka topic "
                f"'{Topic.PLATFORM_SMOKE}' at {settings.kafka_bootstrap_servers}"
            )
        if args.step in ("all", "land"):
            print(f"landed the topic into Delta at {land_step()}")
        if args.step in ("all", "verify"):
            print(f"verified: {verify_step(run_id, args.events)} events of run {run_id} are in Delta")
    except SmokeFailed as exc:
        print(f"smoke failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
