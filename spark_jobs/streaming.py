"""Kafka -> Delta, exactly once: ``ad-feedback`` and ``auctions`` into bronze, silver, quarantine and gold KPIs,
``refused-events`` into quarantine/events, ``campaign-decisions`` into gold/optimizer_decisions.

    adstream stream [--source feedback|auctions|refused|decisions|all] [--topic T] [--available-now] [--trigger-s N]
    adstream stream --check     # exit 0 if a running job's driver loop beat recently

One Structured Streaming query per topic, checkpointed in ``_checkpoints/<source>_stream``. Each of its
micro-batches (``foreachBatch``) writes, in this order (silver first: it is what readers wait for):
1. silver/feedback_events (silver/auctions): the valid records, one per event_id (auction_id),
   with the model's columns plus their origin, partitioned by event_date;
2. bronze/<source>_raw: every Kafka record as it came (key, value text, topic, partition, offset,
   Kafka timestamp, ingest time), partitioned by ingest date;
3. quarantine/<source>: records that fail the versioned schema of adstream.events (malformed
   JSON, wrong schema_version, missing field, wrong type, out-of-range value such as a negative
   cost, unknown enum value such as an unknown event_type), events ahead of their Kafka timestamp
   by more than the watermark, and late events, each with a reason, a detail, the raw value and
   its origin (spark_jobs.stream_transforms). A bad record never stops the stream.

SIVT-lite is tagged here, as feedback lands in silver (spark_jobs.ivt_transforms states the rule): a
click whose user or IP clicked more than IVT_SIVT_MAX_CLICKS times in the IVT_SIVT_WINDOW_S ending at
it is tagged ``sivt``. Here rather than in the hourly billing job: the KPIs (which trail silver by
seconds) and every reader of silver see the same tag billing credits, and each click is judged once,
from the clicks silver holds when it lands plus its own batch. The batch reads silver's clicks back to
one window before its earliest click, and skips this step without clicks. A click arriving out of order, older
than clicks already landed, counts for the clicks after it that land later, but does not re-tag
those already landed: silver is append-only, and a tag never changes once billed.

``refused-events`` (events the auction service refused: unsigned, tampered, expired ...) has a query
of its own that lands every record in quarantine/events, partitioned by refused_date, and a record
that is not a RefusedEvent in quarantine/refused. Refusals are an audit trail: no watermark, no
deduplication (a refusal has no id of its own; the same forged click sent twice is two refusals),
and no bronze copy (quarantine/refused keeps the raw value of what failed to parse).
``campaign-decisions`` (the optimizer's) lands the same way in gold/optimizer_decisions, partitioned by
decided_date, each decision with its inputs, forecasts and reasons per platform (a nested array).

gold/kpi_minute has a query of its own, ``kpi_minute_stream``: it reads the rows silver/feedback_events
gains (the Delta source; compactions are skipped) and recomputes, from all of silver, the (campaign,
minute) pairs they fall in, MERGEd into gold, so a minute that gains a late event is corrected, not
double counted. Silver is read only between the batch's first and last minute (file skipping on
event_time). Its MERGE costs a few seconds of Delta commits whatever the batch size; inside the
feedback query's batches it held silver's cadence at 6-7 s against a 5 s trigger. On its own it runs
every STREAM_KPI_TRIGGER_S (30 s), so the KPIs trail silver by up to about half a minute. With
--available-now it runs after the topic queries, over all they wrote.

Watermark: STREAM_WATERMARK_S, 600 s (10 min) by default, behind the latest valid event time of the
batches before. The clock travels in the bronze append's commit (``userMetadata``), so a replayed
batch sees the same watermark at no extra commit: cut off before that commit, it reads the clock it
read the first time; after it, the clock names the batch and keeps its watermark. An event older than
the watermark is quarantined as ``late``; a replay of an event_id within it is dropped. Why 10
minutes: the auction service refuses events older than half of it, so everything it charges reaches
silver; the other half absorbs the stream's own lag (a restart, a broker outage, a backlog) and
producer clock skew. Longer would hold billing hours open longer (an hour is final one watermark
after it ends) and widen the window each batch deduplicates against.

Deduplication: within a batch the copy Kafka received first is kept; across batches only the
event_ids silver does not hold are appended (an anti-join against silver back to two watermarks
behind the latest event time: a copy older than that could only pair with a late replay, which is
quarantined). The append is blind, so table maintenance compacting silver meanwhile cannot make it
fail; this query is silver's only writer.

Schema changes: adding an optional field to an event model (or to a record nested in one) adds a
column (or a nested field). At start the job adds the
transforms' new columns to existing tables (an empty append with mergeSchema), before any query
reads them, so the KPI query's Delta source never sees the schema change mid-stream; rows from
before read the new columns as null. Silver appends carry mergeSchema too.

Exactly once: every write of a batch carries Delta's idempotent-write pair (txnAppId = the query
and its checkpoint's id, txnVersion = the batch id): DataFrame writer options for appends, the
session's ``spark.databricks.delta.write.txnAppId/txnVersion`` for the KPI MERGE. Spark replays a
batch whose commit it did not record with the same offsets and id, and each table skips the writes
it already holds. A new checkpoint gets a new query id, so its batch 0 is not mistaken for an old
one. A KPI MERGE that loses a race with a compaction of gold is run again (it is a recomputation).

Partitioning: silver by event_date; an hourly billing read prunes to its day and skips files by
event_time statistics (each micro-batch's files span minutes).

failOnDataLoss is on: offsets that vanished (retention, a recreated topic) would be spend that
never reaches billing, so the query fails loudly instead of skipping them.

Stopping: SIGTERM or SIGINT waits for the running batch to finish, stops the queries and exits 0.
The JVM is started with both signals ignored so that `make down` (SIGTERM to the process group)
does not tear Spark down mid-batch; a batch cut short anyway (SIGKILL) is replayed on restart.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import FrameType

from delta.exceptions import (
    ConcurrentAppendException,
    ConcurrentDeleteReadException,
    ConcurrentTransactionException,
    ConcurrentWriteException,
    DeltaConcurrentModificationException,
)
from delta.tables import DeltaTable
from pydantic import BaseModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import DataStreamWriter, StreamingQuery
from pyspark.sql.types import ArrayType, DataType, StructField, StructType

from adstream.contracts import Table, Topic, quarantine_table
from adstream.events import AuctionRecord, CampaignDecision, EventType, FeedbackEvent, RefusedEvent
from adstream.exporter import serve
from adstream.messaging import BrokerUnavailable, ensure_topics
from adstream.settings import Settings
from spark_jobs.ivt_transforms import sivt_outliers, tag_sivt, with_event_columns
from spark_jobs.metrics import StreamingMetrics
from spark_jobs.stream_transforms import (
    EVENT_TIME,
    KAFKA_RECORD_DDL,
    KPI_KEY,
    EventClock,
    advance_clock,
    apply_watermark,
    bronze_records,
    classify_records,
    first_per_key,
    kpi_by_minute,
    kpi_for_minutes,
    quarantined_records,
    touched_minutes,
    valid_events,
    watermark_for,
)

log = logging.getLogger(__name__)

# Bounds a batch when a backlog waits (a restart, an outage); large, since each batch pays about three
# seconds of Delta commits whatever its size. On local[2] a batch of 500k takes ~13 s and holds ~0.3 GB
# cached; 200k batches took ~8.5 s each, so a backlog drained at 19k events/s instead of 32k.
MAX_RECORDS_PER_BATCH = 500_000
POLL_S = 1.0  # how often the driver loop beats and looks for a stop request
STOP_WAIT_S = 60.0  # how long a stop request waits for the running batch
HEARTBEAT_MAX_AGE_S = 30.0
TXN_APP_ID_CONF = "spark.databricks.delta.write.txnAppId"
TXN_VERSION_CONF = "spark.databricks.delta.write.txnVersion"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE_MICROS = 60_000_000
CLOCK_HISTORY = 1_000  # bronze commits searched for the clock at start; table maintenance adds a few per hour
KPI_QUERY = "kpi_minute_stream"
KPI_MERGE_ATTEMPTS = 3
# What a Delta commit raises when another writer (maintenance's OPTIMIZE) committed a conflicting change first.
CONCURRENT_WRITES = (
    DeltaConcurrentModificationException, ConcurrentAppendException, ConcurrentDeleteReadException,
    ConcurrentTransactionException, ConcurrentWriteException,
)  # fmt: skip


class StreamFailed(RuntimeError):
    """A streaming query stopped with an error."""


@dataclass(frozen=True)
class StreamSource:
    """One topic and the tables it lands in."""

    name: str  # also the quarantine source: quarantine/<name>
    topic: str
    model: type[BaseModel]
    key: str | None  # the id a record is deduplicated on; None: every record lands (AppendBatch)
    bronze: Table | None
    silver: Table  # where the valid records land
    with_kpis: bool = False
    with_sivt: bool = False
    event_time: str = EVENT_TIME
    date_column: str = "event_date"  # silver's partition: the date of event_time

    @property
    def query_name(self) -> str:
        return f"{self.name}_stream"

    @property
    def checked_time(self) -> str | None:
        """The time the future check reads: none for refusals, which are kept whatever their clock says."""
        return self.event_time if self.key is not None else None

    @property
    def quarantine(self) -> str:
        return quarantine_table(self.name)


SOURCES = {
    "feedback": StreamSource(
        "feedback", Topic.AD_FEEDBACK, FeedbackEvent, "event_id", Table.BRONZE_FEEDBACK_RAW,
        Table.SILVER_FEEDBACK_EVENTS, with_kpis=True, with_sivt=True,
    ),
    "auctions": StreamSource(
        "auctions", Topic.AUCTIONS, AuctionRecord, "auction_id", Table.BRONZE_AUCTIONS_RAW, Table.SILVER_AUCTIONS
    ),
    "refused": StreamSource(
        "refused", Topic.REFUSED_EVENTS, RefusedEvent, None, None, Table.QUARANTINE_EVENTS,
        event_time="refused_at", date_column="refused_date",
    ),
    "decisions": StreamSource(
        "decisions", Topic.CAMPAIGN_DECISIONS, CampaignDecision, None, None, Table.GOLD_OPTIMIZER_DECISIONS,
        event_time="decided_at", date_column="decided_date",
    ),
}  # fmt: skip


# --- tables ---


def _all_nullable(schema: StructType) -> StructType:
    # Delta would enforce NOT NULL from literal columns; the transforms, not the table, own validity.
    return StructType([StructField(field.name, field.dataType, nullable=True) for field in schema.fields])


def _column_paths(data_type: DataType, prefix: str = "") -> set[str]:
    """Every column's dotted path, into structs and the structs of arrays (a nested record gained a field)."""
    if isinstance(data_type, ArrayType):
        return _column_paths(data_type.elementType, prefix)
    if not isinstance(data_type, StructType):
        return set()
    paths = set()
    for field in data_type.fields:
        paths |= {f"{prefix}{field.name}"} | _column_paths(field.dataType, f"{prefix}{field.name}.")
    return paths


def _ensure_table(spark: SparkSession, path: str, schema: StructType, partition_by: Sequence[str] = ()) -> None:
    """Creates the table, or adds the columns of ``schema`` that an existing one lacks (a model gained a field)."""
    if DeltaTable.isDeltaTable(spark, path):
        held = _column_paths(spark.read.format("delta").load(path).schema)
        if not _column_paths(schema) <= held:
            no_rows = spark.createDataFrame([], _all_nullable(schema))
            no_rows.write.format("delta").mode("append").option("mergeSchema", "true").save(path)
        return
    builder = DeltaTable.createIfNotExists(spark).location(path).addColumns(_all_nullable(schema))
    if partition_by:
        builder = builder.partitionedBy(*partition_by)
    builder.execute()


def ensure_tables(spark: SparkSession, settings: Settings, source: StreamSource) -> None:
    """Creates the source's tables with the transforms' schemas (or adds their new columns), so the first
    MERGE has a target and readers (features, billing) find the tables before the first event."""
    no_records = spark.createDataFrame([], KAFKA_RECORD_DDL)
    classified = classify_records(no_records, source.model, max_ahead=timedelta(0), event_time=source.checked_time)
    silver = valid_events(classified, source.model, EPOCH, event_time=source.event_time, date_column=source.date_column)
    if source.bronze is not None:
        bronze = bronze_records(classified, EPOCH).schema
        _ensure_table(spark, settings.lake_path(source.bronze), bronze, ["ingest_date"])
    _ensure_table(spark, settings.lake_path(source.silver), silver.schema, [source.date_column])
    _ensure_table(spark, settings.lake_path(source.quarantine), quarantined_records(classified, EPOCH).schema)
    if source.with_kpis:
        _ensure_table(spark, settings.lake_path(Table.GOLD_KPI_MINUTE), kpi_by_minute(silver).schema, ["event_date"])


# --- one micro-batch ---


@contextmanager
def idempotent_dml(session: SparkSession, app_id: str, version: int) -> Iterator[None]:
    """Delta skips a MERGE whose (app_id, version) the target table already committed.

    ``session`` is the query's own (foreachBatch hands each query a clone), so two queries of
    this job never see each other's setting.
    """
    session.conf.set(TXN_APP_ID_CONF, app_id)
    session.conf.set(TXN_VERSION_CONF, str(version))
    try:
        yield
    finally:
        session.conf.unset(TXN_APP_ID_CONF)
        session.conf.unset(TXN_VERSION_CONF)


def _micros_to_date(micros: int) -> date:
    return (EPOCH + timedelta(microseconds=micros)).date()


class StepTimer:
    """Seconds per step of a batch, for its log line: where a batch's time goes."""

    def __init__(self) -> None:
        self.began = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - began

    def __str__(self) -> str:
        steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in self.seconds.items())
        return f"{time.perf_counter() - self.began:.2f}s ({steps})"


def checkpoint_app_id(session: SparkSession, settings: Settings, query_name: str) -> str:
    """``adstream-<query>-<checkpoint's query id>``: stable across restarts, new with a new checkpoint."""
    metadata = session.read.text(f"{settings.checkpoint_path(query_name)}/metadata").first()
    return f"adstream-{query_name.removesuffix('_stream')}-{json.loads(metadata[0])['id']}"


def append_batch(
    frame: DataFrame,
    path: str,
    app_id: str,
    batch_id: int,
    *,
    user_metadata: str | None = None,
    merge_schema: bool = False,
) -> None:
    """A blind append Delta skips when the table already committed (app_id, batch_id); with ``merge_schema``,
    columns the table lacks are added."""
    writer = frame.write.format("delta").mode("append").option("txnAppId", app_id).option("txnVersion", batch_id)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    if user_metadata is not None:
        writer = writer.option("userMetadata", user_metadata)
    writer.save(path)


class TopicBatch:
    """A ``foreachBatch`` body of one topic's query: its Delta writes are idempotent under the query's
    checkpoint id (``app_id``) and the batch id."""

    def __init__(self, settings: Settings, source: StreamSource, *, app_id: str | None = None) -> None:
        self.settings = settings
        self.source = source
        self._app_id = app_id

    def app_id(self, session: SparkSession) -> str:
        if self._app_id is None:
            self._app_id = checkpoint_app_id(session, self.settings, self.source.query_name)
        return self._app_id

    def __call__(self, records: DataFrame, batch_id: int) -> None:
        self.process(records, batch_id, ingested_at=datetime.now(UTC))

    def process(self, records: DataFrame, batch_id: int, *, ingested_at: datetime) -> dict[str, int]:
        raise NotImplementedError


class MicroBatch(TopicBatch):
    """The ``foreachBatch`` body of one topic's query; see the module docstring for what it writes."""

    def __init__(self, settings: Settings, source: StreamSource, *, app_id: str | None = None) -> None:
        super().__init__(settings, source, app_id=app_id)
        self.delay = timedelta(seconds=settings.stream_watermark_s)
        self._clock: EventClock | None = None  # as last written by this process; read from Delta after a restart

    def process(self, records: DataFrame, batch_id: int, *, ingested_at: datetime) -> dict[str, int]:
        """Lands one batch of Kafka records; returns the records per outcome (``silver`` or a reason).

        Kafka is read once: the classified records (cached) also carry what bronze keeps."""
        session, source = records.sparkSession, self.source
        steps = StepTimer()
        app_id = self.app_id(session)
        clock = self.read_clock(session, app_id)
        watermark = watermark_for(batch_id, clock, self.delay)
        cached = classify_records(records, source.model, max_ahead=self.delay).persist()
        try:
            classified = apply_watermark(cached, watermark)
            event_time = F.col("_typed")[EVENT_TIME]
            with steps.step("classify"):
                outcomes = {
                    row.reason or "silver": row
                    for row in classified.groupBy("reason")
                    .agg(F.count("*").alias("records"), F.max(F.unix_micros(event_time)).alias("latest"))
                    .collect()
                }
            if not outcomes:
                return {}
            silver = outcomes.get("silver")
            advanced = advance_clock(clock, batch_id, watermark, silver.latest if silver else None)
            # Silver first: it is what readers wait for (produce -> visible), and each step's commit
            # costs about a second. Every write is idempotent per (app id, batch), and the clock only
            # moves with bronze's commit, so a batch cut off after silver is replayed the same way.
            if silver is not None:
                with steps.step("silver"):
                    self._append_new_events(valid_events(classified, source.model, ingested_at), watermark, app_id,
                                            batch_id)  # fmt: skip
            with steps.step("bronze"):
                append_batch(bronze_records(classified, ingested_at), self.settings.lake_path(source.bronze), app_id,
                             batch_id, user_metadata=clock_metadata(app_id, advanced))  # fmt: skip
            self._clock = advanced
            if set(outcomes) - {"silver"}:
                with steps.step("quarantine"):
                    quarantine = self.settings.lake_path(source.quarantine)
                    append_batch(quarantined_records(classified, ingested_at), quarantine, app_id, batch_id)
        finally:
            cached.unpersist()
        counts = {outcome: row.records for outcome, row in outcomes.items()}
        log.info("%s batch %d: %s (watermark %s) in %s", source.name, batch_id, counts, _as_time(watermark), steps)
        return counts

    def _append_new_events(self, events: DataFrame, watermark: int | None, app_id: str, batch_id: int) -> None:
        """The batch's first copy of each id that silver does not hold yet, appended."""
        key, path = self.source.key, self.settings.lake_path(self.source.silver)
        held = events.sparkSession.read.format("delta").load(path)
        if watermark is not None:
            # Copies older than this are behind any watermark a replay could pass, so need no lookup.
            horizon = watermark - int(self.delay.total_seconds() * 1_000_000)
            held = held.where(
                (F.col("event_date") >= F.lit(_micros_to_date(horizon)))
                & (F.col(EVENT_TIME) >= F.timestamp_micros(F.lit(horizon)))
            )
        # Silver's side is probed against the batch's ids, broadcast: only the few it holds are
        # shuffled, not the ~2.4M ids of a 20-minute horizon at 2,000 events/s.
        held_ids = held.select(key).join(F.broadcast(events.select(key)), key, "left_semi")
        new = first_per_key(events, key).join(held_ids, key, "left_anti").select(*events.columns)
        if self.source.with_sivt:
            new = self._tag_sivt(new, events.where(F.col("event_type") == EventType.CLICK.value))
        append_batch(new, path, app_id, batch_id, merge_schema=True)

    def _tag_sivt(self, new: DataFrame, batch_clicks: DataFrame) -> DataFrame:
        """``new`` with its click-rate outliers tagged, judged against the clicks silver holds from one SIVT
        window before the batch's earliest click (a batch without clicks has nothing to judge)."""
        earliest = batch_clicks.agg(F.min(F.unix_micros(EVENT_TIME))).first()[0]
        if earliest is None:
            return new
        # The step's cost: ~1.3 s a batch of 200k records with 4,000 clicks (local[2], a busy 2-core host;
        # writing the batch untagged took 0.2 s), mostly the three shuffles of the rates.
        window_s, max_clicks = self.settings.ivt_sivt_window_s, self.settings.ivt_sivt_max_clicks
        since = earliest - window_s * 1_000_000
        # File skipping on event_time: silver's files each span a micro-batch, so about one window is read.
        held_clicks = (
            new.sparkSession.read.format("delta")
            .load(self.settings.lake_path(self.source.silver))
            .where(
                (F.col("event_date") >= F.lit(_micros_to_date(since)))
                & (F.col(EVENT_TIME) >= F.timestamp_micros(F.lit(since)))
                & (F.col("event_type") == EventType.CLICK.value)
            )
            .select("event_id", "user_id", "ip", EVENT_TIME)
        )
        outliers = sivt_outliers(batch_clicks, held_clicks, window_s=window_s, max_clicks=max_clicks)
        return tag_sivt(new, outliers)

    def read_clock(self, session: SparkSession, app_id: str) -> EventClock | None:
        """This process's clock, or after a restart the one the latest bronze commit of this query carries."""
        if self._clock is not None:
            return self._clock
        bronze = self.settings.lake_path(self.source.bronze)
        if not DeltaTable.isDeltaTable(session, bronze):
            return None
        history = DeltaTable.forPath(session, bronze).history(CLOCK_HISTORY)
        carried = history.where(F.col("userMetadata").isNotNull()).orderBy(F.col("version").desc())
        return latest_clock([row.userMetadata for row in carried.select("userMetadata").collect()], app_id)


class AppendBatch(TopicBatch):
    """The ``foreachBatch`` body of a topic whose every valid record lands, once per Kafka record (no id
    to deduplicate on): each refusal into quarantine/events, each optimizer decision into
    gold/optimizer_decisions; a record that is not one into quarantine/<source> with its reason (see the
    module docstring)."""

    def process(self, records: DataFrame, batch_id: int, *, ingested_at: datetime) -> dict[str, int]:
        """Lands one batch; returns the records per outcome (``landed`` or a quarantine reason)."""
        source, app_id = self.source, self.app_id(records.sparkSession)
        classified = classify_records(records, source.model, max_ahead=timedelta(0), event_time=None).persist()
        try:
            counts = {row.reason or "landed": row["count"] for row in classified.groupBy("reason").count().collect()}
            if "landed" in counts:
                refusals = valid_events(classified, source.model, ingested_at, event_time=source.event_time,
                                        date_column=source.date_column)  # fmt: skip
                append_batch(refusals, self.settings.lake_path(source.silver), app_id, batch_id, merge_schema=True)
            if set(counts) - {"landed"}:
                malformed = quarantined_records(classified, ingested_at)
                append_batch(malformed, self.settings.lake_path(source.quarantine), app_id, batch_id)
        finally:
            classified.unpersist()
        if counts:
            log.info("%s batch %d: %s", source.name, batch_id, counts)
        return counts


class KpiBatch:
    """The ``foreachBatch`` body of the KPI query: the rows silver/feedback_events gained -> gold/kpi_minute."""

    def __init__(self, settings: Settings, *, app_id: str | None = None) -> None:
        self.settings = settings
        self._app_id = app_id

    def app_id(self, session: SparkSession) -> str:
        if self._app_id is None:
            self._app_id = checkpoint_app_id(session, self.settings, KPI_QUERY)
        return self._app_id

    def __call__(self, new_events: DataFrame, batch_id: int) -> None:
        self.process(new_events, batch_id)

    def process(self, new_events: DataFrame, batch_id: int) -> int:
        """Recomputes the (campaign, minute) KPIs the new silver rows fall in; returns those rows' count."""
        began = time.perf_counter()
        new_events = new_events.select("campaign_id", EVENT_TIME, "event_date").persist()
        try:
            span = new_events.agg(
                F.count("*").alias("events"),
                F.min(F.unix_micros(EVENT_TIME)).alias("earliest"),
                F.max(F.unix_micros(EVENT_TIME)).alias("latest"),
                F.collect_set("event_date").alias("days"),
            ).first()
            if not span or not span.events:
                return 0
            minutes = (span.earliest // MINUTE_MICROS * MINUTE_MICROS,
                       (span.latest // MINUTE_MICROS + 1) * MINUTE_MICROS)  # fmt: skip
            for attempt in range(1, KPI_MERGE_ATTEMPTS + 1):
                try:
                    self._merge_kpis(new_events, sorted(span.days), minutes, self.app_id(new_events.sparkSession),
                                     batch_id)  # fmt: skip
                    break
                except CONCURRENT_WRITES as exc:
                    # A compaction of gold committed first; the recomputation reads the new snapshot.
                    if attempt == KPI_MERGE_ATTEMPTS:
                        raise
                    log.warning("kpi batch %d: %s; merging again (%d of %d)", batch_id, type(exc).__name__,
                                attempt + 1, KPI_MERGE_ATTEMPTS)  # fmt: skip
        finally:
            new_events.unpersist()
        log.info("kpi batch %d: %d new silver events, %s to %s, in %.2fs", batch_id, span.events,
                 _as_time(minutes[0]), _as_time(minutes[1]), time.perf_counter() - began)  # fmt: skip
        return span.events

    def _merge_kpis(
        self, new_events: DataFrame, days: list[date], minutes: tuple[int, int], app_id: str, batch_id: int
    ) -> None:
        """Recomputes the touched (campaign, minute) KPIs from silver, which holds the new events;
        ``minutes`` is [first, end) of their minutes, in epoch microseconds."""
        session = new_events.sparkSession
        first, end = (F.timestamp_micros(F.lit(bound)) for bound in minutes)
        silver = session.read.format("delta").load(self.settings.lake_path(Table.SILVER_FEEDBACK_EVENTS))
        silver = with_event_columns(silver)  # a silver from before the added fields, until ensure_tables ran
        in_range = F.col("event_date").isin(days) & (F.col(EVENT_TIME) >= first) & (F.col(EVENT_TIME) < end)
        kpis = kpi_for_minutes(silver.where(in_range), touched_minutes(new_events))
        in_days = ", ".join(f"DATE'{day.isoformat()}'" for day in days)
        condition = " AND ".join(
            [
                f"g.event_date IN ({in_days})",
                f"g.minute >= timestamp_micros({minutes[0]}) AND g.minute < timestamp_micros({minutes[1]})",
                *(f"g.{column} = k.{column}" for column in KPI_KEY),
            ]
        )
        gold = DeltaTable.forPath(session, self.settings.lake_path(Table.GOLD_KPI_MINUTE))
        with idempotent_dml(session, app_id, batch_id):
            merge = gold.alias("g").merge(kpis.alias("k"), condition).withSchemaEvolution()
            merge.whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()


def clock_metadata(app_id: str, clock: EventClock) -> str:
    """The clock as the bronze commit's userMetadata, tagged with the query it belongs to."""
    return json.dumps({"app_id": app_id, "event_clock": asdict(clock)}, separators=(",", ":"))


def latest_clock(user_metadata: Sequence[str], app_id: str) -> EventClock | None:
    """The first clock of ``app_id`` in commit metadata listed newest first; other text is skipped."""
    for text in user_metadata:
        try:
            carried = json.loads(text)
        except ValueError:
            continue
        if isinstance(carried, dict) and carried.get("app_id") == app_id and "event_clock" in carried:
            return EventClock(**carried["event_clock"])
    return None


def _as_time(micros: int | None) -> str:
    return "none yet" if micros is None else (EPOCH + timedelta(microseconds=micros)).isoformat()


# --- queries ---


def kafka_records(spark: SparkSession, settings: Settings, topic: str, max_records: int | None = None) -> DataFrame:
    """The topic as a stream of Kafka records, at most ``max_records`` (MAX_RECORDS_PER_BATCH) a batch."""
    cores = spark.sparkContext.defaultParallelism
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap_servers)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
        .option("kafka.isolation.level", "read_committed")
        .option("maxOffsetsPerTrigger", max_records or MAX_RECORDS_PER_BATCH)
        # Read in a multiple of the cores: 3 topic partitions on 2 cores is two waves, the second on one
        # core. Reading 200k records took 0.56 s in 4 tasks, 0.83 s in 3.
        .option("minPartitions", 2 * cores)
        .load()
    )


def start_query(
    spark: SparkSession, settings: Settings, source: StreamSource, *, available_now: bool, trigger_s: float
) -> StreamingQuery:
    records = kafka_records(spark, settings, source.topic)
    batch = MicroBatch(settings, source) if source.key is not None else AppendBatch(settings, source)
    writer = records.writeStream.queryName(source.query_name).foreachBatch(batch)
    return _start(writer, settings.checkpoint_path(source.query_name), available_now, trigger_s)


def start_kpi_query(
    spark: SparkSession, settings: Settings, *, available_now: bool, trigger_s: float
) -> StreamingQuery:
    # Compactions (OPTIMIZE, dataChange=false) are not new rows; a commit that deletes or rewrites rows
    # (a GDPR delete) is skipped rather than stopping the KPIs: the minutes it touched are stale until
    # they gain an event.
    new_events = (
        spark.readStream.format("delta")
        .option("skipChangeCommits", "true")
        .load(settings.lake_path(Table.SILVER_FEEDBACK_EVENTS))
    )
    writer = new_events.writeStream.queryName(KPI_QUERY).foreachBatch(KpiBatch(settings))
    return _start(writer, settings.checkpoint_path(KPI_QUERY), available_now, trigger_s)


def _start(writer: DataStreamWriter, checkpoint: str, available_now: bool, trigger_s: float) -> StreamingQuery:
    writer = writer.option("checkpointLocation", checkpoint)
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=f"{round(trigger_s * 1000)} milliseconds")
    return writer.start()


def heartbeat_file(settings: Settings) -> Path:
    return settings.local_dir.resolve() / "run" / "streaming.heartbeat"


def is_alive(settings: Settings, pid: int | None = None, max_age_s: float = HEARTBEAT_MAX_AGE_S) -> bool:
    """Whether a streaming job's driver loop beat recently; with ``pid``, that process's (a beat left
    by an earlier run does not count)."""
    beat = heartbeat_file(settings)
    try:
        fresh = time.time() - beat.stat().st_mtime <= max_age_s
        return fresh and (pid is None or json.loads(beat.read_text())["pid"] == pid)
    except (FileNotFoundError, ValueError, KeyError):
        return False


def _beat(path: Path, queries: Sequence[StreamingQuery]) -> None:
    """The heartbeat names its process and carries each query's last progress, for humans."""
    progress = {}
    for query in queries:
        last = query.lastProgress or {}
        progress[query.name] = {
            "batch_id": last.get("batchId"),
            "input_rows": last.get("numInputRows"),
            "at": last.get("timestamp"),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"pid": os.getpid(), "queries": progress}))
    partial.replace(path)


def _stop_after_current_batch(queries: Sequence[StreamingQuery]) -> None:
    deadline = time.monotonic() + STOP_WAIT_S
    for query in queries:
        # A batch starting between this check and stop() is interrupted and replayed on restart.
        while query.isActive and query.status["isTriggerActive"] and time.monotonic() < deadline:
            time.sleep(0.2)
        query.stop()


def run(
    spark: SparkSession,
    settings: Settings,
    sources: Sequence[StreamSource],
    *,
    available_now: bool = False,
    trigger_s: float | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Runs one query per source, and the KPI query when feedback is among them, until they are done
    (available-now: the KPI query after the topics' queries), one fails, or ``stop_event`` is set."""
    stop_event = stop_event or threading.Event()
    ensure_topics(settings, [source.topic for source in sources])
    for source in sources:
        ensure_tables(spark, settings, source)
    trigger_s = settings.stream_trigger_s if trigger_s is None else trigger_s
    with_kpis = any(source.with_kpis for source in sources)
    queries = [
        start_query(spark, settings, source, available_now=available_now, trigger_s=trigger_s) for source in sources
    ]
    mode = "available-now" if available_now else f"every {trigger_s:g} s"
    log.info("streaming %s from %s (%s)", [str(s.topic) for s in sources], settings.kafka_bootstrap_servers, mode)
    try:
        if with_kpis and not available_now:
            kpi_trigger_s = max(trigger_s, settings.stream_kpi_trigger_s)
            queries.append(start_kpi_query(spark, settings, available_now=False, trigger_s=kpi_trigger_s))
        _drive(settings, queries, stop_event)
        if with_kpis and available_now and not stop_event.is_set():
            # After the topics' queries, so the KPIs cover everything they landed.
            queries.append(start_kpi_query(spark, settings, available_now=True, trigger_s=trigger_s))
            _drive(settings, queries, stop_event)
    finally:
        for query in queries:
            if query.isActive:
                query.stop()


def _drive(settings: Settings, queries: Sequence[StreamingQuery], stop_event: threading.Event) -> None:
    """Beats until every query has ended, one failed, or a stop is requested (the running batches finish)."""
    while True:
        failed = [query for query in queries if not query.isActive and query.exception() is not None]
        if failed:
            raise StreamFailed(f"query {failed[0].name} failed: {failed[0].exception()}")
        if not any(query.isActive for query in queries):
            return
        _beat(heartbeat_file(settings), queries)
        if stop_event.wait(POLL_S):
            log.info("stopping after the current batch")
            _stop_after_current_batch(queries)
            return


# --- running the job in its own process ---

SPARK_APP = "streaming"
SOURCE_CHOICES = (*SOURCES, "all")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def spark_extra(settings: Settings) -> dict[str, str]:
    """The job's session settings on top of the usual ones (the session is built long-running)."""
    # Each micro-batch commits to ~5 small tables; Delta's default of 50 tasks per log replay is sized
    # for large tables on a cluster and dominated the batch time here.
    return {"spark.databricks.delta.snapshotPartitions": str(settings.spark_shuffle_partitions)}


def check_heartbeat(settings: Settings) -> int:
    """The health check's exit code: 0 if a running job's driver loop beat recently, else 1."""
    return 0 if is_alive(settings) else 1


def sources_for(source: str = "all", topic: str | None = None) -> list[StreamSource]:
    """The sources a run streams: one of SOURCE_CHOICES, its topic replaced by ``topic`` (one source only)."""
    if source not in SOURCE_CHOICES:
        raise ValueError(f"unknown source {source!r}: choose from {', '.join(SOURCE_CHOICES)}")
    sources = list(SOURCES.values()) if source == "all" else [SOURCES[source]]
    if topic:
        if len(sources) != 1:
            raise ValueError("--topic needs a single --source")
        sources = [replace(sources[0], topic=topic)]
    return sources


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    logging.getLogger("kafka").setLevel(logging.WARNING)  # the topic check's admin client narrates every connection
    logging.getLogger("py4j").setLevel(logging.WARNING)  # the callback server narrates every batch's callbacks


def run_until_stopped(
    settings: Settings,
    sources: Sequence[StreamSource],
    start_spark: Callable[[], SparkSession],
    *,
    available_now: bool = False,
    trigger_s: float | None = None,
) -> int:
    """Runs the job in this process until it is done, fails or is asked to stop; returns its exit code.

    ``start_spark`` builds the (long-running) session: it is called once the stop signals are ignored,
    so the JVM it launches ignores them too and only this process decides when Spark stops. SIGTERM
    or SIGINT then stops the job after the running batch. The session is stopped on the way out.
    """
    heartbeat_file(settings).unlink(missing_ok=True)  # a beat from an earlier run must not pass for this one
    stop_event = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping after the current batch", signal.Signals(signum).name)
        stop_event.set()

    # Ignored signals stay ignored in the JVM launched now, so only this process decides when Spark stops.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, signal.SIG_IGN)
    spark = start_spark()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, request_stop)
    metrics = StreamingMetrics()
    exporter = serve(metrics.registry, settings.bind_host, settings.streaming_metrics_port, "streaming")
    if exporter is not None:  # a Python listener costs a callback per batch: only when someone can read it
        spark.streams.addListener(metrics)
    try:
        run(spark, settings, sources, available_now=available_now, trigger_s=trigger_s, stop_event=stop_event)
    except (BrokerUnavailable, StreamFailed) as exc:
        print(f"streaming failed: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
        if exporter is not None:
            exporter.close()
    print("streaming stopped", flush=True)
    return 0
